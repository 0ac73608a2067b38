"""The blocking communicator: a thin facade over :class:`AsyncCommunicator` on a portal.

Each verb submits the coroutine of the asyncio communicator to a blocking portal (an event
loop in a daemon thread) and waits for it with a deadline; futures handed to the caller are
``concurrent.futures.Future`` objects. No messaging logic lives here.
"""

from __future__ import annotations

__all__ = ["Communicator", "TaskQueue", "connect"]

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..._blocking.portal import BlockingPortal, default_portal
from ..._blocking.signals import SignalCatcher
from ..._blocking.window import SendWindow, send_failure
from ..._exceptions import ConfigurationError
from ..._wire.fingerprint import Fingerprint
from ..gather import GatherReply
from .aio import AsyncCommunicator, AsyncTaskQueue, open_communicator
from .filters import BroadcastFilter
from .tasks import Subscriber

log = logging.getLogger("postage.communicator")

T = TypeVar("T")


_CONDITION_LOCK = threading.Lock()


class _ReplyFuture(concurrent.futures.Future[T]):
    """A concurrent future following an asyncio future of the portal's loop; cancelling
    it cancels that one.

    Lighter than a plain ``concurrent.futures.Future`` (about 1.3 KB, most of it the
    condition's RLock and an empty deque of waiters): thousands of ``rpc_send`` futures
    may be pending at once. Its condition uses a plain lock (the futures machinery never
    takes it twice: callbacks run outside it) and a list of waiters, and the future
    itself is the done callback of the asyncio future, so no closures are kept per call.
    A pipelined send (``send_window``) makes the future before the asyncio one exists:
    :meth:`follow_send` attaches it when the send has been confirmed.
    """

    def __init__(self, source: asyncio.Future[T] | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._source = source
        self._loop = loop

    # The condition (370 B with its lock) is made when first used: a future nobody has
    # waited on, cancelled or completed yet (thousands of pending calls) has none.
    # ``Future.__init__`` assigns one: dropped. Made under a process-wide lock, so two
    # threads that reach it together share the same one.
    @property
    def _condition(self) -> threading.Condition:
        condition: threading.Condition | None = self.__dict__.get("_lazy_condition")
        if condition is None:
            with _CONDITION_LOCK:
                condition = self.__dict__.get("_lazy_condition")
                if condition is None:
                    condition = threading.Condition(threading.Lock())
                    condition._waiters = []  # type: ignore[attr-defined]  # a deque: 600 B
                    self.__dict__["_lazy_condition"] = condition
        return condition

    @_condition.setter
    def _condition(self, _value: threading.Condition) -> None:
        pass

    def __call__(self, done: asyncio.Future[T]) -> None:
        """Copy the outcome of the asyncio future (a done callback, on the loop)."""
        if self.done():
            return
        if done.cancelled():
            super().cancel()
            return
        exc = done.exception()
        try:
            if exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(done.result())
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile by the user
            pass

    def follow_send(self, task: asyncio.Future[asyncio.Future[T] | None]) -> None:
        """The outcome of a pipelined send (on the loop): its failure, or the asyncio
        future to follow from now on (None: a task sent without reply)."""
        exc = send_failure(task)
        if exc is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.set_exception(exc)
            return
        source = task.result()
        if source is None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.set_result(None)  # type: ignore[arg-type]
            return
        self._source = source  # before looking at our state: see cancel()
        if self.cancelled():
            source.cancel()
        else:
            source.add_done_callback(self)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        # A pipelined send not confirmed yet has no source: follow_send cancels it later.
        source = self._source
        if cancelled and source is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(source.cancel)
        return cancelled


def _to_concurrent(
    future: asyncio.Future[T], loop: asyncio.AbstractEventLoop
) -> concurrent.futures.Future[T]:
    """A concurrent future following ``future``; cancelling it cancels ``future``."""
    out = _ReplyFuture(future, loop)
    future.add_done_callback(out)
    return out


class _Facade:
    _portal: BlockingPortal
    _timeout: float
    _window: SendWindow | None

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self._portal.call(fn, *args, timeout=self._timeout)

    # how an asyncio future of the loop becomes the caller's (postage.kiwipy's facade
    # also turns the futures it resolves to into concurrent ones)
    _follow: Callable[[asyncio.Future[Any], asyncio.AbstractEventLoop],
                      concurrent.futures.Future[Any]] = staticmethod(_to_concurrent)

    def _future(
        self, fn: Callable[..., Awaitable[asyncio.Future[T] | None]], *args: Any
    ) -> concurrent.futures.Future[T] | None:
        # the concurrent future is made on the loop thread: a callback added to an
        # asyncio future from another thread could be lost, or run late
        async def run() -> concurrent.futures.Future[T] | None:
            future = await fn(*args)
            return None if future is None else self._follow(future, self._portal.loop)

        return self._portal.call(run, timeout=self._timeout)

    def _send(
        self, fn: Callable[..., Awaitable[asyncio.Future[T] | None]], *args: Any,
        no_reply: bool = False,
    ) -> concurrent.futures.Future[T] | None:
        """A send: waits for its confirm, or with a send window hands it to the loop and
        returns at once (a failure then fails the future, or with ``no_reply`` is raised
        by a later send, flush() or close())."""
        window = self._window
        if window is None:
            return self._future(fn, *args)
        if no_reply:
            window.submit(fn, args)
            return None
        out: _ReplyFuture[T] = _ReplyFuture(None, self._portal.loop)
        window.submit(fn, args, out.follow_send)
        return out


class _TaskVerbs(_Facade):
    """The task verbs of a queue: a :class:`TaskQueue`, or a :class:`Communicator` (its
    default task queue)."""

    _aio: AsyncTaskQueue | AsyncCommunicator

    def task_send(self, task: Any, no_reply: bool = False, *, delay: float | None = None,
                  not_before: datetime.datetime | None = None,
                  ) -> concurrent.futures.Future[Any] | None:
        """Queue ``task``; a future of its result (None with ``no_reply``) once confirmed
        (at once with a send window). ``delay`` (seconds) or ``not_before`` (a datetime):
        the task reaches the queue that much later."""
        return self._send(self._aio.task_send, task, no_reply, delay, not_before,
                          no_reply=no_reply)

    def add_task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Consume the queue with ``subscriber(comm, body)``; return its identifier."""
        return self._call(self._aio.add_task_subscriber, subscriber, identifier)

    def remove_task_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop a subscriber of the queue (by identifier or the callback itself)."""
        self._call(self._aio.remove_task_subscriber, identifier)


class TaskQueue(_TaskVerbs):
    """A durable task queue of a blocking :class:`Communicator`."""

    _aio: AsyncTaskQueue

    def __init__(self, queue: AsyncTaskQueue, portal: BlockingPortal, timeout: float,
                 window: SendWindow | None = None) -> None:
        self._aio = queue
        self._portal = portal
        self._timeout = timeout
        self._window = window

    @property
    def name(self) -> str:
        return self._aio.name


    def wait_for_subscriber(self, timeout: float = 30.0) -> None:
        """Return once a task subscriber (in any process) consumes this queue;
        DeliveryTimeout after ``timeout`` s."""
        self._portal.call(self._aio.wait_for_subscriber, timeout, timeout=timeout + 5.0)


class Communicator(_TaskVerbs):
    """kiwiPy-style blocking communicator: tasks, RPC and filtered broadcasts.

    Make one with ``postage.connect(url)``; use it as a context manager (closing waits for
    running subscribers and outstanding confirms). Subscribers receive this object as
    ``comm``; plain-function subscribers run in worker threads and may call its blocking
    verbs; ``async def`` subscribers run on the event loop and should use ``comm.aio``.
    """

    _aio: AsyncCommunicator

    def __init__(self, comm: AsyncCommunicator, portal: BlockingPortal,
                 send_window: int = 0) -> None:
        self._aio = comm
        self._portal = portal
        self._timeout = comm.options.operation_timeout
        self._window = (SendWindow(portal, send_window, comm.options.operation_timeout)
                        if send_window else None)
        comm.callback_comm = self

    @property
    def send_window(self) -> int:
        """Sends allowed to await their confirm at once (0: each send waits for it)."""
        return 0 if self._window is None else self._window.depth

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every pipelined send (``send_window``) is confirmed, at most
        ``timeout`` s (default ``operation_timeout``), and raise the first failure of a
        ``no_reply`` task. Nothing to do without a send window."""
        if self._window is not None:
            self._window.flush(timeout)

    @property
    def aio(self) -> AsyncCommunicator:
        """The asyncio communicator behind this one (for ``async def`` subscribers)."""
        return self._aio

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._close_interrupted()
        else:
            self.close()

    def _close_interrupted(self, timeout: float | None = None) -> bool:
        """Close after a Ctrl-C (or a signal): say what the close waits for, and close at
        once on a second Ctrl-C (KeyboardInterrupt). True if that happened."""
        if self._aio.is_closed():
            return False
        running = self._aio.core.handling
        if running:
            wait = self._aio.options.close_timeout if timeout is None else timeout
            log.warning(
                "closing: waiting up to %g s for %d running subscriber%s to finish and "
                "ack %s message%s; press Ctrl-C again to stop now (unacked messages go "
                "back to their queues)", wait, running, "s" if running > 1 else "",
                "their" if running > 1 else "its", "s" if running > 1 else "")
        try:
            self.close(timeout)
        except KeyboardInterrupt:
            log.warning("closing now, without waiting for running subscribers")
            self._portal.call(self._aio.abort, timeout=10.0)
            return True
        return False

    def is_closed(self) -> bool:
        return self._aio.is_closed()

    def close(self, timeout: float | None = None) -> None:
        """Stop subscribers (running ones finish), wait for confirms, disconnect."""
        if self._aio.is_closed():
            return
        wait = (self._aio.options.close_timeout if timeout is None else timeout) + 5.0
        try:
            if self._window is not None:  # pipelined sends first: none is dropped
                self._window.flush(wait)
        finally:
            self._portal.call(self._aio.close, timeout, timeout=wait)

    def run_until_signal(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), *,
        close_timeout: float | None = None,
    ) -> int | None:
        """Block, serving the subscribers, until one of ``signals`` arrives; then close
        gracefully: stop consuming, let running subscribers finish (up to
        ``close_timeout``, default ``close_timeout`` of the options) and ack their
        messages, wait for confirms, disconnect. Return the signal number (None when the
        communicator was closed otherwise). An explicit opt-in for the program's main
        loop: call it from the main thread; the previous handlers are restored after."""
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("run_until_signal must be called from the main thread")
        with SignalCatcher(signals) as catcher:
            while not catcher.caught.wait(0.5):
                if self.is_closed():
                    return None
            self._close_interrupted(close_timeout)  # a second signal: close at once
        return catcher.signum

    # tasks
    def task_queue(self, name: str, prefetch_count: int | None = None) -> TaskQueue:
        """The durable task queue ``name``."""
        queue = self._call(self._aio.task_queue, name, prefetch_count)
        return TaskQueue(queue, self._portal, self._timeout, self._window)

    # RPC
    def rpc_send(self, recipient_id: str, msg: Any) -> concurrent.futures.Future[Any]:
        """Send an RPC; a future of the reply. Unroutable at once when nobody listens
        (with a send window: the future fails with it)."""
        future = self._send(self._aio.rpc_send, recipient_id, msg)
        assert future is not None
        return future

    def rpc_gather(self, recipient_id: str, msg: Any, timeout: float | None = None,
                   max_replies: int | None = None, *, exchange: str | None = None,
                   command: str | None = None) -> list[GatherReply]:
        """Scatter/gather: every reply to one request within ``timeout`` (see
        :meth:`AsyncCommunicator.rpc_gather`)."""
        wait = self._aio.options.rpc_timeout if timeout is None else timeout
        return self._portal.call(
            functools.partial(self._aio.rpc_gather, recipient_id, msg, timeout, max_replies,
                              exchange=exchange, command=command),
            timeout=wait + self._timeout)

    def announce(self, fingerprint: Fingerprint | Mapping[str, Any] | None = None,
                 interval: float = 10.0) -> None:
        """Opt in to presence (online now, heartbeats, offline on close)."""
        self._call(self._aio.announce, fingerprint, interval)

    def add_rpc_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Answer RPCs sent to ``identifier`` with ``subscriber(comm, body)``."""
        return self._call(self._aio.add_rpc_subscriber, subscriber, identifier)

    def remove_rpc_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop answering as ``identifier``."""
        self._call(self._aio.remove_rpc_subscriber, identifier)

    def wait_for_subscriber(self, identifier: str, timeout: float = 30.0) -> None:
        """Return once an RPC subscriber serves ``identifier`` (in any process), so that
        ``rpc_send`` to it is not Unroutable; DeliveryTimeout after ``timeout`` s."""
        self._portal.call(self._aio.wait_for_subscriber, identifier, timeout,
                          timeout=timeout + 5.0)

    # broadcasts
    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None, *, delay: float | None = None,
                       not_before: datetime.datetime | None = None) -> bool:
        """Send a broadcast; True once the broker has accepted it (``delay`` seconds or
        ``not_before`` a datetime: it reaches the subscribers that much later)."""
        return self._call(self._aio.broadcast_send, body, sender, subject, correlation_id,
                          delay, not_before)

    def add_broadcast_subscriber(self, subscriber: Subscriber | BroadcastFilter,
                                 identifier: str | None = None) -> str:
        """Receive broadcasts with a callback or a :class:`BroadcastFilter`."""
        return self._call(self._aio.add_broadcast_subscriber, subscriber, identifier)

    def remove_broadcast_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop delivering broadcasts to a subscriber."""
        self._call(self._aio.remove_broadcast_subscriber, identifier)


def connect(url: str | None = None, *, portal: BlockingPortal | None = None,
            send_window: int = 0, **options: Any) -> Communicator:
    """Connect to the broker at ``url`` and return a blocking :class:`Communicator`.

    ``url`` defaults to ``POSTAGE_URL`` (or the ``POSTAGE_HOST``... variables); a URL
    without user name and password (``amqp://localhost``) logs in as guest/guest.
    ``options`` are :class:`CommunicatorOptions` fields (``rpc_timeout``,
    ``task_timeout``, ``task_prefetch_count``, ``task_max_attempts``, ``name``...) and
    connection/core options (``heartbeat``, ``encoder``, ...). The communicator runs on
    ``portal`` (default: the process-wide one).

    ``send_window = N`` is an explicit opt-in for fast sending from one thread:
    ``rpc_send``/``task_send`` return as soon as the message is handed to the event loop,
    with at most N sends awaiting the broker's confirm (the next one blocks while N do).
    A publishing error (Unroutable, ...) then fails the returned future instead of being
    raised by the call; for ``task_send(no_reply=True)`` it is raised by a later send,
    :meth:`Communicator.flush` or :meth:`Communicator.close`. The default, 0, waits for
    each confirm.
    """
    if isinstance(send_window, bool) or not isinstance(send_window, int) or send_window < 0:
        raise ConfigurationError(f"send_window must be an int >= 0, not {send_window!r}")
    chosen = portal or default_portal()
    opener = functools.partial(open_communicator, url, **options)
    timeout = float(options.get("connect_timeout", 10.0)) * 3 + 30.0
    comm = chosen.call(opener, timeout=timeout)
    return Communicator(comm, chosen, send_window)
