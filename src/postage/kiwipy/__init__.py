"""A drop-in for kiwiPy 0.9 on Postage: ``import postage.kiwipy as kiwipy``.

The names, signatures and defaults of kiwiPy 0.9, and its wire format (exchanges, queues,
YAML bodies), so that a kiwiPy program runs with only its imports changed and talks with
kiwiPy processes. Messages take Postage's path: publisher confirms, ack after the
subscriber, recovery, ``<queue>.dlq`` for tasks that cannot be handled; bodies are read with
YAML's safe loader. See docs/kiwipy.md for what differs.
"""

from . import exceptions, filters, futures, local, utils  # noqa: F401 - kiwipy.exceptions.X
from .communicate import connect
from .communications import Communicator, CommunicatorHelper
from .exceptions import (
    CommunicatorClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    InvalidStateError,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    TimeoutError,
    UnroutableError,
)
from .filters import BroadcastFilter
from .futures import (
    CancelledError,
    Future,
    as_completed,
    capture_exceptions,
    chain,
    copy_future,
    wait,
)
from .local import LocalCommunicator
from .utils import EventHelper

__version__ = "0.9.0"

__all__ = [
    "BroadcastFilter",
    "CancelledError",
    "Communicator",
    "CommunicatorClosed",
    "CommunicatorHelper",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "EventHelper",
    "Future",
    "InvalidStateError",
    "LocalCommunicator",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "as_completed",
    "capture_exceptions",
    "chain",
    "connect",
    "copy_future",
    "wait",
]

# the submodules stay attributes of the package, as in kiwiPy (kiwipy.exceptions.QueueEmpty)
