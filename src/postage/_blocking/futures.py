"""The futures the blocking APIs hand to callers: ``concurrent.futures.Future`` objects
following an asyncio future of the portal's loop.

They are light (thousands may be pending at once) and work with
``concurrent.futures.wait`` and ``as_completed``, whose waiters need the future's
condition and waiter list: those are made when first used.
"""

from __future__ import annotations

__all__ = ["ReplyFuture", "follow"]

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import TypeVar

from .portal import BlockingPortal
from .window import send_failure

T = TypeVar("T")


_CONDITION_LOCK = threading.Lock()


class ReplyFuture(concurrent.futures.Future[T]):
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

    def __init__(self, source: asyncio.Future[T] | None, portal: BlockingPortal) -> None:
        super().__init__()
        self._source = source
        self._portal = portal

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
        loop = self._portal.loop
        if cancelled and source is not None and not loop.is_closed():
            loop.call_soon_threadsafe(source.cancel)
        return cancelled


def follow(
    future: asyncio.Future[T], portal: BlockingPortal
) -> concurrent.futures.Future[T]:
    """A concurrent future following ``future``; cancelling it cancels ``future``."""
    out = ReplyFuture(future, portal)
    future.add_done_callback(out)
    return out
