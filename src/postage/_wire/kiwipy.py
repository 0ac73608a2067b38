"""How kiwiPy 0.9 processes talk on the wire, for ``postage.kiwipy``. No I/O here.

Exchanges (topic): ``kiwipy.messages`` for RPC and broadcasts, ``kiwipy.tasks`` for tasks.

* RPC to subscriber X: routing key ``[rpc].X``, body = the message, ``reply_to`` = the
  caller's reply queue, ``correlation_id`` set; the server's queue has a consumer tag X.
* Task to queue Q: routing key Q on the task exchange, persistent, body = the tuple
  ``(task, no_reply)`` (YAML ``!!python/tuple``), ``correlation_id`` and ``reply_to``.
* Broadcast: routing key ``[broadcast]``, transient, not mandatory, body =
  ``{body, sender, subject, correlation_id}``.
* Responses, published to the request's exchange with routing key ``reply_to`` (or through
  the default exchange: both reach the caller's reply queue, bound under its own name):
  ``{result: v}``, ``{exception: "text"}``, ``{cancelled: msg}`` or ``{pending: None}``
  (a result still to come: another response with the same correlation id follows). Task
  responses also carry ``host: {hostname, pid}``.

Bodies are YAML. kiwiPy itself reads them with PyYAML's FullLoader; here they are read with
the safe loader plus one tag, ``!!python/tuple`` (task bodies are tuples), so that a message
can never build an arbitrary Python object. They are written with the safe dumper plus
that tag: what kiwiPy's FullLoader reads.
"""

from __future__ import annotations

__all__ = [
    "BROADCAST_TOPIC",
    "MESSAGE_EXCHANGE",
    "RPC_TOPIC",
    "TASK_EXCHANGE",
    "TASK_QUEUE",
    "Response",
    "broadcast_body",
    "cancelled_response",
    "exception_response",
    "host_info",
    "parse_broadcast",
    "parse_response",
    "parse_task",
    "pending_response",
    "result_response",
    "yaml_decode",
    "yaml_encode",
]

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._exceptions import DecodingError, EncodingError

try:
    import yaml
except ImportError as exc:  # pragma: no cover - the kiwipy extra installs it
    raise ImportError(
        "postage.kiwipy needs PyYAML (kiwiPy's message format): pip install 'postage[kiwipy]'"
    ) from exc

TASK_EXCHANGE = "kiwipy.tasks"
TASK_QUEUE = "kiwipy.tasks"
MESSAGE_EXCHANGE = "kiwipy.messages"
BROADCAST_TOPIC = "[broadcast]"
RPC_TOPIC = "[rpc]"

# milliseconds, as kiwiPy 0.9 declares them
MESSAGE_TTL = 66_000
TEST_QUEUE_EXPIRES = 10_000
QUEUE_EXPIRES = 60_000
REPLY_QUEUE_EXPIRES = 60_000
TASK_MESSAGE_TTL = 7 * 24 * 3600 * 1000
TASK_PREFETCH_SIZE = 0
TASK_PREFETCH_COUNT = 0  # kiwiPy's: no limit (Postage's default is TASK_PREFETCH_DEFAULT)
TASK_PREFETCH_DEFAULT = 64
TASK_FETCH_TIMEOUT = 5.0

RESULT_KEY = "result"
EXCEPTION_KEY = "exception"
CANCELLED_KEY = "cancelled"
PENDING_KEY = "pending"
HOST_KEY = "host"

TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
UUID_TAG = "tag:yaml.org,2002:python/object:uuid.UUID"

_SafeLoaderBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumperBase: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class SafeLoader(_SafeLoaderBase):  # type: ignore[misc]
    """YAML's safe loader plus ``!!python/tuple`` and ``!!python/object:uuid.UUID`` (a
    mapping of one integer, ``int``, and nothing else); no other Python tag."""


class SafeDumper(_SafeDumperBase):  # type: ignore[misc]
    """YAML's safe dumper plus tuples and UUIDs, written as kiwiPy (PyYAML's default
    dumper) writes them: ``!!python/tuple``, ``!!python/object:uuid.UUID {int: N}``."""


def _construct_tuple(loader: Any, node: Any) -> tuple[Any, ...]:
    return tuple(loader.construct_sequence(node))


def _represent_tuple(dumper: Any, value: tuple[Any, ...]) -> Any:
    return dumper.represent_sequence(TUPLE_TAG, value)


def _construct_uuid(loader: Any, node: Any) -> uuid.UUID:
    fields = loader.construct_mapping(node, deep=True) if isinstance(
        node, yaml.MappingNode) else None
    number = fields.get("int") if isinstance(fields, dict) and len(fields) <= 2 else None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**128:
        raise yaml.constructor.ConstructorError(
            None, None, "a !!python/object:uuid.UUID must be a mapping with its 128-bit "
            "'int'", node.start_mark)
    return uuid.UUID(int=number)


def _represent_uuid(dumper: Any, value: uuid.UUID) -> Any:
    return dumper.represent_mapping(UUID_TAG, {"int": value.int})


SafeLoader.add_constructor(TUPLE_TAG, _construct_tuple)
SafeLoader.add_constructor(UUID_TAG, _construct_uuid)
SafeDumper.add_representer(tuple, _represent_tuple)
SafeDumper.add_representer(uuid.UUID, _represent_uuid)


def yaml_encode(value: Any) -> bytes:
    """``value`` as kiwiPy's YAML (UTF-8); EncodingError for what YAML's safe dumper
    cannot write (arbitrary objects are refused, never pickled into tags)."""
    try:
        body: bytes = yaml.dump(value, Dumper=SafeDumper, encoding="utf-8")
    except yaml.YAMLError as exc:
        raise EncodingError(f"cannot be written as YAML: {exc}") from None
    except RecursionError:
        raise EncodingError("cannot be written as YAML: nested too deeply") from None
    return body


def yaml_decode(body: bytes) -> Any:
    """The value of a YAML body, read with the safe loader; DecodingError otherwise
    (including any Python tag but ``!!python/tuple`` and a UUID's)."""
    try:
        return yaml.load(body, Loader=SafeLoader)
    except yaml.YAMLError as exc:
        raise DecodingError(f"not a YAML message kiwiPy could have sent: {exc}") from None
    except RecursionError:
        raise DecodingError("a YAML message nested too deeply") from None


def host_info() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "pid": os.getpid()}


def result_response(value: Any) -> dict[str, Any]:
    return {RESULT_KEY: value}


def exception_response(exc: BaseException) -> dict[str, Any]:
    return {EXCEPTION_KEY: str(exc)}


def cancelled_response(message: str | None = None) -> dict[str, Any]:
    return {CANCELLED_KEY: message}


def pending_response() -> dict[str, Any]:
    return {PENDING_KEY: None}


class Response(NamedTuple):
    """A decoded response: ``kind`` is result, exception, cancelled or pending."""

    kind: str
    value: Any


def parse_response(decoded: Any) -> Response:
    """What a decoded response says; DecodingError if it is not one."""
    if not isinstance(decoded, Mapping):
        raise DecodingError(f"a kiwiPy response must be a mapping, not {type(decoded).__name__}")
    for kind in (CANCELLED_KEY, EXCEPTION_KEY, RESULT_KEY, PENDING_KEY):
        if kind in decoded:
            return Response(kind, decoded[kind])
    raise DecodingError(f"unknown kiwiPy response: keys {sorted(map(str, decoded))}")


def broadcast_body(body: Any, sender: Any, subject: Any, correlation_id: Any) -> dict[str, Any]:
    return {"body": body, "sender": sender, "subject": subject,
            "correlation_id": correlation_id}


def parse_broadcast(decoded: Any) -> tuple[Any, Any, Any, Any]:
    """(body, sender, subject, correlation_id) of a decoded broadcast."""
    if not isinstance(decoded, Mapping) or "body" not in decoded:
        raise DecodingError("a kiwiPy broadcast must be a mapping with a 'body'")
    return (decoded["body"], decoded.get("sender"), decoded.get("subject"),
            decoded.get("correlation_id"))


def parse_task(decoded: Any) -> tuple[Any, bool]:
    """(task, no_reply) of a decoded task body."""
    if not isinstance(decoded, tuple | list) or len(decoded) != 2:
        raise DecodingError("a kiwiPy task must be the pair (task, no_reply)")
    return decoded[0], bool(decoded[1])
