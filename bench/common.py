"""Helpers shared by the workloads: the case context, bounded loops, statistics, RSS.

Kept free of heavy imports on purpose: the memory workloads measure the RSS of a process
that imported this module, so only the standard library is imported at module level.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

BODY = b"x" * 100
PAYLOAD = "x" * 100  # for the APIs that take objects (envelope adds ~150 bytes around it)


class BenchError(Exception):
    """A workload could not run (not an error in the library under test)."""


@dataclass
class Ctx:
    """What one repetition of a case gets: the broker, its counts and its deadline."""

    url: str
    n: int
    window: int
    quick: bool
    deadline: float  # time.monotonic() value
    params: dict[str, Any] = field(default_factory=dict)
    prefix: str = "bench"

    def name(self, what: str) -> str:
        """A unique queue/exchange name; announced so the parent deletes it even after a kill."""
        name = f"{self.prefix}.{what}.{uuid.uuid4().hex[:8]}"
        print(f"QUEUE {name}", flush=True)
        return name

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the case ran past its deadline")
        return left

    def check(self) -> None:
        self.remaining()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank on sorted data."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))
    return data[k]


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MiB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError("no VmRSS in /proc (not Linux?)")


async def windowed(n: int, window: int, op: Callable[[int], Awaitable[Any]], ctx: Ctx) -> float:
    """Run ``op(i)`` for i < n with ``window`` in flight (one worker coroutine per slot);
    return the elapsed seconds. Bounded by the case's deadline."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await op(i)

    start = time.perf_counter()
    workers = [worker() for _ in range(min(window, n))]
    await asyncio.wait_for(asyncio.gather(*workers), ctx.remaining())
    return time.perf_counter() - start


async def sequential_latencies(
    n: int, op: Callable[[int], Awaitable[Any]], ctx: Ctx
) -> list[float]:
    """Latencies in ms of ``n`` awaited calls of ``op``, one after the other."""
    out: list[float] = []
    perf = time.perf_counter
    for i in range(n):
        if i % 64 == 0:
            ctx.check()
        t = perf()
        await asyncio.wait_for(op(i), 10.0)
        out.append((perf() - t) * 1000)
    return out


def warmup_count(ctx: Ctx) -> int:
    return max(20, min(500, ctx.n // 10))


async def rpc_workload(ctx: Ctx, window: int, op: Callable[[int], Awaitable[Any]]
                       ) -> dict[str, float]:
    """Warm up, then the p50/p99 latency of sequential calls of ``op`` (``window`` 1) or
    its rate with ``window`` calls in flight."""
    await windowed(warmup_count(ctx), window, op, ctx)
    if window == 1:
        return latency_result(await sequential_latencies(ctx.n, op, ctx))
    elapsed = await windowed(ctx.n, window, op, ctx)
    return {"rate": ctx.n / elapsed}


class Arrivals:
    """End-to-end timing: ``hit()`` from the handler of each message; :meth:`rate` sends
    a warm-up batch, then ``ctx.n`` messages with ``ctx.window`` in flight, and returns
    messages per second until the last one was handled."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    async def _run(self, ctx: Ctx, n: int, send: Callable[[int], Awaitable[Any]]) -> float:
        self.count, self.target = 0, n
        self.done.clear()
        start = time.perf_counter()
        await windowed(n, ctx.window, send, ctx)
        await asyncio.wait_for(self.done.wait(), ctx.remaining())
        return time.perf_counter() - start

    async def rate(self, ctx: Ctx, send: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
        await self._run(ctx, warmup_count(ctx), send)
        return {"rate": ctx.n / await self._run(ctx, ctx.n, send)}


def latency_result(lat: list[float]) -> dict[str, float]:
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "rate": 1000 * len(lat) / sum(lat) if lat else 0.0}


def wait_event(ev: Any, ctx: Ctx, what: str) -> None:
    """Wait for a threading.Event within the case's deadline."""
    if not ev.wait(ctx.remaining()):
        raise TimeoutError(f"timed out waiting for {what}")


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop async workloads run on: uvloop when installed (for every library alike),
    unless BENCH_LOOP=asyncio."""
    if os.environ.get("BENCH_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def run_async(coro: Awaitable[Any]) -> Any:
    loop = new_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
