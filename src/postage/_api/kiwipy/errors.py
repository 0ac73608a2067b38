"""kiwiPy 0.9's exceptions and future helpers, inside Postage's exception tree.

Each exception keeps kiwiPy's name and meaning and also derives from the Postage error of
the same meaning, so that ``except kiwipy.UnroutableError`` and ``except
postage.Unroutable`` (or ``postage.PostageError``) both catch it. Futures are
``concurrent.futures`` futures, as in kiwiPy.
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "CommunicatorClosed",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "Future",
    "InvalidStateError",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "as_completed",
    "capture_exceptions",
    "chain",
    "copy_future",
    "wait",
]

import builtins
import concurrent.futures
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from ..._exceptions import (
    ChannelError,
    ConnectionClosed,
    ConnectionError,
    PostageError,
    PublishError,
    RemoteError,
    Unroutable,
)


class RemoteException(RemoteError):
    """An exception occurred at the remote end of the call (its text is the message)."""

    def __init__(self, *args: Any) -> None:
        message = "" if not args else str(args[0])
        RemoteError.__init__(self, "", message)
        self.args = args
        self.type_name = ""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DeliveryFailed(PublishError):
    """Failed to deliver a message."""


class UnroutableError(DeliveryFailed, Unroutable):
    """The message was unroutable."""

    def __init__(self, *args: Any) -> None:
        PostageError.__init__(self, *args)
        self.exchange = ""
        self.routing_key = ""
        self.reply_text = str(args[0]) if args else "NO_ROUTE"


class TaskRejected(PostageError):
    """A task was rejected at the remote end."""


class QueueEmpty(PostageError):
    """Could not get the next message from the queue because it is empty."""


class DuplicateSubscriberIdentifier(PostageError):
    """Failed to add a subscriber because the identifier supplied is already in use."""


class CommunicatorClosed(ConnectionClosed):
    """Raised when an operation is attempted on a closed communicator."""


class InvalidStateError(PostageError):
    """Raised when an object is in an invalid state to perform the desired action."""


TimeoutError = builtins.TimeoutError  # concurrent.futures.TimeoutError, as in kiwiPy
CancelledError = concurrent.futures.CancelledError
Future = concurrent.futures.Future
wait = concurrent.futures.wait
as_completed = concurrent.futures.as_completed


# Where kiwiPy lets aio-pika's exceptions through, code catches them (plumpy around
# broadcast_send): the same failures here are also instances of those classes, when the
# program has imported aio-pika.
_AIO_PIKA_TWINS: tuple[tuple[type[PostageError], str], ...] = (
    (UnroutableError, "DeliveryError"),
    (ConnectionError, "ConnectionClosed"),
    (ChannelError, "ChannelInvalidStateError"),
)


def aio_pika_compatible(exc: PostageError) -> PostageError:
    """``exc``, also an instance of aio-pika's exception of the same meaning (see
    ``_AIO_PIKA_TWINS``) when aio-pika is imported; else ``exc`` itself."""
    if "aio_pika" not in sys.modules:
        return exc
    for ours, name in _AIO_PIKA_TWINS:
        if isinstance(exc, ours):
            twin = _twin_class(type(exc), name)
            if twin is None:
                return exc
            copy: PostageError = twin.__new__(twin)
            copy.__dict__.update(exc.__dict__)
            copy.args = exc.args
            copy.__cause__, copy.__traceback__ = exc.__cause__, exc.__traceback__
            return copy
    return exc


_twins: dict[tuple[type[PostageError], str], type[PostageError] | None] = {}


def _twin_class(ours: type[PostageError], name: str) -> type[PostageError] | None:
    key = (ours, name)
    if key not in _twins:
        _twins[key] = _make_twin(ours, name)
    return _twins[key]


def _make_twin(ours: type[PostageError], name: str) -> type[PostageError] | None:
    try:
        theirs = getattr(sys.modules["aio_pika"].exceptions, name)
    except (KeyError, AttributeError):
        return None
    if issubclass(ours, theirs):
        return ours

    def __str__(self: PostageError) -> str:
        return PostageError.__str__(self)

    twin: type[PostageError] = type(ours.__name__, (ours, theirs),
                                    {"__module__": ours.__module__, "__str__": __str__,
                                     "__repr__": PostageError.__repr__})
    return twin


def copy_future(source: Future[Any], target: Future[Any]) -> None:
    """Copy the outcome of ``source`` (done) to ``target``, unless ``target`` is done."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    else:
        with capture_exceptions(target):
            target.set_result(source.result())


def chain(source: Future[Any], target: Future[Any]) -> None:
    """When ``source`` completes, so does ``target`` (unless it is done by then)."""
    source.add_done_callback(lambda done: copy_future(done, target))


@contextlib.contextmanager
def capture_exceptions(future: Any, ignore: tuple[type[BaseException], ...] = ()
                       ) -> Iterator[None]:
    """Set an exception raised in the block as ``future``'s outcome (those of the types
    in ``ignore`` are raised instead)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ignore):
            raise
        future.set_exception(exc)


for _name in ("RemoteException", "DeliveryFailed", "UnroutableError", "TaskRejected",
              "QueueEmpty", "DuplicateSubscriberIdentifier", "CommunicatorClosed",
              "InvalidStateError"):
    globals()[_name].__module__ = "postage.kiwipy"
del _name
