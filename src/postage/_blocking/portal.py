"""A blocking portal: an asyncio event loop that blocking callers run themselves.

The loop is run by whichever thread holds it (see docs/blocking.md for the picture):

* a thread that makes a blocking call while nobody runs the loop takes it and runs it
  itself until its call is done (no thread hop: a sequential sender never wakes another
  thread), then lets it go;
* a keeper thread (a daemon) takes the loop back when it has been free for ``GRACE``
  seconds, so heartbeats, deliveries, confirms and consumers are served while the callers
  are in their own code;
* a caller that finds the keeper running an otherwise idle loop asks for it (a
  hand-over), and one that finds another caller running it hands its call to that run
  (a guest); when that caller lets go with guests waiting, the keeper takes over at once.

Only one thread runs the loop at a time, so the loop's code is never concurrent with
itself. A blocking call made from inside the loop (an ``async def`` handler, a loop
callback) would wait for itself: it is refused with WrongThreadError. A caller running the
loop in the main thread turns Ctrl-C into a stop of that run: the call is cancelled and
KeyboardInterrupt is raised in the caller's own code, never inside the loop's callbacks.
"""

from __future__ import annotations

__all__ = ["GRACE", "BlockingPortal", "Stopper", "Target", "default_portal"]

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any, Protocol, TypeVar

from .._exceptions import (
    ConfigurationError,
    ConnectionClosed,
    DeliveryTimeout,
    WrongThreadError,
    at_call_site,
)

T = TypeVar("T")

GRACE = 0.002
"""Seconds the loop may stay unrun after a caller lets it go before the keeper takes it
back (the keeper looks every GRACE seconds: a delivery waits at most about 2 x GRACE)."""

LOOPS = ("uvloop", "asyncio")

_get_running_loop = asyncio._get_running_loop  # the C accessor asyncio itself uses
_get_ident = threading.get_ident
_monotonic = time.monotonic
_MAIN = threading.main_thread().ident


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


class Target(Protocol):
    """What a blocking thread waits for: work the loop completes.

    ``arm(loop)`` asks it to stop ``loop`` when it completes (the waiting thread runs the
    loop), ``disarm()`` takes that back; ``block(timeout)`` waits for completion while
    another thread runs the loop."""

    def done(self) -> bool: ...
    def arm(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def disarm(self) -> None: ...
    def block(self, timeout: float | None) -> None: ...


class _Call:
    """One :meth:`BlockingPortal.call`: a task on the loop and the caller waiting for it."""

    __slots__ = ("args", "cancelled", "context", "exception", "finished", "fn", "lock",
                 "result", "stop_loop", "task")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.context = contextvars.copy_context()  # the caller's, wherever the task runs
        self.lock = threading.Lock()
        self.lock.acquire()  # released (once) when the outcome is known
        self.task: asyncio.Future[Any] | None = None
        self.result: Any = None
        self.exception: BaseException | None = None
        self.cancelled = False
        self.finished = False
        self.stop_loop: asyncio.AbstractEventLoop | None = None  # the caller runs it

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the coroutine and make it a task of ``loop`` (in the thread holding
        the loop)."""
        if self.cancelled:
            self._done(ConnectionClosed("the call was cancelled"))
            return
        try:
            awaitable = self.fn(*self.args)
            if asyncio.iscoroutine(awaitable):
                self.task = loop.create_task(awaitable, context=self.context)
            else:
                self.task = asyncio.ensure_future(awaitable, loop=loop)
        except BaseException as exc:  # fn raised before returning an awaitable
            self._done(exc)
            return
        self.fn = self.args = self.context = None  # type: ignore[assignment]
        self.task.add_done_callback(self.finish)

    def finish(self, task: asyncio.Future[Any]) -> None:
        """The task's done callback: store its outcome, wake the caller."""
        if task.cancelled():
            self.exception = ConnectionClosed("the call was cancelled")
        else:
            self.exception = task.exception()
            if self.exception is None:
                self.result = task.result()
        self.task = None
        self._wake()

    def _done(self, exc: BaseException) -> None:
        self.exception = exc
        self.fn = self.args = self.context = None  # type: ignore[assignment]
        self._wake()

    def _wake(self) -> None:
        self.finished = True
        if self.stop_loop is not None:
            self.stop_loop.stop()
        self.lock.release()

    def cancel(self) -> None:
        """On the loop, after a timeout or interruption of the caller."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    # Target
    def done(self) -> bool:
        return self.finished

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop_loop = loop

    def disarm(self) -> None:
        self.stop_loop = None

    def block(self, timeout: float | None) -> None:
        if self.lock.acquire(True, -1 if timeout is None else timeout):
            self.lock.release()

    def outcome(self) -> Any:
        exc = self.exception
        if exc is not None:
            self.exception = None  # no reference cycle through the traceback
            try:
                raise at_call_site(exc)
            finally:
                exc = None
        return self.result


_GUARDED = (signal.SIGINT, signal.SIGTERM)


class Stopper:
    """A done callback that stops the loop a waiting thread runs, until disarmed (from
    another thread, through the loop's thread-safe wake-up)."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop: asyncio.AbstractEventLoop | None = loop

    def __call__(self, _done: object) -> None:
        loop = self.loop
        if loop is None:
            return
        if _get_running_loop() is loop:
            loop.stop()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)


class _SignalGuard:
    """While the main thread runs the loop, its Python signal handlers (Ctrl-C's
    KeyboardInterrupt, a program's SIGTERM handler) must not run inside the loop's
    callbacks: this handler stops the run instead, and :meth:`deliver` calls the
    program's handler once the caller is back in its own frame."""

    __slots__ = ("caught", "loop", "previous")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous: list[tuple[int, Callable[[int, FrameType | None], Any]]] = []
        self.caught: list[tuple[int, FrameType | None]] = []

    def install(self) -> None:
        for signum in _GUARDED:
            handler = signal.getsignal(signum)
            if callable(handler):
                signal.signal(signum, self)
                self.previous.append((signum, handler))

    def restore(self) -> None:
        for signum, handler in self.previous:
            signal.signal(signum, handler)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.caught.append((signum, frame))
        self.loop.call_soon_threadsafe(self.loop.stop)  # wakes a loop waiting for I/O

    def deliver(self) -> None:
        handlers = dict(self.previous)
        caught, self.caught = self.caught, []
        for signum, frame in caught:
            handlers[signum](signum, frame)


class _Ask:
    """A caller waiting for the keeper to hand it the loop."""

    __slots__ = ("granted", "ident", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.lock.acquire()
        self.granted = False


class BlockingPortal:
    """An event loop run by the blocking callers themselves, or by a keeper thread when
    none of them is (see the module docstring)."""

    def __init__(self, name: str = "postage-loop") -> None:
        self._loop = _new_loop()
        self._mutex = threading.Lock()
        self._keeper_wake = threading.Condition(self._mutex)
        self._owner: int | None = None  # the thread running (or about to run) the loop
        self._guests = 0  # threads waiting for work that another thread's run does
        self._ask: _Ask | None = None  # a caller waiting for the keeper's run
        self._released_at = 0.0
        self._stopped = False
        self._closed = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name=name, daemon=True)
        self._keeper.start()
        self._keeper_id = self._keeper.ident

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def in_loop_thread(self) -> bool:
        """True while the calling thread is running this portal's loop."""
        return _get_running_loop() is self._loop

    def check_thread(self) -> None:
        """Raise WrongThreadError while the calling thread runs the loop, where a
        blocking wait for the loop would deadlock."""
        if _get_running_loop() is self._loop:
            raise WrongThreadError(
                "a blocking Postage call was made from the event loop's own thread "
                "(inside an async handler?); use the asyncio API there"
            )

    # -- who runs the loop ---------------------------------------------------------------

    def _keep(self) -> None:
        """The keeper: run the loop whenever it has been free for GRACE seconds, or at
        once when guests wait; hand it to a caller that asks."""
        asyncio.set_event_loop(self._loop)
        me = _get_ident()
        try:
            while self._take_as_keeper(me):
                self._loop.run_forever()
                with self._mutex:
                    ask, self._ask = self._ask, None
                    if ask is not None and not self._stopped:
                        self._owner = ask.ident  # the caller holds it from now on
                        ask.granted = True
                    else:
                        self._owner = None
                        self._released_at = 0.0  # a stale stop: run again at once
                    if ask is not None:
                        ask.lock.release()
        finally:
            self._loop.close()
            self._closed.set()

    def _take_as_keeper(self, me: int) -> bool:
        with self._mutex:
            while True:
                if self._owner is None:
                    if self._stopped:
                        return False
                    idle = _monotonic() - self._released_at
                    if self._guests or idle >= GRACE:
                        self._owner = me
                        return True
                    self._keeper_wake.wait(GRACE - idle)
                else:
                    self._keeper_wake.wait(GRACE)

    def _acquire(self, deadline: float | None) -> bool:
        """Hold the loop: True when this thread may run it now; False when another
        thread runs it (the caller is then a guest, counted until :meth:`_leave`)."""
        me = _get_ident()
        with self._mutex:
            if self._stopped:
                raise ConnectionClosed("the event loop thread has stopped")
            owner = self._owner
            if owner is None:
                self._owner = me
                return True
            if owner != self._keeper_id or self._guests or self._ask is not None:
                self._guests += 1
                return False
            ask = self._ask = _Ask(me)
        # the keeper runs an otherwise idle loop: ask for it (it stops, then hands over)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        left = None if deadline is None else max(deadline - _monotonic(), 0.0)
        if not ask.lock.acquire(True, -1 if left is None else left):
            with self._mutex:
                if self._ask is ask:  # not handed over: give up asking, be a guest
                    self._ask = None
                    self._guests += 1
                    return False
            ask.lock.acquire()  # handed over just as the wait ended
        if not ask.granted:
            raise ConnectionClosed("the event loop thread has stopped")
        return True

    def _release(self) -> None:
        with self._mutex:
            self._owner = None
            self._released_at = _monotonic()
            if self._guests or self._stopped:
                self._keeper_wake.notify()

    def _leave(self) -> None:
        """A guest is done waiting."""
        with self._mutex:
            self._guests -= 1

    def _run(self, deadline: float | None) -> _SignalGuard | None:
        """Run the held loop until something stops it (or the deadline passes); in the
        main thread, a signal stops it too, and its guard is returned to deliver it."""
        loop = self._loop
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(deadline - _monotonic(), 0.0), loop.stop)
        try:
            if _get_ident() != _MAIN:
                loop.run_forever()
                return None
            guard = _SignalGuard(loop)
            guard.install()
            try:
                loop.run_forever()
            finally:
                guard.restore()
            return guard if guard.caught else None
        finally:
            if timer is not None:
                timer.cancel()

    def _until(self, target: Target, deadline: float | None,
               start: Callable[[bool], None] | None = None) -> bool:
        """Block until ``target`` is done or the deadline passes (False then): run the
        loop here while nobody else does, else wait as a guest of the thread that does.
        ``start(here)`` is called once, holding the loop (True) or as a guest (False)."""
        loop = self._loop
        started = start is None
        while not target.done():
            left = None if deadline is None else deadline - _monotonic()
            if left is not None and left <= 0:
                return False
            if not self._acquire(deadline):
                try:
                    if not started:
                        started = True
                        start(False)  # type: ignore[misc]
                    target.block(left)
                finally:
                    self._leave()
                continue
            guard = None
            try:
                if not started:
                    started = True
                    start(True)  # type: ignore[misc]
                target.arm(loop)
                while not target.done():
                    guard = self._run(deadline)
                    if guard is not None or (
                            deadline is not None and _monotonic() >= deadline):
                        break
            finally:
                target.disarm()
                self._release()
            if guard is not None:
                guard.deliver()  # in the caller's frame: Ctrl-C raises here
        return True

    # -- calls ---------------------------------------------------------------------------

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

        The hot path of every blocking API. When nobody else runs the loop, this thread
        runs it until the call is done (no thread hop); otherwise the call is handed to
        the run in progress and the caller waits on a plain lock. A call that times out
        (or is interrupted) cancels its task.
        """
        running = _get_running_loop()
        if running is self._loop:
            self.check_thread()
        deadline = None if timeout is None else _monotonic() + max(timeout, 0.0)
        call = _Call(fn, args)
        if running is not None:  # a thread running a loop of its own: hand the call over
            self._start_there(call)
            finished = self._wait_there(call, deadline)
        else:
            loop = self._loop

            def start(here: bool) -> None:
                if here:
                    call.start(loop)
                else:
                    self._start_there(call)

            try:
                finished = self._until(call, deadline, start)
            except BaseException:  # interrupted (Ctrl-C): don't leave the task running
                self._cancel(call)
                raise
        if not finished:
            self._cancel(call)
            raise DeliveryTimeout(f"the call did not finish within {timeout:g} s")
        result: T = call.outcome()
        return result

    def _start_there(self, call: _Call) -> None:
        try:
            self._loop.call_soon_threadsafe(call.start, self._loop)
        except RuntimeError:  # the loop is closed
            raise ConnectionClosed("the event loop thread has stopped") from None

    def _wait_there(self, call: _Call, deadline: float | None) -> bool:
        left = None if deadline is None else max(deadline - _monotonic(), 0.0)
        try:
            call.block(left)
        except BaseException:
            self._cancel(call)
            raise
        return call.done()

    def _cancel(self, call: _Call) -> None:
        if call.finished:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop runs nothing anyway
            self._loop.call_soon_threadsafe(call.cancel)

    def wait(self, target: Target, timeout: float | None = None) -> bool:
        """Block until ``target`` (completed on the loop) is done, running the loop in
        this thread when nobody else does; False if ``timeout`` s passed first."""
        if target.done():
            return True
        running = _get_running_loop()
        if running is self._loop:
            self.check_thread()
        if running is not None:
            target.block(timeout)
            return target.done()
        return self._until(target, None if timeout is None else _monotonic() + timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callback on the loop."""
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 5.0) -> None:
        with self._mutex:
            if self._stopped:
                return
            self._stopped = True
            self._keeper_wake.notify()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        if _get_running_loop() is self._loop:
            return
        self._closed.wait(timeout)


_default: BlockingPortal | None = None
_default_lock = threading.Lock()


def default_portal() -> BlockingPortal:
    """The process-wide portal shared by blocking API objects, started on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._stopped:
            _default = BlockingPortal()
        return _default
