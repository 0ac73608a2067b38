"""Time for the memory broker: when messages expire (TTL) and their delays end.

:class:`SystemClock` follows ``time.monotonic()`` and runs due callbacks on one daemon
thread. :class:`ManualClock` moves only when a test calls :meth:`ManualClock.advance`, which
runs the callbacks that came due, in order, in the caller's thread: a test of retries and
delays then takes no time at all.
"""

from __future__ import annotations

__all__ = ["Clock", "ManualClock", "SystemClock"]

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

Callback = Callable[[], None]
log = logging.getLogger("postage.memory")


class Clock(Protocol):
    """What the memory broker needs of a clock."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def call_at(self, when: float, callback: Callback) -> None:
        """Run ``callback`` once ``now()`` has reached ``when`` (from any thread)."""
        ...


class _Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callback]] = []
        self._order = itertools.count()

    def push(self, when: float, callback: Callback) -> None:
        heapq.heappush(self._heap, (when, next(self._order), callback))

    def pop_due(self, now: float) -> Callback | None:
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None


class SystemClock:
    """The real time; callbacks run on a daemon thread started on first use."""

    def __init__(self) -> None:
        self._timers = _Timers()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callback) -> None:
        with self._changed:
            self._timers.push(when, callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="postage-memory-clock",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                callback = self._timers.pop_due(time.monotonic())
                if callback is None:
                    when = self._timers.next_time()
                    self._changed.wait(None if when is None else max(0.0, when - time.monotonic()))
                    continue
            try:
                callback()
            except Exception:
                log.exception("memory broker timer failed")


class ManualClock:
    """A clock that moves only by :meth:`advance` (for tests that must not sleep)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers = _Timers()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callback) -> None:
        with self._lock:
            self._timers.push(when, callback)

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``, running what comes due on the way, in order."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._now + seconds
        while True:
            with self._lock:
                when = self._timers.next_time()
                if when is None or when > target:
                    break
                self._now = max(self._now, when)
                callback = self._timers.pop_due(self._now)
            if callback is not None:
                callback()
        self._now = target
