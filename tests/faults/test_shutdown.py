"""Graceful shutdown: SIGTERM while a worker handles a slow task.

The worker (``tests/faults/sigterm_worker.py``, a real process) must let the task finish,
ack it (so it is neither requeued nor dead-lettered, never delivered twice) and exit 0
within the shutdown timeout. Classic programs get this from ``MicroScheduler.main()``;
communicator programs opt in with ``Communicator.run_until_signal()``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from postage import messaging
from postage._api.communicator import open_communicator
from postage._core.core import open_core
from tests.conftest import Broker
from tests.faults.scenario import Figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
TASK_SECONDS = 3.0


async def _line(stream: asyncio.StreamReader, timeout: float) -> str:
    raw = await asyncio.wait_for(stream.readline(), timeout)
    return raw.decode().strip()


@pytest.mark.parametrize("api", ["classic", "communicator"])
async def test_sigterm_mid_task_finishes_acks_and_exits_0(
    fault_broker: Broker, figures_log: list[Figures], api: str
) -> None:
    queue = f"fault.sigterm.{uuid.uuid4().hex[:8]}"
    url = fault_broker.url
    env = {**os.environ, "POSTAGE_URL": url, "PYTHONPATH": str(ROOT)}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.sigterm_worker", api, url, queue,
        str(TASK_SECONDS), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert worker.stdout is not None and worker.stderr is not None
    core = await open_core(url)
    fig = Figures("SIGTERM mid-task", api)
    try:
        assert await _line(worker.stdout, 30) == "ready"
        if api == "classic":
            body = messaging.MessageCommand("slow", 7).body
            await core.publish("", queue, core.encode(body), core.properties(delivery_mode=2))
        else:
            sender = await open_communicator(url)
            try:
                await (await sender.task_queue(queue)).task_send(7, no_reply=True)
            finally:
                await sender.close(5)
        fig.sent = fig.confirmed = 1
        assert await _line(worker.stdout, 20) == "started 7"
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(worker.wait(), TASK_SECONDS + 20)
        took = time.monotonic() - signalled
        rest = (await worker.stdout.read()).decode()
        errors = (await worker.stderr.read()).decode()
        assert code == 0, f"exit code {code}\n{rest}\n{errors}"
        assert "done 7" in rest, f"the task did not finish:\n{rest}\n{errors}"
        assert "started" not in rest, "the task was delivered again"
        fig.delivered = 1
        # acked: nothing was requeued (the connection is closed, so an unacked message
        # would be ready again) and nothing was dead-lettered
        ready, consumers = await core.transport.queue_state(queue)
        dlq_ready, _ = await core.transport.queue_state(f"{queue}.dlq")
        fig.duplicates = ready
        fig.lost = dlq_ready
        fig.recovery_s = [took]
        fig.seconds = took
        fig.notes = f"SIGTERM -> exit {code} in {took:.2f} s; task finished and acked"
        figures_log.append(fig)
        print("\n" + fig.line())
        assert (ready, consumers, dlq_ready) == (0, 0, 0)
        assert took < TASK_SECONDS + 15
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await core.transport.delete_queue(queue)
        await core.transport.delete_queue(f"{queue}.dlq")
        await core.close(2)
