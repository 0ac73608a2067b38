"""A blocking portal: an asyncio event loop in a daemon thread, for the blocking APIs.

Blocking code submits coroutines to the loop and waits for their results, while the loop
keeps serving the connection (heartbeats, confirms, deliveries). A blocking call made from
the loop's own thread would deadlock, so it is refused with WrongThreadError.
"""

from __future__ import annotations

__all__ = ["BlockingPortal", "default_portal"]

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ._exceptions import ConnectionClosed, DeliveryTimeout, WrongThreadError

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class BlockingPortal:
    """Runs an event loop in a daemon thread and lets other threads call into it."""

    def __init__(self, name: str = "postage-loop") -> None:
        self._loop = _new_loop()
        self._started = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

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

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a concurrent future of its result."""
        if self._stopped:
            coro.close()
            raise ConnectionClosed("the event loop thread has stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        """Run ``fn(*args)`` on the loop and wait for its result (at most ``timeout`` s)."""
        if self.in_loop_thread:
            raise WrongThreadError(
                "a blocking Postage call was made from the event loop's own thread "
                "(inside an async handler?); use the asyncio API there"
            )
        future: concurrent.futures.Future[T] = self.submit(fn(*args))  # type: ignore[arg-type]
        try:
            result: T = future.result(timeout)
            return result
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeliveryTimeout(f"the call did not finish within {timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise ConnectionClosed("the call was cancelled") from None

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
