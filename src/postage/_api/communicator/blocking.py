"""The blocking communicator: a thin facade over :class:`AsyncCommunicator` on a portal.

Each verb is declared from its asyncio twin (:mod:`postage._blocking.facade`): it runs the
twin's coroutine on the portal (an event loop in a daemon thread) and waits for it with the
one outer-deadline rule; futures handed to the caller are
``concurrent.futures.Future`` objects. No messaging logic lives here.
"""

from __future__ import annotations

__all__ = ["Communicator", "TaskQueue", "connect"]

import functools
import logging
import signal
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ..._blocking.facade import Facade, blocking, blocking_future, outer_deadline
from ..._blocking.portal import BlockingPortal, default_portal
from ..._blocking.signals import SignalCatcher
from ..._blocking.window import SendWindow
from ..._exceptions import ConfigurationError
from .aio import AsyncCommunicator, AsyncTaskQueue, open_communicator

log = logging.getLogger("postage.communicator")


def _bound_timeout(comm: Communicator, timeout: float | None) -> float:
    """What bounds ``rpc_gather``: its wait for replies, and the request's publish."""
    wait = comm.aio.options.rpc_timeout if timeout is None else timeout
    return wait + comm.aio.options.operation_timeout


class TaskQueue(Facade):
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

    task_send = blocking_future(AsyncTaskQueue.task_send, send=True)
    add_task_subscriber = blocking(AsyncTaskQueue.add_task_subscriber)
    remove_task_subscriber = blocking(AsyncTaskQueue.remove_task_subscriber)
    wait_for_subscriber = blocking(AsyncTaskQueue.wait_for_subscriber, bound="timeout")


class Communicator(Facade):
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
            self._call(self._aio.abort, bound=5.0)
            return True
        return False

    def is_closed(self) -> bool:
        return self._aio.is_closed()

    def close(self, timeout: float | None = None) -> None:
        """Stop subscribers (running ones finish), wait for confirms, disconnect."""
        if self._aio.is_closed():
            return
        wait = self._deadline(self._aio.options.close_timeout if timeout is None else timeout)
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
    task_send = blocking_future(AsyncCommunicator.task_send, send=True)
    add_task_subscriber = blocking(AsyncCommunicator.add_task_subscriber)
    remove_task_subscriber = blocking(AsyncCommunicator.remove_task_subscriber)

    def task_queue(self, name: str, prefetch_count: int | None = None) -> TaskQueue:
        """The durable task queue ``name``."""
        queue = self._call(self._aio.task_queue, name, prefetch_count)
        return TaskQueue(queue, self._portal, self._timeout, self._window)

    # RPC
    rpc_send = blocking_future(AsyncCommunicator.rpc_send, send=True)
    rpc_gather = blocking(AsyncCommunicator.rpc_gather, bound=_bound_timeout)
    announce = blocking(AsyncCommunicator.announce)
    add_rpc_subscriber = blocking(AsyncCommunicator.add_rpc_subscriber)
    remove_rpc_subscriber = blocking(AsyncCommunicator.remove_rpc_subscriber)
    wait_for_subscriber = blocking(AsyncCommunicator.wait_for_subscriber, bound="timeout")

    # broadcasts
    broadcast_send = blocking(AsyncCommunicator.broadcast_send)
    add_broadcast_subscriber = blocking(AsyncCommunicator.add_broadcast_subscriber)
    remove_broadcast_subscriber = blocking(AsyncCommunicator.remove_broadcast_subscriber)


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
    # a connection tries each URL with its own deadline, and may retry once
    bound = float(options.get("connect_timeout", 10.0)) * 3 + 25.0
    comm = chosen.call(opener, timeout=outer_deadline(bound, 0.0))
    return Communicator(comm, chosen, send_window)
