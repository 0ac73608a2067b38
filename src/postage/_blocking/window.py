"""A send window: blocking threads hand sends to the event loop without waiting for the
broker's confirm, with at most ``depth`` sends unconfirmed at once.

The explicit opt-in behind pipelined classic producers (``GenericProducer.pipeline``)
and the blocking communicator's ``send_window``. The sending thread appends to a deque
and wakes the loop only when no drain is already scheduled; the loop starts one task per
send, in order (so sends keep their order on the wire). A send given a ``done`` callback
reports its outcome there (a future handed to the caller, say); the failure of a
fire-and-forget send is kept and raised by the sender's next send, :meth:`flush` or
close. Nothing is lost silently.
"""

from __future__ import annotations

__all__ = ["SendWindow", "send_failure"]

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._exceptions import ConfigurationError, ConnectionClosed, DeliveryTimeout
from .portal import BlockingPortal

log = logging.getLogger("postage.pipeline")

Done = Callable[["asyncio.Future[Any]"], None]
_Send = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], "Done | None"]


class SendWindow:
    """Up to ``depth`` sends awaiting their confirm; see the module docstring."""

    def __init__(self, portal: BlockingPortal, depth: int, timeout: float) -> None:
        if depth < 1:
            raise ConfigurationError("a send window needs a depth of 1 or more")
        self._portal = portal
        self._loop = portal.loop
        self._depth = depth
        self._timeout = timeout
        self._cond = threading.Condition(threading.Lock())
        self._inflight = 0
        # a sender that found the window full sleeps until half of it is free (a flush,
        # until all of it is): one thread wake-up per half window, not one per confirm
        self._low_water = depth // 2
        self._sleepers = 0
        self._queue: collections.deque[_Send] = collections.deque()
        self._scheduled = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def inflight(self) -> int:
        """Sends handed over and not yet confirmed (or failed)."""
        return self._inflight

    # -- sending thread -----------------------------------------------------------------

    def raise_failure(self) -> None:
        """Raise the first failure of an earlier fire-and-forget send (once)."""
        if not self._failures:
            return
        with self._cond:
            failures, self._failures = self._failures, []
        if len(failures) > 1:
            log.warning("%d more pipelined sends failed; the first is raised", len(failures) - 1)
        exc = failures[0]
        try:
            raise exc
        finally:
            del exc, failures

    def submit(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
               done: Done | None = None) -> None:
        """Run ``fn(*args)`` on the loop, after the sends submitted before it; return at
        once unless ``depth`` sends are unconfirmed (then wait, at most the timeout, until
        half of the window is free). ``done(task)`` runs on the loop with the finished
        task; without it, a failure is raised by a later call of this window."""
        self._portal.check_thread()
        self.raise_failure()
        with self._cond:
            if self._inflight >= self._depth:
                deadline = time.monotonic() + self._timeout
                self._sleepers += 1
                try:
                    while self._inflight >= self._depth:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._cond.wait(left):
                            raise DeliveryTimeout(
                                f"no confirm freed a slot of the send window within "
                                f"{self._timeout:g} s")
                finally:
                    self._sleepers -= 1
            self._inflight += 1
        self._queue.append((fn, args, done))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed
                self._queue.clear()
                with self._cond:
                    self._inflight = 0
                raise ConnectionClosed("the event loop thread has stopped") from None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send is confirmed or failed (at most ``timeout`` s, default
        the window's timeout), then raise the first fire-and-forget failure, if any."""
        wait = self._timeout if timeout is None else timeout
        if not self.wait_settled(wait):
            raise DeliveryTimeout(
                f"{self._inflight} pipelined sends not confirmed within {wait:g} s")
        self.raise_failure()

    def wait_settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every send is confirmed or failed; False if
        some still are not. Unlike :meth:`flush`, raises no failure (it stays kept)."""
        self._portal.check_thread()
        with self._cond:
            self._sleepers += 1
            try:
                return self._cond.wait_for(lambda: self._inflight == 0, timeout)
            finally:
                self._sleepers -= 1

    # -- event loop ---------------------------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False  # first: a send appended from now on schedules a new drain
        queue, loop = self._queue, self._loop
        while queue:
            fn, args, done = queue.popleft()
            task: asyncio.Future[Any]
            try:
                task = asyncio.ensure_future(fn(*args), loop=loop)
            except Exception as exc:  # fn raised before returning an awaitable
                task = loop.create_future()
                task.set_exception(exc)
            self._tasks.add(task)
            task.add_done_callback(self._finished if done is None else _Finish(self, done))

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._settle(task, send_failure(task))

    def _settle(self, task: asyncio.Future[Any], failure: BaseException | None) -> None:
        self._tasks.discard(task)
        with self._cond:
            if failure is not None:
                self._failures.append(failure)
            self._inflight -= 1
            if self._sleepers and self._inflight <= self._low_water:
                self._cond.notify_all()


def send_failure(task: asyncio.Future[Any]) -> BaseException | None:
    """What made a finished send fail (a cancelled one: ConnectionClosed), or None."""
    if task.cancelled():
        return ConnectionClosed("a pipelined send was cancelled")
    return task.exception()


class _Finish:
    """The done callback of a send with its own ``done``: report, then free the slot."""

    __slots__ = ("done", "window")

    def __init__(self, window: SendWindow, done: Done) -> None:
        self.window = window
        self.done = done

    def __call__(self, task: asyncio.Future[Any]) -> None:
        try:
            self.done(task)
        except Exception:  # a bug in the callback must not leak the slot
            log.exception("the completion callback of a pipelined send failed")
        finally:
            self.window._settle(task, None)
