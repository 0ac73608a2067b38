"""A blocking portal: an asyncio event loop in a daemon thread, for the blocking APIs.

Blocking code submits coroutines to the loop and waits for their results, while the loop
keeps serving the connection (heartbeats, confirms, deliveries). A blocking call made from
the loop's own thread would deadlock, so it is refused with WrongThreadError.
"""

from __future__ import annotations

__all__ = ["BlockingPortal", "default_portal"]

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .._exceptions import (
    ConfigurationError,
    ConnectionClosed,
    DeliveryTimeout,
    WrongThreadError,
    at_call_site,
)

T = TypeVar("T")


LOOPS = ("uvloop", "asyncio")


def _new_loop() -> asyncio.AbstractEventLoop:
    """The loop of the blocking APIs: uvloop when installed (about 10 % faster sequential
    sends), unless ``POSTAGE_LOOP=asyncio`` asks for the standard library's (about 2 MiB
    less memory: uvloop's module and libuv). ``POSTAGE_LOOP=uvloop`` requires uvloop."""
    choice = os.environ.get("POSTAGE_LOOP", "").strip().lower()
    if choice and choice not in LOOPS:
        raise ConfigurationError(
            f"POSTAGE_LOOP={choice!r}: expected one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "POSTAGE_LOOP=uvloop, but uvloop is not installed "
                "(pip install uvloop)") from None
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Call:
    """One :meth:`BlockingPortal.call`: started on the loop, awaited with a plain lock."""

    __slots__ = ("args", "cancelled", "exception", "fn", "lock", "result", "task")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.lock = threading.Lock()
        self.lock.acquire()  # released (once) when the outcome is known
        self.task: asyncio.Future[Any] | None = None
        self.result: Any = None
        self.exception: BaseException | None = None
        self.cancelled = False

    def start(self) -> None:
        """On the loop: create the coroutine and run it as a task."""
        if self.cancelled:
            return
        try:
            self.task = asyncio.ensure_future(self.fn(*self.args))
        except BaseException as exc:  # fn raised before returning an awaitable
            self.exception = exc
            self.lock.release()
            return
        self.fn = self.args = None  # type: ignore[assignment]
        self.task.add_done_callback(self.finish)

    def finish(self, task: asyncio.Future[Any]) -> None:
        """The task's done callback (on the loop): store its outcome, wake the caller."""
        if task.cancelled():
            self.exception = ConnectionClosed("the call was cancelled")
        else:
            self.exception = task.exception()
            if self.exception is None:
                self.result = task.result()
        self.task = None
        self.lock.release()

    def cancel(self) -> None:
        """On the loop, after a timeout or interruption of the caller."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


class BlockingPortal:
    """Runs an event loop in a daemon thread and lets other threads call into it."""

    def __init__(self, name: str = "postage-loop") -> None:
        self._loop = _new_loop()
        self._started = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()
        self._thread_id = self._thread.ident

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._started.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def check_thread(self) -> None:
        """Raise WrongThreadError in the loop's own thread, where a blocking wait for
        the loop would deadlock."""
        if threading.get_ident() == self._thread_id:
            raise WrongThreadError(
                "a blocking Postage call was made from the event loop's own thread "
                "(inside an async handler?); use the asyncio API there"
            )

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a concurrent future of its result."""
        if self._stopped:
            coro.close()
            raise ConnectionClosed("the event loop thread has stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        """Run ``fn(*args)`` on the loop and wait for its result (at most ``timeout`` s).

        The hot path of every blocking API, so it is kept cheap: one
        ``call_soon_threadsafe`` starts the coroutine as a task on the loop, whose done
        callback releases a plain lock the caller waits on (no concurrent future, no
        chained-future callbacks). A call that times out (or is interrupted) cancels its
        task.
        """
        self.check_thread()
        if self._stopped:
            raise ConnectionClosed("the event loop thread has stopped")
        call = _Call(fn, args)
        try:
            self._loop.call_soon_threadsafe(call.start)
        except RuntimeError:  # the loop is closed
            raise ConnectionClosed("the event loop thread has stopped") from None
        try:
            finished = call.lock.acquire(True, -1 if timeout is None else max(timeout, 0))
        except BaseException:  # KeyboardInterrupt while waiting: don't leave the task running
            self._cancel(call)
            raise
        if not finished:
            self._cancel(call)
            raise DeliveryTimeout(f"the call did not finish within {timeout:g} s")
        exc = call.exception
        if exc is not None:
            call.exception = None  # no reference cycle through the traceback
            try:
                raise at_call_site(exc)
            finally:
                exc = None
        result: T = call.result
        return result

    def _cancel(self, call: _Call) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop runs nothing anyway
            self._loop.call_soon_threadsafe(call.cancel)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callback on the loop thread."""
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.in_loop_thread:
            self._loop.stop()
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


_default: BlockingPortal | None = None
_default_lock = threading.Lock()


def default_portal() -> BlockingPortal:
    """The process-wide portal shared by blocking API objects, started on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._stopped:
            _default = BlockingPortal()
        return _default
