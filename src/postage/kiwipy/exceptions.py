"""kiwiPy's exceptions (``kiwipy.exceptions``), each also a ``postage.PostageError``."""

from .._api.kiwipy.errors import (
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

__all__ = [
    "CommunicatorClosed",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "InvalidStateError",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
]
