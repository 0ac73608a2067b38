"""The core against the real broker: round trips, pipelined confirms, unroutable messages,
ack after the handler, retries and dead letters, RPC deadlines, declaration caching."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from postage import (
    NotFound,
    PreconditionFailed,
    Properties,
    Reject,
    RetryPolicy,
    RpcBacklogFull,
    RpcTimeout,
    Unroutable,
)
from postage._core.core import HEADER_ATTEMPTS, HEADER_ERROR, HEADER_REASON, Core, open_core
from postage._transport import Delivery
from tests.drain import drain


def unique(prefix: str) -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def core(broker_url: str) -> AsyncIterator[Core]:
    c = await open_core(broker_url)
    yield c
    await c.close(5)


async def _queue(core: Core, *, exchange: str | None = None, key: str = "k") -> str:
    name = unique("q")
    await core.declare_queue(name, auto_delete=False, arguments={"x-expires": 60_000})
    if exchange:
        await core.bind(name, exchange, key)
    return name


async def test_publish_consume_round_trip(core: Core) -> None:
    exchange = unique("x")
    await core.declare_exchange(exchange, "direct", auto_delete=True)
    queue = await _queue(core, exchange=exchange)
    props = Properties(content_type="text/plain", headers={"h": 1}, correlation_id="c1")
    await core.publish(exchange, "k", b"hello", props)
    [d] = await drain(core, queue, 1)
    assert d.body == b"hello"
    assert d.properties.content_type == "text/plain"
    assert d.headers == {"h": 1}
    assert d.correlation_id == "c1"
    assert (d.exchange, d.routing_key, d.redelivered) == (exchange, "k", False)


async def test_ten_thousand_confirmed_publishes_are_pipelined(core: Core) -> None:
    queue = await _queue(core)
    publisher = core.transport._publisher
    in_flight_peak = 0
    n = 10_000

    async def watch() -> None:
        nonlocal in_flight_peak
        while True:
            in_flight_peak = max(in_flight_peak, len(publisher.confirmations))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    body = b"x" * 100
    props = Properties(delivery_mode=2)
    start = time.perf_counter()
    sem = asyncio.Semaphore(512)

    async def one() -> None:
        async with sem:
            await core.publish("", queue, body, props)

    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - start
    watcher.cancel()
    messages, _ = await core.transport.queue_state(queue)
    print(f"\n10,000 persistent confirmed publishes: {n / elapsed:,.0f} msg/s, "
          f"peak {in_flight_peak} unconfirmed in flight")
    assert messages == n
    assert in_flight_peak > 50, "confirms were awaited one round trip at a time"
    await core.transport.delete_queue(queue)


async def test_unroutable_mandatory_message_is_reported(core: Core) -> None:
    exchange = unique("x")
    await core.declare_exchange(exchange, "direct", auto_delete=True)
    with pytest.raises(Unroutable) as info:
        await core.publish(exchange, "nobody-home", b"x")
    assert info.value.routing_key == "nobody-home"
    # without mandatory the broker drops it silently
    await core.publish(exchange, "nobody-home", b"x", mandatory=False)


async def test_publish_to_missing_exchange_raises_not_found_and_recovers(core: Core) -> None:
    with pytest.raises(NotFound):
        await core.publish(unique("missing"), "k", b"x")
    queue = await _queue(core)
    await core.publish("", queue, b"still works")
    [d] = await drain(core, queue, 1)
    assert d.body == b"still works"


async def test_redeclaring_with_other_flags_is_a_clear_error(core: Core) -> None:
    name = unique("x")
    await core.declare_exchange(name, "direct", auto_delete=True)
    with pytest.raises(PreconditionFailed):
        await core.declare_exchange(name, "fanout", auto_delete=True)
    # the control channel was reopened: declarations go on working
    await core.declare_exchange(unique("x"), "topic", auto_delete=True)


async def test_declarations_are_cached(core: Core) -> None:
    name = unique("x")
    calls = 0
    original = core.transport._declare_exchange_on

    async def counting(channel, ex, passive=False):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        await original(channel, ex, passive)

    core.transport._declare_exchange_on = counting  # type: ignore[method-assign]
    for _ in range(5):
        await core.declare_exchange(name, "direct", auto_delete=True)
    assert calls == 1


async def test_handler_failures_are_retried_then_dead_lettered(core: Core) -> None:
    queue = await _queue(core)
    attempts: list[int] = []

    async def handler(d: Delivery) -> None:
        attempts.append(int(d.headers.get(HEADER_ATTEMPTS, 0)))
        raise ValueError("always broken")

    sub = await core.subscribe(queue, handler, policy=RetryPolicy(max_attempts=3))
    await core.publish("", queue, b"poison", Properties(headers={"keep": "me"}))
    [dead] = await drain(core, f"{queue}.dlq", 1)
    await sub.cancel()
    assert attempts == [0, 1, 2]
    assert dead.body == b"poison"
    assert dead.headers[HEADER_REASON] == "handler-failed"
    assert dead.headers[HEADER_ATTEMPTS] == 3
    assert "ValueError: always broken" in dead.headers[HEADER_ERROR]
    assert dead.headers["keep"] == "me"
    assert (await core.transport.queue_state(queue))[0] == 0
    await core.transport.delete_queue(f"{queue}.dlq")


async def test_reject_dead_letters_at_once(core: Core) -> None:
    queue = await _queue(core)
    calls = 0

    async def handler(d: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise Reject("not for me")

    sub = await core.subscribe(queue, handler)
    await core.publish("", queue, b"x")
    [dead] = await drain(core, f"{queue}.dlq", 1)
    await sub.cancel()
    assert calls == 1
    assert dead.headers[HEADER_REASON] == "rejected"
    await core.transport.delete_queue(f"{queue}.dlq")


async def test_consumer_killed_mid_handler_gets_the_message_redelivered(
    core: Core, broker_url: str
) -> None:
    queue = await _queue(core)
    await core.publish("", queue, b"work", Properties(delivery_mode=2))
    child = textwrap.dedent(f"""
        import asyncio, sys
        from postage._core.core import open_core
        async def main():
            core = await open_core({broker_url!r})
            async def handler(d):
                print("started", flush=True)
                await asyncio.sleep(3600)
            await core.subscribe({queue!r}, handler, prefetch_count=1)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == "started"
        proc.kill()  # mid-handler: no ack was sent
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    [d] = await drain(core, queue, 1)
    assert d.body == b"work"
    # the broker redelivered it; the pipeline counted that and sent it to the queue's end
    assert d.headers["x-postage-redeliveries"] == 1


async def test_rpc_round_trip_and_deadline(core: Core) -> None:
    queue = await _queue(core)

    async def server(d: Delivery) -> None:
        if d.body == b"slow":
            return  # never answers
        await core.reply(d, d.body.upper())

    await core.subscribe(queue, server)
    reply = await core.call("", queue, b"ping", timeout=5)
    assert reply.body == b"PING"
    replies = await asyncio.gather(*(core.call("", queue, f"m{i}".encode(), timeout=10)
                                     for i in range(200)))
    assert [r.body for r in replies] == [f"M{i}".encode() for i in range(200)]
    start = time.perf_counter()
    with pytest.raises(RpcTimeout):
        await core.call("", queue, b"slow", timeout=0.3)
    assert time.perf_counter() - start < 2
    with pytest.raises(TimeoutError):
        await core.call("", queue, b"slow", timeout=0.1)
    assert core.pending_calls == 0


async def test_rpc_to_nobody_fails_fast(core: Core) -> None:
    start = time.perf_counter()
    with pytest.raises(Unroutable):
        await core.call("", unique("nobody"), b"x", timeout=30)
    assert time.perf_counter() - start < 1


async def test_pending_rpc_calls_are_bounded(broker_url: str) -> None:
    core = await open_core(broker_url, max_pending_calls=5)
    try:
        queue = await _queue(core)
        await core.subscribe(queue, lambda d: asyncio.sleep(0))  # never replies
        calls = [asyncio.create_task(core.call("", queue, b"x", timeout=5)) for _ in range(5)]
        await asyncio.sleep(0.2)
        with pytest.raises(RpcBacklogFull):
            await core.call("", queue, b"x", timeout=5)
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        assert core.pending_calls == 0
    finally:
        await core.close(2)


async def test_close_waits_for_handlers_in_progress(broker_url: str) -> None:
    core = await open_core(broker_url)
    queue = await _queue(core)
    finished = asyncio.Event()

    async def handler(d: Delivery) -> None:
        await asyncio.sleep(0.5)
        finished.set()

    await core.subscribe(queue, handler)
    await core.publish("", queue, b"x")
    await asyncio.sleep(0.2)
    await core.close(5)
    assert finished.is_set()
    check = await open_core(broker_url)
    try:
        assert (await check.transport.queue_state(queue))[0] == 0  # it was acked
    finally:
        await check.transport.delete_queue(queue)
        await check.close(2)


async def test_sync_user_code_runs_off_the_loop(core: Core) -> None:
    import threading

    loop_thread = threading.current_thread()
    ran_in = await core.run_sync(threading.current_thread)
    assert ran_in is not loop_thread
    assert os.getpid() > 0
