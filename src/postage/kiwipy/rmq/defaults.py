"""kiwiPy's defaults (``kiwipy.rmq.defaults``); ``ENCODER``/``DECODER`` are the safe YAML
codec (kiwiPy's DECODER uses PyYAML's FullLoader). ``TASK_PREFETCH_COUNT`` is Postage's
default, 64 (kiwiPy's is 0: no limit, every queued task in the subscriber's memory); pass
``task_prefetch_count=0`` for kiwiPy's."""

from ..._wire.kiwipy import (
    BROADCAST_TOPIC,
    MESSAGE_EXCHANGE,
    MESSAGE_TTL,
    QUEUE_EXPIRES,
    REPLY_QUEUE_EXPIRES,
    RPC_TOPIC,
    TASK_EXCHANGE,
    TASK_FETCH_TIMEOUT,
    TASK_MESSAGE_TTL,
    TASK_PREFETCH_SIZE,
    TASK_QUEUE,
    TEST_QUEUE_EXPIRES,
)
from ..._wire.kiwipy import TASK_PREFETCH_DEFAULT as TASK_PREFETCH_COUNT
from ..._wire.kiwipy import yaml_decode as DECODER
from ..._wire.kiwipy import yaml_encode as ENCODER

SECONDS_TO_MILLISECONDS = 1000

__all__ = [
    "BROADCAST_TOPIC", "DECODER", "ENCODER", "MESSAGE_EXCHANGE", "MESSAGE_TTL",
    "QUEUE_EXPIRES", "REPLY_QUEUE_EXPIRES", "RPC_TOPIC", "SECONDS_TO_MILLISECONDS",
    "TASK_EXCHANGE", "TASK_FETCH_TIMEOUT", "TASK_MESSAGE_TTL", "TASK_PREFETCH_COUNT",
    "TASK_PREFETCH_SIZE", "TASK_QUEUE", "TEST_QUEUE_EXPIRES",
]
