"""postage.kiwipy's memory is bounded by default: 100,000 queued 10 KiB tasks and a task
subscriber that takes 1 s each. The worker runs in a process of its own, whose peak RSS
is measured (kiwiPy's default, no prefetch limit, took every task into memory)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from postage.kiwipy import rmq
from postage.kiwipy.rmq import defaults
from tests.conftest import Broker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TASKS, SIZE = 100_000, 10 * 1024


async def _fill(url: str, queue: str) -> None:
    comm = await rmq.async_connect(connection_params=url, task_queue=queue)
    try:
        body = "x" * SIZE
        window = asyncio.Semaphore(256)

        async def send(i: int) -> None:
            async with window:
                await comm.task_send({"i": i, "data": body}, no_reply=True)

        await asyncio.gather(*(send(i) for i in range(TASKS)))
    finally:
        await comm.disconnect()


def _run_worker(url: str, queue: str, seconds: float, *prefetch: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.faults.kiwipy_slow_worker", url, queue, str(seconds),
         *prefetch], capture_output=True, text=True, timeout=seconds + 60, check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def test_a_slow_task_subscriber_holds_a_bounded_number_of_tasks(
        fault_broker: Broker) -> None:
    queue = f"fault.kiwipy-memory.{uuid.uuid4().hex[:8]}"
    await _fill(fault_broker.url, queue)
    try:
        figures = await asyncio.to_thread(_run_worker, fault_broker.url, queue, 15.0)
        if os.environ.get("POSTAGE_KIWIPY_UNBOUNDED"):  # kiwiPy's default, for the record
            unbounded = await asyncio.to_thread(_run_worker, fault_broker.url, queue, 15.0,
                                                "0")
            print(f"\nwith task_prefetch_count=0 (kiwiPy's default): {unbounded}")
    finally:
        core_comm = await rmq.async_connect(connection_params=fault_broker.url)
        await core_comm.core.delete_queue(queue)
        await core_comm.disconnect()
    print(f"\npostage.kiwipy worker, {TASKS:,} queued tasks of {SIZE // 1024} KiB, a 1 s "
          f"subscriber, default prefetch, 15 s: peak RSS {figures['rss_mib']:.0f} MiB, "
          f"{figures['threads']:.0f} threads, {figures['started']:.0f} tasks started")
    assert figures["rss_mib"] < 150
    assert figures["threads"] <= defaults.TASK_PREFETCH_COUNT + 16
