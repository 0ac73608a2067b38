"""No handler starts for a delivery whose channel was lost: cut the connection while
plain-function handlers wait for one of 4 worker threads, and count the handlers run twice.

Before a cut, 100 messages are delivered (prefetch 100) and wait for the 4 threads; after
it, the broker delivers again every one not acked. Only the handlers already running at
the cut (at most 4) may run a second time.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from postage import AsyncClient
from postage._api.communicator import open_communicator
from postage._core.core import open_core
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

COUNT, WORKERS, PREFETCH, WORK = 100, 4, 100, 0.2


class Calls:
    """Handler calls per message, from worker threads."""

    def __init__(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def handle(self, i: int) -> None:
        with self._lock:
            self.counts[i] += 1
        time.sleep(WORK)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


async def _consume_with(api: str, url: str, queue: str, calls: Calls
                        ) -> Callable[[], Any]:
    """Start consuming ``queue`` through ``api``; returns how to close it."""
    if api == "client":
        client = AsyncClient(url, max_workers=WORKERS, reconnect_delay=0.05)
        await client.open()
        await client.receive("", "", queue, lambda body: calls.handle(int(body)),
                             prefetch_count=PREFETCH, durable=True)
        return client.close
    comm = await open_communicator(url, max_workers=WORKERS, reconnect_delay=0.05)
    tasks = await comm.task_queue(queue, prefetch_count=PREFETCH)
    await tasks.add_task_subscriber(lambda _comm, body: calls.handle(int(body)))
    return comm.close


@pytest.mark.parametrize("api", ["client", "communicator"])
async def test_no_handler_starts_for_a_delivery_its_channel_lost(
        fault_broker: Broker, proxy: TcpProxy, api: str) -> None:
    queue = f"fault.withdrawn.{uuid.uuid4().hex[:8]}"
    calls = Calls()
    sender = await open_communicator(fault_broker.url) if api == "communicator" else None
    core = await open_core(fault_broker.url)
    close = None
    try:
        if sender is not None:  # the communicator's own task format
            sending = await sender.task_queue(queue)
            for i in range(COUNT):
                await sending.task_send(i, no_reply=True)
        else:
            await core.declare_queue(queue, durable=True, auto_delete=False)
            for i in range(COUNT):
                await core.publish("", queue, str(i).encode())
        close = await _consume_with(api, proxy.url(fault_broker.url), queue, calls)
        async with asyncio.timeout(30):
            while calls.total < 2 * WORKERS:
                await asyncio.sleep(0.01)
        proxy.cut()
        at_cut = calls.total
        async with asyncio.timeout(60):
            while len(calls.counts) < COUNT:
                await asyncio.sleep(0.05)
        await asyncio.sleep(3 * WORK)  # a second run of the last ones would show now
    finally:
        if close is not None:
            await close()
        if sender is not None:
            await sender.close(2)
        await core.delete_queue(queue)
        await core.close(2)
    twice = sum(n - 1 for n in calls.counts.values())
    print(f"\n{api}: {COUNT} messages, {WORKERS} worker threads, prefetch {PREFETCH}, cut "
          f"after {at_cut} handler calls: {calls.total} calls, {len(calls.counts)} distinct, "
          f"run twice {twice}")
    assert twice <= WORKERS
