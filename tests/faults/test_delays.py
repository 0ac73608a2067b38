"""Retries with back-off, delayed messages across a broker restart, and a dead-letter
replay killed with ``kill -9``, against a real broker of their own. Each prints its figures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid

import pytest

from postage import PostageError, RetryPolicy, dlq
from postage._core.core import Core, HandlingOptions, open_core
from postage._core.middleware import IncomingMessage
from postage._wire.properties import Properties
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import waiting_in_levels

pytestmark = pytest.mark.slow


async def _cleanup(url: str, *queues: str) -> None:
    core = await open_core(url)
    try:
        for queue in queues:
            await core.delete_queue(queue)
    finally:
        await core.close(2)


async def test_a_handler_failing_twice_is_retried_with_back_off(fault_broker: Broker) -> None:
    queue = f"fault.backoff.{uuid.uuid4().hex[:8]}"
    core = await open_core(fault_broker.url)
    tries: list[float] = []
    done = asyncio.Event()

    async def flaky(_message: IncomingMessage) -> None:
        tries.append(time.monotonic())
        if len(tries) <= 2:
            raise ConnectionRefusedError("the database is down")
        done.set()

    try:
        await core.declare_queue(queue, durable=True)
        policy = RetryPolicy(max_attempts=5, delay=1.0, multiplier=2.0, jitter=0)
        await core.consume(queue, flaky, HandlingOptions(policy))
        await core.publish("", queue, b"job")
        async with asyncio.timeout(20):
            await done.wait()
    finally:
        await core.close(2)
        await _cleanup(fault_broker.url, queue, f"{queue}.dlq")
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    print(f"\nback-off 1 s x2: attempts {len(tries)}, measured delays "
          + ", ".join(f"{g:.3f} s" for g in gaps))
    assert len(tries) == 3
    assert 1.0 <= gaps[0] <= 1.1 and 2.0 <= gaps[1] <= 2.1, gaps


async def test_retries_keep_their_accounting_while_the_delay_path_is_down(
        fault_broker: Broker) -> None:
    """The delay levels' entry exchange is deleted on the broker while a handler fails:
    each back-off copy is refused (NOT_FOUND), the message is handed back, and its next
    delivery is its next attempt, not a crash; it ends in ``.dlq`` with the real error."""
    queue = f"fault.delay-down.{uuid.uuid4().hex[:8]}"
    core = await open_core(fault_broker.url)
    admin = await open_core(fault_broker.url)
    calls: list[int] = []

    async def failing(message: IncomingMessage) -> None:
        calls.append(message.attempt)
        raise ConnectionRefusedError(f"the database is down (try {message.attempt})")

    try:
        await core.declare_queue(queue, durable=True)
        policy = RetryPolicy(max_attempts=4, delay=0.5, max_redeliveries=2)
        await core.consume(queue, failing, HandlingOptions(policy))
        names = core.outbound.delays.names
        await admin.transport.delete_exchange(names.entry)  # the delay path is down
        await core.publish("", queue, b"job")
        async with asyncio.timeout(30):
            while (await admin.queue_state(f"{queue}.dlq"))[0] < 1:
                await asyncio.sleep(0.1)
        letter = await admin.get(f"{queue}.dlq")
        assert letter is not None
        await letter.ack()
    finally:
        await core.close(2)
        await admin.close(2)
        restore = await open_core(fault_broker.url)  # the levels, for the tests after
        try:
            await restore.outbound.delays.prepare(queue)
        finally:
            await restore.close(2)
        await _cleanup(fault_broker.url, queue, f"{queue}.dlq")
    headers = letter.headers
    print(f"\ndelay path down (entry exchange deleted), max_attempts 4: handler calls "
          f"{calls}, dead-lettered as {headers['x-postage-reason']!r} after "
          f"{headers['x-postage-attempts']} attempts: {headers['x-postage-error']}")
    assert calls == [1, 2, 3, 4]
    assert headers["x-postage-reason"] == "handler-failed"
    assert "the database is down (try 4)" in headers["x-postage-error"]


async def test_delayed_messages_survive_a_broker_restart_on_time(
        fault_broker: Broker) -> None:
    queue = f"fault.delayed.{uuid.uuid4().hex[:8]}"
    count, low, high = 1000, 25.0, 40.0  # each waits over 20 s in its first queue
    rng = random.Random(7)
    delays = [rng.uniform(low, high) for _ in range(count)]
    due: dict[int, float] = {}
    arrived: dict[int, list[float]] = {}
    pub = await open_core(fault_broker.url, reconnect_delay=0.1)
    con = await open_core(fault_broker.url, reconnect_delay=0.1)

    async def on_message(message: IncomingMessage) -> None:
        arrived.setdefault(json.loads(message.delivery.body)["i"], []).append(
            time.monotonic())

    try:
        await con.declare_queue(queue, durable=True)
        await con.consume(queue, on_message, prefetch_count=200)
        semaphore = asyncio.Semaphore(64)

        async def send(i: int) -> None:
            async with semaphore:
                await pub.publish("", queue, json.dumps({"i": i}).encode(),
                                  Properties(content_type="application/json"),
                                  delay=delays[i])
                due.setdefault(i, time.monotonic() + delays[i])

        started = time.monotonic()
        await asyncio.gather(*(send(i) for i in range(count)))
        sent = time.monotonic() - started
        # the broker goes down and comes back while every message is waiting
        await asyncio.to_thread(fault_broker.ctl, "stop_app", timeout=60)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fault_broker.ctl, "start_app", timeout=60)
        back = time.monotonic() - started
        async with asyncio.timeout(high + 30):
            while len(arrived) < count:
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # any duplicate would come now
    finally:
        await pub.close(2)
        await con.close(2)
        await _cleanup(fault_broker.url, queue, f"{queue}.dlq")
    # a message is "sent" when its confirm came: it may arrive up to that much early
    late = [arrived[i][0] - due[i] for i in range(count)]
    allowed = [max(0.05 * delays[i], 0.1) for i in range(count)]
    on_time = sum(-0.5 <= late[i] <= allowed[i] for i in range(count))
    duplicates = sum(len(times) - 1 for times in arrived.values())
    print(f"\n{count} delayed messages ({low:.0f}-{high:.0f} s), broker restarted "
          f"(stop_app, 1 s, start_app: back {back:.1f} s after the first send; sending "
          f"took {sent:.1f} s): received {len(arrived)}, lost {count - len(arrived)}, "
          f"duplicates {duplicates}, on time {on_time}/{count}; lateness p50 "
          f"{statistics.median(late) * 1000:.0f} ms, p99 "
          f"{sorted(late)[int(count * 0.99)] * 1000:.0f} ms, max {max(late) * 1000:.0f} ms")
    assert len(arrived) == count and duplicates == 0
    assert on_time == count


async def test_delayed_messages_survive_kill_9_of_the_broker(fault_broker: Broker) -> None:
    """The broker is killed outright 5 s after the first of 2,000 delayed sends, while
    messages move between levels, and restarted 3 s later: no confirmed one is lost (a move
    under way may be repeated: at least once)."""
    queue = f"fault.delayed-kill.{uuid.uuid4().hex[:8]}"
    count, low, high = 2000, 4.0, 8.0
    rng = random.Random(9)
    delays = [rng.uniform(low, high) for _ in range(count)]
    confirmed: set[int] = set()
    arrived: dict[int, int] = {}
    pub = await open_core(fault_broker.url, reconnect_delay=0.1)
    con = await open_core(fault_broker.url, reconnect_delay=0.1)

    async def on_message(message: IncomingMessage) -> None:
        i = json.loads(message.delivery.body)["i"]
        arrived[i] = arrived.get(i, 0) + 1

    async def send(i: int) -> None:
        async with semaphore:
            with contextlib.suppress(PostageError):  # sent as the node died: not counted
                await pub.publish("", queue, json.dumps({"i": i}).encode(),
                                  delay=delays[i], timeout=10)
                confirmed.add(i)

    async def kill_and_restart() -> None:
        await asyncio.sleep(5)
        os.kill(fault_broker.node.pid, signal.SIGKILL)
        await asyncio.sleep(3)
        await asyncio.to_thread(fault_broker.node.start, 90)

    semaphore = asyncio.Semaphore(64)
    try:
        await con.declare_queue(queue, durable=True)
        await con.consume(queue, on_message, prefetch_count=200)
        await asyncio.gather(kill_and_restart(), *(send(i) for i in range(count)))
        deadline = time.monotonic() + high + 40
        while not confirmed <= arrived.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # any duplicate would come now
        # what has not arrived must still be on the broker, waiting in a level queue
        listing = await asyncio.to_thread(fault_broker.ctl, "list_queues", "name", "messages")
        waiting = waiting_in_levels(listing, pub.outbound.delays.names.prefix)
    finally:
        await pub.close(2)
        await con.close(2)
        await _cleanup(fault_broker.url, queue, f"{queue}.dlq")
    missing = len(confirmed - arrived.keys())
    duplicates = sum(n - 1 for n in arrived.values())
    print(f"\n{count} delayed messages ({low:.0f}-{high:.0f} s), broker killed with SIGKILL "
          f"5 s after the first send and restarted 3 s later: confirmed {len(confirmed)}, "
          f"received {len(arrived)}, not arrived {missing} (still in the levels {waiting}), "
          f"lost {max(0, missing - waiting)}, duplicates {duplicates}")
    assert len(confirmed) >= count // 2
    assert missing <= waiting  # none lost


REPLAY_COUNT = 3000


async def _fill_dead_letters(core: Core, dead: str, target: str,
                             count: int = REPLAY_COUNT) -> None:
    await core.declare_queue(target, durable=True)
    await core.declare_queue(dead, durable=True)
    semaphore = asyncio.Semaphore(64)

    async def send(i: int) -> None:
        headers = {"x-postage-reason": "handler-failed", "x-postage-error": "ValueError: x",
                   "x-postage-queue": target, "x-postage-exchange": "",
                   "x-postage-routing-key": target, "x-postage-attempts": 3}
        async with semaphore:
            await core.publish("", dead, str(i).encode(),
                               Properties(headers=headers, delivery_mode=2))

    await asyncio.gather(*(send(i) for i in range(count)))


async def _drain(core: Core, queue: str) -> list[int]:
    got: list[int] = []
    if not (await core.queue_state(queue))[0]:
        return got

    async def take(delivery: object) -> None:
        got.append(int(delivery.body))  # type: ignore[attr-defined]
        await delivery.ack()  # type: ignore[attr-defined]

    ready, _ = await core.queue_state(queue)
    consumer = await core.consume_raw(queue, take, prefetch_count=500)
    async with asyncio.timeout(30):
        while len(got) < ready:
            await asyncio.sleep(0.05)
    await consumer.cancel(2)
    return got


async def test_a_replay_killed_halfway_loses_nothing(fault_broker: Broker) -> None:
    suffix = uuid.uuid4().hex[:8]
    target, dead = f"fault.replay.{suffix}", f"fault.replay.{suffix}.dlq"
    core = await open_core(fault_broker.url)
    try:
        await _fill_dead_letters(core, dead, target)
        env = {**os.environ, "POSTAGE_URL": fault_broker.url}
        replaying = subprocess.Popen(
            [sys.executable, "-m", "postage", "dlq", "replay", dead], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with asyncio.timeout(60):
            while (await core.queue_state(target))[0] < REPLAY_COUNT // 3:
                await asyncio.sleep(0.01)
        os.kill(replaying.pid, signal.SIGKILL)
        replaying.wait(10)
        # the broker requeues the dead letters the killed replay held (it had not acked them)
        await asyncio.sleep(1.0)
        moved, left = (await core.queue_state(target))[0], (await core.queue_state(dead))[0]
        finished = subprocess.run([sys.executable, "-m", "postage", "dlq", "replay", dead],
                                  env=env, capture_output=True, text=True, timeout=120,
                                  check=False)
        assert finished.returncode == 0, finished.stderr
        received = await _drain(core, target)
        remaining = (await core.queue_state(dead))[0]
    finally:
        await core.close(2)
        await _cleanup(fault_broker.url, target, dead)
    duplicates = len(received) - len(set(received))
    print(f"\nreplay of {REPLAY_COUNT} dead letters, kill -9 after {moved} moved "
          f"({left} still dead-lettered); replayed again: received {len(set(received))}, "
          f"lost {REPLAY_COUNT - len(set(received))}, duplicates {duplicates}, left in the "
          f"dead-letter queue {remaining}")
    assert set(received) == set(range(REPLAY_COUNT)) and remaining == 0
    assert duplicates <= dlq.REPLAY_WINDOW  # the copies in flight when it was killed
    assert moved + left >= REPLAY_COUNT


@pytest.mark.timeout(300)
async def test_a_replay_through_cuts_moves_each_message_once(
        fault_broker: Broker, proxy: TcpProxy) -> None:
    """``postage.dlq.replay()`` on a reconnecting connection, cut three times by a proxy:
    every dead letter ends replayed or still dead-lettered, and the report counts true.

    (A copy in flight at a cut is sent again once the connection is back. In one CI run,
    under the load of the whole suite, the replay stalled past its time limit: the acks of
    moved messages waited forever for room in the dead connection's write queue, so their
    window slots were never freed. Such waits are interrupted now, see
    tests/faults/test_recovery.py; the short publish deadline stays as a bound.)"""
    count, cuts = 10_000, 3
    suffix = uuid.uuid4().hex[:8]
    target, dead = f"fault.replay-cut.{suffix}", f"fault.replay-cut.{suffix}.dlq"
    core = await open_core(fault_broker.url)
    replaying = await open_core(proxy.url(fault_broker.url), reconnect_delay=0.1,
                                publish_timeout=10.0)
    try:
        await _fill_dead_letters(core, dead, target, count)

        async def cut_thrice() -> None:
            for n in range(1, cuts + 1):
                async with asyncio.timeout(60):
                    while (await core.queue_state(target))[0] < count * n // (cuts + 1):
                        await asyncio.sleep(0.005)
                proxy.cut()

        started = time.monotonic()
        cutting = asyncio.create_task(cut_thrice())
        report = await dlq.replay(replaying, dead, timeout=30)
        took = time.monotonic() - started
        await cutting
        received = await _drain(core, target)
        left = await _drain(core, dead)
    finally:
        await replaying.close(2)
        await core.close(2)
        await _cleanup(fault_broker.url, target, dead)
    distinct = set(received)
    duplicates = len(received) - len(distinct)
    print(f"\nreplay of {count} dead letters through {proxy.cuts} cuts in {took:.1f} s "
          f"({count / took:.0f} msg/s): reported {report.replayed} replayed, "
          f"{report.repeated} sent again; received "
          f"{len(distinct)} distinct, duplicates {duplicates}, left in the dead-letter queue "
          f"{len(left)}, lost {count - len(distinct | set(left))}")
    assert proxy.cuts == cuts
    assert distinct | set(left) == set(range(count)) and not distinct & set(left)
    assert report.replayed == len(distinct)
    assert report.repeated <= duplicates <= cuts * 2 * dlq.REPLAY_WINDOW
