"""Fault tests: connections cut by a proxy or closed by the broker, broker restarts, a
handler blocking through several heartbeat intervals. Nothing confirmed may be lost."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from postage import ConnectionError, Properties
from postage._core.core import open_core
from postage._transport import Delivery
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import Figures, stream_through_faults

pytestmark = pytest.mark.slow


def unique(prefix: str) -> str:
    return f"fault.{prefix}.{uuid.uuid4().hex[:8]}"


async def _durable_queue(url: str, **arguments: object) -> str:
    name = unique("q")
    core = await open_core(url)
    await core.declare_queue(name, durable=True, arguments=arguments or None)
    await core.close(2)
    return name


async def _delete(url: str, *queues: str) -> None:
    core = await open_core(url)
    for q in queues:
        await core.transport.delete_queue(q)
        await core.transport.delete_queue(f"{q}.dlq")
    await core.close(2)


def _report(figures_log: list[Figures], fig: Figures) -> None:
    print("\n" + fig.line())
    figures_log.append(fig)


async def test_proxy_cuts_mid_stream(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    queue = await _durable_queue(fault_broker.url)
    url = proxy.url(fault_broker.url)
    pub = await open_core(url, reconnect_delay=0.05)
    con = await open_core(url, reconnect_delay=0.05)
    await pub.declare_queue(queue, durable=True)
    await con.declare_queue(queue, durable=True)

    async def cut() -> None:
        proxy.cut()

    try:
        fig = await stream_through_faults(
            "proxy cut x3", pub, con, queue, count=3000, fault=cut,
            fault_after=(500, 1500, 2500),
        )
    finally:
        await pub.close(2)
        await con.close(2)
        await _delete(fault_broker.url, queue)
    _report(figures_log, fig)
    assert fig.faults == 3
    assert pub.transport.reconnections >= 1 or con.transport.reconnections >= 1
    assert fig.publish_errors == 0
    assert fig.confirmed == 3000
    assert fig.lost == 0


async def test_slow_link_still_delivers(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    queue = await _durable_queue(fault_broker.url)
    url = proxy.url(fault_broker.url)
    pub = await open_core(url)
    con = await open_core(url)
    await pub.declare_queue(queue, durable=True)

    async def slow_down() -> None:
        proxy.delay = 0.05

    try:
        fig = await stream_through_faults(
            "proxy slowed 50 ms", pub, con, queue, count=500, fault=slow_down, fault_after=(100,),
        )
    finally:
        proxy.delay = 0
        await pub.close(2)
        await con.close(2)
        await _delete(fault_broker.url, queue)
    _report(figures_log, fig)
    assert fig.lost == 0 and fig.confirmed == 500


async def test_broker_closes_all_connections(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    queue = await _durable_queue(fault_broker.url)
    pub = await open_core(fault_broker.url, reconnect_delay=0.05)
    con = await open_core(fault_broker.url, reconnect_delay=0.05)
    await pub.declare_queue(queue, durable=True)

    async def close_all() -> None:
        await asyncio.to_thread(fault_broker.ctl, "close_all_connections", "fault test")

    try:
        fig = await stream_through_faults(
            "close_all_connections x2", pub, con, queue, count=3000, fault=close_all,
            fault_after=(800, 2000),
        )
    finally:
        await pub.close(2)
        await con.close(2)
        await _delete(fault_broker.url, queue)
    _report(figures_log, fig)
    assert pub.transport.reconnections >= 2
    assert con.transport.reconnections >= 2
    assert fig.lost == 0 and fig.confirmed == 3000 and fig.publish_errors == 0


async def test_broker_restart_stop_app_start_app(
    fault_broker: Broker, figures_log: list[Figures]
) -> None:
    queue = await _durable_queue(fault_broker.url)
    pub = await open_core(fault_broker.url, reconnect_delay=0.1)
    con = await open_core(fault_broker.url, reconnect_delay=0.1)
    await pub.declare_queue(queue, durable=True)
    await con.declare_queue(queue, durable=True)

    async def restart() -> None:
        await asyncio.to_thread(fault_broker.ctl, "stop_app", timeout=60)

        async def start_later() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fault_broker.ctl, "start_app", timeout=60)

        restarts.append(asyncio.ensure_future(start_later()))

    restarts: list[asyncio.Future[None]] = []
    try:
        fig = await stream_through_faults(
            "broker stop_app/start_app", pub, con, queue, count=4000, fault=restart,
            fault_after=(700,), deadline=40, concurrency=16,
        )
    finally:
        await asyncio.gather(*restarts)
        await pub.close(2)
        await con.close(2)
        await _delete(fault_broker.url, queue)
    _report(figures_log, fig)
    assert pub.transport.reconnections >= 1
    assert fig.lost == 0 and fig.confirmed == 4000 and fig.publish_errors == 0


async def test_queue_deleted_under_a_consumer_is_restored(fault_broker: Broker) -> None:
    core = await open_core(fault_broker.url)
    queue = unique("q")
    await core.declare_queue(queue, durable=False)
    got = asyncio.Queue[bytes]()

    async def handler(d: Delivery) -> None:
        await got.put(d.body)

    await core.subscribe(queue, handler)
    try:
        await asyncio.to_thread(fault_broker.ctl, "delete_queue", queue)
        # the broker cancels the consumer; Postage declares the queue again and resumes
        deadline = time.monotonic() + 20
        while True:
            try:
                await core.publish("", queue, b"after delete")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert await asyncio.wait_for(got.get(), 20) == b"after delete"
    finally:
        await core.close(2)
        await _delete(fault_broker.url, queue)


async def test_handler_blocking_through_three_heartbeats(fault_broker: Broker) -> None:
    url = fault_broker.url.rstrip("/") + "/?heartbeat=2"
    core = await open_core(url)
    queue = await _durable_queue(fault_broker.url)
    deliveries: list[bool] = []
    done = asyncio.Event()

    def block() -> None:
        time.sleep(7)  # three and a half heartbeat intervals, in a worker thread

    async def handler(d: Delivery) -> None:
        deliveries.append(d.redelivered)
        await core.run_sync(block)
        done.set()

    try:
        await core.subscribe(queue, handler, prefetch_count=1)
        await core.publish("", queue, b"long job", Properties(delivery_mode=2))
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(2.5)  # a redelivery would show up here
        assert deliveries == [False]
        assert core.transport.reconnections == 0
        assert (await core.transport.queue_state(queue))[0] == 0
    finally:
        await core.close(2)
        await _delete(fault_broker.url, queue)


async def test_callers_get_a_clear_error_when_recovery_takes_too_long(
    fault_broker: Broker, proxy: TcpProxy
) -> None:
    core = await open_core(proxy.url(fault_broker.url), recovery_timeout=1.0,
                           reconnect_delay=0.1)
    try:
        proxy.refuse(True)
        proxy.cut()
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            await core.publish("", "anything", b"x", timeout=30)
        assert time.monotonic() - start < 5
        proxy.refuse(False)
        deadline = time.monotonic() + 20
        while not core.transport.is_ready and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert core.transport.is_ready
    finally:
        proxy.refuse(False)
        await core.close(2)


def _full_write_queue() -> asyncio.Queue[object]:
    """A write queue with no room and no writer: what a dead connection's is once the
    client has put as many frames in it as it holds."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
    queue.put_nowait(object())
    return queue


async def test_an_ack_waiting_on_a_dead_connection_gives_up(
        fault_broker: Broker, proxy: TcpProxy) -> None:
    """An ack whose frame waits for room in the write queue when the connection dies is
    given up (the broker delivers the message again); it used to wait forever, and so did
    whatever awaited it (a replay's window, a handler's task)."""
    queue = await _durable_queue(fault_broker.url)
    core = await open_core(proxy.url(fault_broker.url), reconnect_delay=0.05)
    held: list[Delivery] = []
    again = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        if held:
            again.set()
            await delivery.ack()
        else:
            held.append(delivery)

    try:
        await core.publish("", queue, b"once", Properties(delivery_mode=2))
        await core.consume_raw(queue, hold, prefetch_count=1)
        async with asyncio.timeout(10):
            while not held:
                await asyncio.sleep(0.01)
        delivery = held[0]
        delivery._channel.write_queue = _full_write_queue()  # type: ignore[attr-defined]
        acking = asyncio.ensure_future(delivery.ack())
        await asyncio.sleep(0.3)
        assert not acking.done()  # waiting for room, as on a dead connection
        proxy.cut()
        async with asyncio.timeout(10):
            assert await acking is False
            await again.wait()  # and the broker delivered the message again
    finally:
        await core.close(2)
        await _delete(fault_broker.url, queue)


async def test_a_reply_waiting_on_a_dead_connection_is_sent_again(
        fault_broker: Broker, proxy: TcpProxy) -> None:
    """A reply (sent without confirm) whose frame waits for room in the write queue when
    the connection dies is sent again once it is back, instead of waiting forever."""
    queue = await _durable_queue(fault_broker.url)
    core = await open_core(proxy.url(fault_broker.url), reconnect_delay=0.05)
    transport = core.transport
    try:
        await transport.publish_transient("", queue, b"first")  # opens the reply channel
        transport._replier.write_queue = _full_write_queue()  # type: ignore[attr-defined]
        replying = asyncio.ensure_future(transport.publish_transient("", queue, b"reply"))
        await asyncio.sleep(0.3)
        assert not replying.done()
        proxy.cut()
        async with asyncio.timeout(10):
            await replying
            while (await core.queue_state(queue))[0] < 2:
                await asyncio.sleep(0.05)
    finally:
        await core.close(2)
        await _delete(fault_broker.url, queue)
