"""A stream of confirmed messages through a fault, and the figures that tell what happened."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from postage import PostageError, Properties
from postage._core.core import Core
from postage._transport import Delivery


@dataclass
class Figures:
    scenario: str
    api: str = "core"
    sent: int = 0
    confirmed: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    publish_errors: int = 0
    faults: int = 0
    recovery_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recovery_s"] = [round(x, 2) for x in self.recovery_s]
        d["seconds"] = round(self.seconds, 2)
        return d

    def line(self) -> str:
        rec = "/".join(f"{x:.2f}" for x in self.recovery_s) or "-"
        return (f"{self.scenario} [{self.api}]: sent {self.sent}, confirmed {self.confirmed}, "
                f"delivered {self.delivered}, lost {self.lost}, duplicates {self.duplicates}, "
                f"publish errors {self.publish_errors}, faults {self.faults}, recovery s {rec}, "
                f"total {self.seconds:.1f} s" + (f"; {self.notes}" if self.notes else ""))


async def stream_through_faults(
    scenario: str,
    publisher: Core,
    consumer: Core,
    queue: str,
    *,
    count: int,
    fault: Callable[[], Awaitable[None]],
    fault_after: tuple[int, ...],
    concurrency: int = 64,
    deadline: float = 120.0,
) -> Figures:
    """Publish ``count`` persistent messages to ``queue`` (default exchange) with the core,
    run ``fault`` when the confirmed count passes each of ``fault_after``, consume them all
    with the core, count (see :func:`drive_stream`)."""
    tally = Tally()

    async def handle(d: Delivery) -> None:
        tally.record(int(d.body))

    props = Properties(delivery_mode=2)

    async def send(i: int) -> None:
        await publisher.publish("", queue, str(i).encode(), props, timeout=deadline)

    sub = await consumer.subscribe(queue, handle, prefetch_count=200)
    try:
        return await drive_stream(
            scenario, "core", send, tally, count=count, fault=fault,
            fault_after=fault_after, concurrency=concurrency, deadline=deadline,
        )
    finally:
        await sub.cancel()


class Tally:
    """Thread-safe count of received message numbers (handlers of the blocking APIs run in
    worker threads); ``all_in`` is set once every number in ``expect()`` has arrived."""

    def __init__(self) -> None:
        self.seen: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self._missing: set[int] | None = None
        self.all_in = threading.Event()

    def record(self, number: int) -> None:
        with self._lock:
            self.seen[number] += 1
            if self._missing is not None:
                self._missing.discard(number)
                if not self._missing:
                    self.all_in.set()

    def expect(self, numbers: set[int]) -> None:
        with self._lock:
            self._missing = set(numbers) - set(self.seen)
            if not self._missing:
                self.all_in.set()

    async def wait(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.all_in.wait, timeout)


async def drive_stream(
    scenario: str,
    api: str,
    send: Callable[[int], Awaitable[None]],
    tally: Tally,
    *,
    count: int,
    fault: Callable[[], Awaitable[None]],
    fault_after: tuple[int, ...],
    concurrency: int = 32,
    deadline: float = 40.0,
) -> Figures:
    """Like :func:`stream_through_faults`, through any API: ``send(i)`` returns once message
    ``i`` is confirmed (a PostageError counts as a publish error); the API's receiving
    side calls ``tally.record(i)``. Faults run when the confirmed count passes each of
    ``fault_after``; sends not yet started wait while a fault is being injected (those in
    flight cross it), so a fault that takes a while to inject, such as a ``rabbitmqctl``
    call, still lands mid-stream however fast the stream is. The figures are counted once
    every confirmed number has arrived (or ``deadline`` has passed)."""
    fig = Figures(scenario, api)
    confirmed: set[int] = set()
    start = time.perf_counter()
    stop_at = start + deadline
    fault_times: list[float] = []
    recovered_after: list[float] = []
    pending_faults = sorted(fault_after)
    fault_lock = asyncio.Lock()
    quiet = asyncio.Event()  # cleared while a fault is being injected
    quiet.set()
    sem = asyncio.Semaphore(concurrency)

    async def maybe_fault() -> None:
        async with fault_lock:
            while pending_faults and len(confirmed) >= pending_faults[0]:
                pending_faults.pop(0)
                fig.faults += 1
                quiet.clear()
                try:
                    await fault()
                finally:
                    quiet.set()
                fault_times.append(time.perf_counter())

    async def one(i: int) -> None:
        async with sem:
            await quiet.wait()
            if time.perf_counter() > stop_at:
                return  # out of time: not sent
            fig.sent += 1
            sent_at = time.perf_counter()
            try:
                await send(i)
            except PostageError:
                fig.publish_errors += 1
                return
            confirmed.add(i)
            k = len(recovered_after)
            if k < len(fault_times) and sent_at > fault_times[k]:
                recovered_after.append(time.perf_counter() - fault_times[k])
        await maybe_fault()

    await asyncio.gather(*(one(i) for i in range(count)))
    tally.expect(confirmed)
    await tally.wait(max(1.0, stop_at - time.perf_counter()))
    fig.seconds = time.perf_counter() - start
    fig.confirmed = len(confirmed)
    seen = dict(tally.seen)
    fig.delivered = len(seen)
    fig.lost = len(confirmed - set(seen))
    fig.duplicates = sum(n - 1 for n in seen.values())
    fig.recovery_s = recovered_after
    return fig


def waiting_in_levels(listing: str, prefix: str) -> int:
    """Messages in the delay level queues named ``prefix*.queue``, read from the output of
    ``rabbitmqctl list_queues name messages``."""
    total = 0
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(prefix) and parts[0].endswith(".queue"):
            total += int(parts[1])
    return total
