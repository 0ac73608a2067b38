"""Worker threads for blocking user code (handlers, subscribers), never on the event loop.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the
interpreter exits, so one handler that never returns keeps the process alive forever; and
its fixed size starves handlers that wait on other handlers of the same process (an RPC
subscriber making an RPC to another subscriber of the same communicator). Here threads
are daemons, started on demand whenever every worker is busy (up to ``max_workers``), and
leave after ``idle_timeout`` seconds without work.
"""

from __future__ import annotations

__all__ = ["Withdrawn", "WorkerPool", "is_async_callable"]

import asyncio
import collections
import contextvars
import inspect
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._transport.base import HANDLING

T = TypeVar("T")
_names = itertools.count(1)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Does ``fn`` run on the event loop (an ``async def`` function, or an object whose
    ``__call__`` is one)? Otherwise it is blocking user code, for a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class WorkerPool:
    """Daemon worker threads started on demand; :meth:`run` awaits a blocking call."""

    def __init__(self, max_workers: int = 512, *, idle_timeout: float = 30.0,
                 name: str = "postage-handler") -> None:
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._shutdown = False

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the worker pool is shut down")
            self._work.append(work)
            if len(self._work) > self._idle and self._threads < self.max_workers:
                self._threads += 1
                threading.Thread(target=self._worker, daemon=True,
                                 name=f"{self.name}-{next(_names)}").start()
            else:
                self._wake.notify()

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._work:
                    if self._shutdown:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woken = self._wake.wait(self.idle_timeout)
                    self._idle -= 1
                    if not woken and not self._work:
                        self._threads -= 1
                        return
                work = self._work.popleft()
            work()
            # not kept while idle: the job refers to its handler, arguments and result
            del work

    def shutdown(self) -> None:
        """Drop work not started yet; idle threads leave (busy ones finish, as daemons)."""
        with self._lock:
            self._shutdown = True
            self._work.clear()
            self._wake.notify_all()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread; the loop keeps serving meanwhile.

        Work for a delivery (see :data:`~postage._transport.base.HANDLING`) whose channel
        is lost by the time a thread takes it up is not run: it raises :class:`Withdrawn`
        (the broker delivers the message again)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        delivery = HANDLING.get()
        # the caller's context variables (the delivery being handled, tracing's) hold in
        # the thread, and in the calls it makes back on the loop
        context = contextvars.copy_context()

        def work() -> None:
            # One hand-back to the loop per call (cheaper than run_in_executor's chained
            # concurrent/asyncio futures, which showed in profiles of RPC subscribers).
            try:
                if delivery is not None and delivery.channel_lost:
                    raise Withdrawn
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:
                outcome: tuple[Any, Any] = (_fail_future, exc)
            else:
                outcome = (_resolve_future, result)
            try:
                loop.call_soon_threadsafe(outcome[0], future, outcome[1])
            except RuntimeError:  # the loop has closed meanwhile: nobody waits any more
                pass

        self.submit(work)
        return await future


class Withdrawn(BaseException):
    """Work for a delivery whose channel was lost before the work started: not run. A
    BaseException, so that it passes the handlers' own ``except Exception`` and reaches
    the pipeline, which leaves the delivery to the broker."""



def _resolve_future(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
