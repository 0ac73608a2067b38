"""Reliability of the one message path, against a real broker and real processes.

* a handler that kills its own process every time: the message ends in ``<queue>.dlq``
  after a bounded number of deliveries, on classic queues too, and the queue behind it
  drains (the broker alone would redeliver it forever);
* a handler that never returns does not keep its process alive after ``close(timeout=2)``;
  a second Ctrl-C stops a classic program that waits for such a handler;
* ``AsyncClient.receive`` holds a bounded number of messages: a long backlog does not
  fill the consumer's memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from postage import DeliveryTimeout, messaging
from postage._api.communicator import open_communicator
from postage._core.core import HEADER_REASON, HEADER_REDELIVERIES, open_core
from tests.conftest import Broker
from tests.drain import drain
from tests.faults.scenario import Figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
MAX_REDELIVERIES = 5  # RetryPolicy's default


async def _start(mode: str, api: str, url: str, queue: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "POSTAGE_URL": url, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.pipeline_worker", mode, api, url, queue,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    return raw.decode().strip()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("api", ["classic", "communicator"])
async def test_a_handler_that_kills_its_process_ends_in_the_dlq(
    fault_broker: Broker, figures_log: list[Figures], api: str
) -> None:
    queue = f"fault.poison.{uuid.uuid4().hex[:8]}"
    url = fault_broker.url
    core = await open_core(url)
    fig = Figures("handler kills its process", api)
    deaths, oks, started = 0, set[str](), time.monotonic()
    try:
        for _run in range(MAX_REDELIVERIES + 4):
            worker = await _start("crash", api, url, queue)
            ready = False
            try:
                while True:
                    try:
                        line = await _line(worker, 4 if ready else 30)
                    except TimeoutError:
                        break  # nothing more for this worker: the poison is gone
                    if line == "ready":
                        ready = True
                        if _run == 0:
                            await _send(core, url, api, queue, ["poison", "ok1", "ok2", "ok3"])
                    elif line.startswith("ok "):
                        oks.add(line[3:])
                    elif line == "poison" or not line:
                        code = await asyncio.wait_for(worker.wait(), 10)
                        assert code != 0
                        deaths += 1
                        break
            finally:
                await _stop(worker)
            dead, _ = await core.queue_state(f"{queue}.dlq")
            if dead and oks == {"ok1", "ok2", "ok3"}:
                break
        took = time.monotonic() - started
        [letter] = await drain(core, f"{queue}.dlq", 1)
        fig.sent = fig.confirmed = 4
        fig.delivered = len(oks)
        fig.seconds = took
        fig.notes = (f"poison killed {deaths} worker processes, then went to .dlq "
                     f"(reason {letter.headers.get(HEADER_REASON)}); the 3 messages "
                     f"behind it were handled; {took:.1f} s")
        figures_log.append(fig)
        print("\n" + fig.line())
        assert oks == {"ok1", "ok2", "ok3"}
        assert deaths == MAX_REDELIVERIES + 1  # the first delivery and 5 redeliveries
        assert letter.headers[HEADER_REASON] == "redelivered"
        assert letter.headers[HEADER_REDELIVERIES] == MAX_REDELIVERIES
        assert (await core.queue_state(queue))[0] == 0
    finally:
        for name in (queue, f"{queue}.dlq"):
            await core.delete_queue(name)
        await core.close(2)


async def _send(core: Any, url: str, api: str, queue: str, bodies: list[str]) -> None:
    if api == "classic":
        for body in bodies:
            envelope = messaging.MessageCommand("work", body).body
            await core.publish(f"{queue}.ex", queue, core.encode(envelope),
                               core.properties(delivery_mode=2))
        return
    sender = await open_communicator(url)
    try:
        tasks = await sender.task_queue(queue)
        for body in bodies:
            await tasks.task_send(body, no_reply=True)
    finally:
        await sender.close(5)


async def test_a_handler_that_never_returns_does_not_keep_the_process_alive(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    queue = f"fault.hang.{uuid.uuid4().hex[:8]}"
    url = fault_broker.url
    core = await open_core(url)
    worker = await _start("hang", "communicator", url, queue)
    try:
        assert await _line(worker, 30) == "ready"
        await _send(core, url, "communicator", queue, ["forever"])
        assert await _line(worker, 20) == "started"
        assert await _line(worker, 5) == "closing"
        closing = time.monotonic()
        code = await asyncio.wait_for(worker.wait(), 30)
        took = time.monotonic() - closing
        fig = Figures("handler never returns", "communicator")
        fig.seconds = took
        fig.notes = f"close(timeout=2) then exit {code} in {took:.1f} s"
        figures_log.append(fig)
        print("\n" + fig.line())
        assert code == 0
        assert took < 5.0
    finally:
        await _stop(worker)
        for name in (queue, f"{queue}.dlq"):
            await core.delete_queue(name)
        await core.close(2)


async def test_a_second_ctrl_c_stops_a_classic_program_waiting_for_a_handler(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    queue = f"fault.interrupt.{uuid.uuid4().hex[:8]}"
    url = fault_broker.url
    core = await open_core(url)
    worker = await _start("interrupt", "classic", url, queue)
    try:
        assert await _line(worker, 30) == "ready"
        await _send(core, url, "classic", queue, ["forever"])
        assert await _line(worker, 20) == "started"
        worker.send_signal(signal.SIGINT)  # first: stop consuming, wait for the handler
        await asyncio.sleep(1.0)
        assert worker.returncode is None  # still waiting for the handler, as it should
        second = time.monotonic()
        worker.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(worker.wait(), 30)
        took = time.monotonic() - second
        fig = Figures("second Ctrl-C", "classic")
        fig.seconds = took
        fig.notes = f"exit {code} {took:.1f} s after the second SIGINT"
        figures_log.append(fig)
        print("\n" + fig.line())
        assert took < 8.0
    finally:
        await _stop(worker)
        for name in (queue, f"{queue}.dlq"):
            await core.delete_queue(name)
        await core.close(2)


RSS_CHILD = """
import asyncio, sys, postage

async def main(url, queue):
    async with postage.AsyncClient(url) as client:
        got = []

        async def slow(body):
            got.append(1)
            await asyncio.sleep(0.01)

        await client.receive("", "", queue, slow, durable=True)
        await asyncio.sleep(4)
        rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
        print(int(rss.split()[1]) // 1024, len(got), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_async_client_receive_holds_a_bounded_number_of_messages(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    queue = f"fault.backlog.{uuid.uuid4().hex[:8]}"
    url = fault_broker.url
    core = await open_core(url)
    try:
        await core.declare_queue(queue, durable=True)
        body = b"x" * 1024
        window = 500
        for _batch in range(50_000 // window):
            await asyncio.gather(*(core.publish("", queue, body) for _ in range(window)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RSS_CHILD, url, queue, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        rss_mib, handled = (int(v) for v in out.split())
        fig = Figures("50,000 queued 1 KiB messages", "AsyncClient.receive")
        fig.delivered = handled
        fig.notes = f"consumer RSS {rss_mib} MiB after 4 s ({handled} handled)"
        figures_log.append(fig)
        print("\n" + fig.line())
        assert handled > 0
        assert rss_mib < 80
    finally:
        for name in (queue, f"{queue}.dlq"):
            await core.delete_queue(name)
        await core.close(2)


async def test_a_memory_alarm_fails_each_send_at_its_deadline_and_says_why(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    """Under a broker alarm (``connection.blocked``) each send fails at its own
    ``publish_timeout`` with an error naming the alarm; once it lifts, the first RPC works
    (a reply consumer started late is not started twice)."""
    url = fault_broker.url
    queue = f"fault.alarm.{uuid.uuid4().hex[:8]}"
    ident = f"fault.alarm.{uuid.uuid4().hex[:8]}"
    server = await open_communicator(url)
    comm = await open_communicator(url, publish_timeout=2.0)
    fig = Figures("memory alarm", "communicator")
    try:
        await server.add_rpc_subscriber(lambda _c, n: n + 1, ident)
        tasks = await comm.task_queue(queue)
        await asyncio.to_thread(fault_broker.ctl, "set_vm_memory_high_watermark", "0")
        try:
            started = time.monotonic()
            with pytest.raises(DeliveryTimeout) as sent:
                await tasks.task_send(1, no_reply=True)
            send_s = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(DeliveryTimeout) as called:
                await comm.rpc_send(ident, 1)
            rpc_s = time.monotonic() - started
        finally:
            await asyncio.to_thread(fault_broker.ctl, "set_vm_memory_high_watermark", "0.4")
        deadline = time.monotonic() + 20
        while comm.core.transport.blocked_reason is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        after = await asyncio.wait_for(await comm.rpc_send(ident, 1), 20)
        # the send that timed out was written to the connection: it arrives now
        late = 0
        while late == 0 and time.monotonic() < deadline:
            late = (await comm.core.queue_state(queue))[0]
            await asyncio.sleep(0.1)
        fig.seconds = send_s
        fig.notes = (f"task_send failed in {send_s:.1f} s, rpc_send in {rpc_s:.1f} s "
                     f"(publish_timeout 2 s): {sent.value}; first RPC after: {after}; the "
                     f"timed-out task delivered after the alarm: {late}")
        figures_log.append(fig)
        print("\n" + fig.line())
        for error in (sent.value, called.value):
            assert "blocked" in str(error) and "memory" in str(error), error
        assert "may still be delivered" in str(sent.value)
        assert 1.5 < send_s < 4.5 and 1.5 < rpc_s < 4.5
        assert after == 2 and late == 1
    finally:
        await comm.close(5)
        await server.close(5)
        core = await open_core(url)
        for name in (queue, f"{queue}.dlq"):
            await core.delete_queue(name)
        await core.close(2)
