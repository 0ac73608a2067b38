"""kiwiPy's communicator interface, its in-process communicator, its broadcast filter and
its event helper: no broker and no I/O here."""

from __future__ import annotations

__all__ = [
    "BroadcastFilter",
    "BroadcastSubscriber",
    "Communicator",
    "CommunicatorHelper",
    "EventHelper",
    "LocalCommunicator",
    "RpcSubscriber",
    "TaskSubscriber",
    "kiwipy_matcher",
]

import abc
import logging
import re
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..communicator.filters import BroadcastFilter as _PostageFilter
from ..communicator.filters import Matcher
from .errors import (
    CommunicatorClosed,
    DuplicateSubscriberIdentifier,
    Future,
    RemoteException,
    TaskRejected,
    UnroutableError,
)

log = logging.getLogger("postage.kiwipy")

RpcSubscriber = Callable[[Any, Any], Any]
TaskSubscriber = Callable[[Any, Any], Any]
BroadcastSubscriber = Callable[[Any, Any, Any, Any, Any], Any]


def new_identifier() -> str:
    return uuid.uuid4().hex


def kiwipy_matcher(value: Any) -> Matcher:
    """kiwiPy's rule for one filter value: a string is a pattern matched at the start of
    the candidate, where ``.`` is a literal dot and ``*`` any run of characters; a compiled
    pattern is matched at the start; anything else is compared with ``==``."""
    if isinstance(value, str):
        pattern = re.compile(value.replace(".", "[.]").replace("*", ".*"))
        return lambda candidate: isinstance(candidate, str) and bool(pattern.match(candidate))
    if isinstance(value, re.Pattern):
        regex: re.Pattern[Any] = value
        return lambda candidate: isinstance(candidate, str | bytes) and bool(
            regex.match(candidate))
    return lambda candidate: bool(candidate == value)


class BroadcastFilter(_PostageFilter):
    """A filter that limits the subjects and/or senders a broadcast subscriber receives,
    with kiwiPy's rules: patterns match at the start of the value, and a broadcast with
    no subject (or sender) passes the subject (or sender) filters."""

    __slots__ = ()
    _matcher = staticmethod(kiwipy_matcher)

    @property
    def __name__(self) -> str:
        return "BroadcastFilter"

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        if subject is not None and self._subject_filters and not any(
                m(subject) for m in self._subject_filters):
            return True
        return sender is not None and bool(self._sender_filters) and not any(
            m(sender) for m in self._sender_filters)

    def __call__(self, comm: Any, body: Any, sender: Any = None, subject: Any = None,
                 correlation_id: Any = None) -> Any:
        if self.is_filtered(sender, subject):
            return None
        return self.subscriber(comm, body, sender, subject, correlation_id)


class Communicator(abc.ABC):
    """The interface of a communicator: send and receive tasks, RPCs and broadcasts."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @abc.abstractmethod
    def is_closed(self) -> bool:
        """True once the communicator was closed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free every resource; no operation is allowed afterwards."""

    @abc.abstractmethod
    def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: Any = None) -> Any:
        """Add an RPC subscriber; return its identifier (generated if not given)."""

    @abc.abstractmethod
    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber; ValueError if there is none by that identifier."""

    @abc.abstractmethod
    def add_task_subscriber(self, subscriber: TaskSubscriber, identifier: Any = None) -> Any:
        """Add a task subscriber to the default task queue; return its identifier."""

    @abc.abstractmethod
    def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a task subscriber; ValueError if there is none by that identifier."""

    @abc.abstractmethod
    def add_broadcast_subscriber(self, subscriber: BroadcastSubscriber,
                                 identifier: Any = None) -> Any:
        """Add a subscriber of every broadcast; return its identifier."""

    @abc.abstractmethod
    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Remove a broadcast subscriber."""

    @abc.abstractmethod
    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        """Queue a task; return a future of its outcome (None with ``no_reply``)."""

    @abc.abstractmethod
    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        """Call RPC subscriber ``recipient_id``; return a future of its outcome."""

    @abc.abstractmethod
    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> Any:
        """Broadcast a message to every subscriber."""


class CommunicatorHelper(Communicator):
    """Subscriber bookkeeping and in-process dispatch (``fire_*``) for communicators."""

    def __init__(self) -> None:
        self._task_subscribers: dict[Any, TaskSubscriber] = {}
        self._broadcast_subscribers: dict[Any, BroadcastSubscriber] = {}
        self._rpc_subscribers: dict[Any, RpcSubscriber] = {}
        self._closed = False

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task_subscribers.clear()
        self._broadcast_subscribers.clear()
        self._rpc_subscribers.clear()

    @staticmethod
    def _add(table: dict[Any, Any], what: str, subscriber: Any, identifier: Any) -> Any:
        identifier = identifier or new_identifier()
        if identifier in table:
            raise DuplicateSubscriberIdentifier(f"{what} identifier '{identifier}'")
        table[identifier] = subscriber
        return identifier

    @staticmethod
    def _remove(table: dict[Any, Any], what: str, identifier: Any) -> None:
        try:
            del table[identifier]
        except KeyError:
            raise ValueError(f"Unknown {what} subscriber '{identifier}'") from None

    def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: Any = None) -> Any:
        self._ensure_open()
        return self._add(self._rpc_subscribers, "RPC", subscriber, identifier)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        self._ensure_open()
        self._remove(self._rpc_subscribers, "RPC", identifier)

    def add_task_subscriber(self, subscriber: TaskSubscriber, identifier: Any = None) -> Any:
        self._ensure_open()
        return self._add(self._task_subscribers, "Task", subscriber, identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._ensure_open()
        self._remove(self._task_subscribers, "task", identifier)

    def add_broadcast_subscriber(self, subscriber: BroadcastSubscriber,
                                 identifier: Any = None) -> Any:
        self._ensure_open()
        return self._add(self._broadcast_subscribers, "Broadcast", subscriber, identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._ensure_open()
        self._remove(self._broadcast_subscribers, "broadcast", identifier)

    def fire_task(self, msg: Any, no_reply: bool = False) -> Future[Any] | None:
        """Run ``msg`` through the task subscribers in turn until one does not reject it."""
        self._ensure_open()
        future: Future[Any] = Future()
        for subscriber in list(self._task_subscribers.values()):
            try:
                result = subscriber(self, msg)
            except TaskRejected:
                continue
            except Exception as exc:
                future.set_exception(RemoteException(exc))
            else:
                future.set_result(result)
            break
        return None if no_reply else future

    def fire_rpc(self, recipient_id: Any, msg: Any) -> Future[Any]:
        self._ensure_open()
        try:
            subscriber = self._rpc_subscribers[recipient_id]
        except KeyError:
            raise UnroutableError(f"Unknown rpc recipient '{recipient_id}'") from None
        future: Future[Any] = Future()
        try:
            future.set_result(subscriber(self, msg))
        except Exception as exc:
            future.set_exception(RemoteException(exc))
        return future

    def fire_broadcast(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> bool:
        self._ensure_open()
        for subscriber in list(self._broadcast_subscribers.values()):
            subscriber(self, body, sender, subject, correlation_id)
        return True

    def _ensure_open(self) -> None:
        if self.is_closed():
            raise CommunicatorClosed("the communicator is closed")


class LocalCommunicator(CommunicatorHelper):
    """A communicator within one process, without a broker (for tests and tools)."""

    def task_send(self, task: Any, no_reply: bool = False) -> Future[Any] | None:
        return self.fire_task(task, no_reply)

    def rpc_send(self, recipient_id: Any, msg: Any) -> Future[Any]:
        return self.fire_rpc(recipient_id, msg)

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> bool:
        return self.fire_broadcast(body, sender, subject, correlation_id)


class EventHelper:
    """Listeners of one type, told of events by method name (a failing listener is
    logged and the others are still told)."""

    def __init__(self, listener_type: type) -> None:
        if listener_type is None:
            raise ValueError("Must provide valid listener type")
        self._listener_type = listener_type
        self._listeners: set[Any] = set()

    def add_listener(self, listener: Any) -> None:
        if not isinstance(listener, self._listener_type):
            raise TypeError(f"Listener is not of type {self._listener_type.__name__}")
        self._listeners.add(listener)

    def remove_listener(self, listener: Any) -> None:
        self._listeners.discard(listener)

    def remove_all_listeners(self) -> None:
        self._listeners.clear()

    @property
    def listeners(self) -> set[Any]:
        return self._listeners

    def fire_event(self, event_function: Callable[..., Any] | None, *args: Any,
                   **kwargs: Any) -> None:
        if event_function is None:
            raise ValueError("Must provide valid event method")
        for listener in list(self._listeners):
            try:
                getattr(listener, event_function.__name__)(*args, **kwargs)
            except Exception:
                log.exception("listener %r failed", listener)
