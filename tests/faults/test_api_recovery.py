"""Fault tests through each public API: classic, communicator, async client.

The core-level tests (test_recovery.py) prove the transport; these prove that what each
API builds on top (classic shared cores and runtime group joins, communicator task queues,
RPC and broadcast subscribers, async client receivers) comes back after the connection
is cut by the TCP proxy or closed by the broker, that nothing confirmed is lost, and that
an RPC across a cut either answers or raises a Postage error within its deadline.
Every test reports its figures to ``figures_log`` (``bench/faults.py`` prints them).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from postage import (
    AsyncClient,
    PostageError,
    Unroutable,
    connect,
    generic_application,
    messaging,
    microthreads,
)
from postage._api.classic import runtime as _runtime
from postage._api.communicator import open_communicator
from postage._core.core import Core, open_core
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import Figures, Tally, drive_stream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RPC_TIMEOUT = 4.0


def unique(prefix: str) -> str:
    return f"fault.{prefix}.{uuid.uuid4().hex[:8]}"


def _report(figures_log: list[Figures], fig: Figures) -> None:
    print("\n" + fig.line())
    figures_log.append(fig)


async def _delete_queues(url: str, *queues: str) -> None:
    core = await open_core(url)
    try:
        for q in queues:
            await core.transport.delete_queue(q)
            await core.transport.delete_queue(f"{q}.dlq")
    finally:
        await core.close(2)


def _fault(kind: str, proxy: TcpProxy, broker: Broker,
           recovering: Core | None = None) -> Callable[[], Awaitable[None]]:
    """A fault to inject; with ``recovering``, a close_all returns once that core has
    reconnected, so the next fault cannot land while it is still reconnecting (and be
    missed by the count of reconnections)."""
    async def cut() -> None:
        proxy.cut()

    async def close_all() -> None:
        before = recovering.transport.reconnections if recovering is not None else 0
        await asyncio.to_thread(broker.ctl, "close_all_connections", "fault test")
        if recovering is not None:
            async def back() -> bool:
                return recovering.transport.reconnections > before

            await _eventually("the connection to come back", back)

    return cut if kind == "cut" else close_all


async def _eventually(what: str, attempt: Callable[[], Awaitable[bool]],
                      timeout: float = 20.0, pause: float = 0.2) -> float:
    """Retry ``attempt`` until it returns True; return how long that took."""
    start = time.monotonic()
    while True:
        try:
            if await attempt():
                return time.monotonic() - start
        except PostageError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(pause)


# ---------------------------------------------------------------------------------------
# classic API


def _hup(proxy: TcpProxy) -> dict[str, str]:
    return {"host": f"127.0.0.1:{proxy.port}", "user": "guest", "password": "guest"}


def _exchange(name: str) -> type[messaging.Exchange]:
    attrs = {"name": name, "exchange_type": "direct", "durable": False, "auto_delete": True,
             "passive": False}
    return type("FaultExchange", (messaging.Exchange,), attrs)


class StreamProcessor(messaging.MessageProcessor):
    tally: Tally

    @messaging.MessageHandler("command", "stream")
    def msg_stream(self, content: Any) -> None:
        self.tally.record(int(content["parameters"]))


class ProbedApplication(generic_application.GenericApplication):
    tally: Tally

    @messaging.MessageHandler("command", "probe")
    def msg_probe(self, content: Any) -> None:
        self.tally.record(int(content["parameters"]))


@asynccontextmanager
async def scheduled(*processors: messaging.MessageProcessor) -> AsyncIterator[None]:
    """Run ``processors`` in a MicroScheduler in a thread, as a classic program would.
    (Joined from a worker thread: the proxy lives on this test's event loop and must
    keep forwarding while the processors stop.)"""
    scheduler = microthreads.MicroScheduler()
    for processor in processors:
        scheduler.add_microthread(processor)
    thread = threading.Thread(target=lambda: list(scheduler.main()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        for processor in processors:
            processor.stop()
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive(), "the scheduler did not stop"


@pytest.mark.parametrize("kind", ["cut", "close_all"])
async def test_classic_producer_to_processor_through_faults(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures], kind: str
) -> None:
    hup = _hup(proxy)
    queue = unique("classic")
    exchange = _exchange(unique("classic-ex"))
    tally = Tally()
    producer_class = type("StreamProducer", (messaging.GenericProducer,),
                          {"eks": [(exchange, queue)]})

    def build() -> tuple[StreamProcessor, messaging.GenericProducer]:
        eqk = [(exchange, [({"name": queue, "flags": {"durable": True}}, queue)])]
        processor = StreamProcessor({"name": "fault-stream"}, eqk, hup, "/")
        processor.tally = tally
        return processor, producer_class(hup=hup, vhost="/")

    processor, producer = await asyncio.to_thread(build)
    send_one = producer.message_stream  # the magic method, resolved once

    async def send(i: int) -> None:
        await asyncio.to_thread(send_one, i)

    scenario = "proxy cut x3" if kind == "cut" else "close_all_connections x2"
    after = (300, 900, 1500) if kind == "cut" else (500, 1300)
    try:
        async with scheduled(processor):
            fig = await drive_stream(scenario, "classic", send, tally, count=2000,
                                     fault=_fault(kind, proxy, fault_broker,
                                                  processor.consumer.core),
                                     fault_after=after, concurrency=8, deadline=45)
        reconnections = processor.consumer.core.transport.reconnections
    finally:
        await asyncio.to_thread(_runtime.close_all)
        await _delete_queues(fault_broker.url, queue)
    _report(figures_log, fig)
    assert fig.faults == len(after)
    assert reconnections >= len(after)
    assert fig.confirmed + fig.publish_errors == fig.sent == 2000
    assert fig.confirmed >= 1990, fig.line()  # a publish may fail only if a fault hit it twice
    assert fig.lost == 0, fig.line()


@pytest.mark.parametrize("kind", ["cut", "close_all"])
async def test_classic_runtime_group_join_survives_reconnect(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures], kind: str
) -> None:
    hup = _hup(proxy)
    name, host = f"faultapp{uuid.uuid4().hex[:8]}", f"h{uuid.uuid4().hex[:8]}"
    fingerprint = {"name": name, "pid": os.getpid(), "host": host}
    tally = Tally()
    fig = Figures(f"join_group binding after {kind}", "classic")

    def build() -> tuple[ProbedApplication, messaging.GenericProducer]:
        app = ProbedApplication(fingerprint, vhost="/", hup=hup)
        app.tally = tally
        return app, generic_application.GenericApplicationProducer(hup=hup, vhost="/")

    app, producer = await asyncio.to_thread(build)
    start = time.perf_counter()
    probe_number = iter(range(1000))
    wanted: set[int] = set()

    async def probe(key: str) -> bool:
        """Send one probe to ``key`` and wait for it; True when it arrived."""
        i = next(probe_number)
        fig.sent += 1
        try:
            await asyncio.to_thread(producer.message_probe, i, _key=key)
        except PostageError:
            fig.publish_errors += 1
            raise
        fig.confirmed += 1
        wanted.add(i)
        tally.all_in.clear()
        tally.expect({i})
        return await tally.wait(3.0)

    try:
        async with scheduled(app):
            await asyncio.to_thread(producer.message_join_group, "g", _key=f"{os.getpid()}@{host}")
            await _eventually("group join", lambda: probe(f"{name}#g/rr"))
            assert "g" in app.groups
            assert await probe(f"{name}#g")
            await _fault(kind, proxy, fault_broker)()
            fig.faults = 1
            t0 = time.perf_counter()
            await _eventually("group queue after the fault", lambda: probe(f"{name}#g/rr"))
            await _eventually("group key after the fault", lambda: probe(f"{name}#g"))
            fig.recovery_s.append(time.perf_counter() - t0)
            reconnections = app.consumer.core.transport.reconnections
    finally:
        await asyncio.to_thread(_runtime.close_all)
    fig.seconds = time.perf_counter() - start
    seen = dict(tally.seen)
    fig.delivered = len(seen)
    fig.lost = len(wanted - set(seen))
    fig.duplicates = sum(n - 1 for n in seen.values())
    _report(figures_log, fig)
    assert reconnections >= 1
    assert fig.delivered >= 4 and fig.lost == 0, fig.line()


# ---------------------------------------------------------------------------------------
# communicator


@pytest.mark.parametrize("quorum", [False, True], ids=["classic-queue", "quorum-queue"])
async def test_communicator_task_stream_through_proxy_cuts(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures], quorum: bool
) -> None:
    url = proxy.url(fault_broker.url)
    queue = unique("tasks")
    tally = Tally()
    sender = await open_communicator(url, reconnect_delay=0.05, operation_timeout=30,
                                     task_quorum=quorum)
    worker = await open_communicator(url, reconnect_delay=0.05, task_quorum=quorum)
    try:
        sending = await sender.task_queue(queue)
        working = await worker.task_queue(queue, prefetch_count=100)
        listed = await asyncio.to_thread(fault_broker.ctl, "list_queues", "name", "type")
        assert f"{queue}\t{'quorum' if quorum else 'classic'}" in listed

        scenario = "task_send (quorum queue), proxy cut x3" if quorum else \
            "task_send, proxy cut x3"
        fig = await _task_stream(scenario, "communicator", sending, working, tally, proxy,
                                 fault_broker)
        reconnections = (sender.core.transport.reconnections,
                         worker.core.transport.reconnections)
    finally:
        await sender.close(5)
        await worker.close(5)
        await _delete_queues(fault_broker.url, queue)
    _check_task_stream(figures_log, fig, reconnections)


async def _task_stream(scenario: str, api: str, sending: Any, working: Any, tally: Tally,
                       proxy: TcpProxy, fault_broker: Broker) -> Figures:
    """3000 tasks sent on ``sending`` (no reply) and handled by a subscriber of
    ``working``, across three proxy cuts."""
    async def subscriber(_comm: Any, body: Any) -> None:
        tally.record(int(body))

    await working.add_task_subscriber(subscriber)

    async def send(i: int) -> None:
        await sending.task_send(i, no_reply=True)

    return await drive_stream(scenario, api, send, tally, count=3000,
                              fault=_fault("cut", proxy, fault_broker),
                              fault_after=(500, 1500, 2500), concurrency=32, deadline=45)


def _check_task_stream(figures_log: list[Figures], fig: Figures,
                       reconnections: tuple[int, int]) -> None:
    """Every task of :func:`_task_stream` confirmed and handled; both sides reconnected."""
    _report(figures_log, fig)
    assert fig.faults == 3 and min(reconnections) >= 1
    assert fig.publish_errors == 0 and fig.confirmed == 3000
    assert fig.lost == 0, fig.line()


async def test_kiwipy_task_stream_through_proxy_cuts(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    """postage.kiwipy (kiwiPy's wire format) on the same guarantees: tasks sent across
    three cuts are all confirmed and all handled."""
    from postage._settings import ConnectionSettings
    from postage.kiwipy import rmq

    url = proxy.url(fault_broker.url)
    prefix = unique("kiwipy")
    names = {"message_exchange": f"{prefix}.messages", "task_exchange": f"{prefix}.tasks"}
    queue = f"{prefix}.queue"
    tally = Tally()

    def core() -> Core:
        return Core(ConnectionSettings.from_url(url, reconnect_delay=0.05))

    sender = rmq.RmqCommunicator(core(), **names)
    worker = rmq.RmqCommunicator(core(), task_prefetch_count=100, **names)
    await sender.connect()
    await worker.connect()
    try:
        sending = await sender.task_queue(queue)
        working = await worker.task_queue(queue, prefetch_count=100)

        fig = await _task_stream("task_send, proxy cut x3", "postage.kiwipy", sending,
                                 working, tally, proxy, fault_broker)
        reconnections = (sender.core.transport.reconnections,
                         worker.core.transport.reconnections)
    finally:
        await sender.disconnect()
        await worker.disconnect()
        await _delete_queues(fault_broker.url, queue)
    _check_task_stream(figures_log, fig, reconnections)


def _rpc_notes(errors: collections.Counter[str], durations: list[float]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(errors.items())) or "none"
    longest = max(durations, default=0.0)
    return f"RPC errors: {kinds}; longest call {longest:.2f} s"


async def test_communicator_rpc_and_broadcast_across_cuts(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    """Blocking communicator: calls across cuts answer or raise a Postage error in time;
    the RPC and broadcast subscribers are back afterwards."""
    url = proxy.url(fault_broker.url)
    identifier = unique("rpc")
    options: dict[str, Any] = {"reconnect_delay": 0.05, "rpc_timeout": RPC_TIMEOUT,
                               "operation_timeout": 10.0}
    server = await asyncio.to_thread(lambda: connect(url, **options))
    client = await asyncio.to_thread(lambda: connect(url, **options))
    broadcasts: collections.Counter[str] = collections.Counter()
    got_broadcast = threading.Event()

    def on_broadcast(_comm: Any, body: Any, *_rest: Any) -> None:
        broadcasts[str(body)] += 1
        got_broadcast.set()

    errors: collections.Counter[str] = collections.Counter()
    durations: list[float] = []
    tally = Tally()
    bound = 2 * RPC_TIMEOUT + 3.0  # publish may wait for recovery, then the reply

    def call(i: int) -> None:
        start = time.monotonic()
        try:
            future = client.rpc_send(identifier, i)
            value = future.result(timeout=bound + 5)
        except PostageError as exc:
            errors[type(exc).__name__] += 1
            raise
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"RPC call {i} hung for {bound + 5:g} s") from None
        finally:
            durations.append(time.monotonic() - start)
        assert value == i * 2
        tally.record(i)

    async def send(i: int) -> None:
        await asyncio.to_thread(call, i)

    try:
        await asyncio.to_thread(server.add_rpc_subscriber, lambda _c, x: x * 2, identifier)
        await asyncio.to_thread(server.add_broadcast_subscriber, on_broadcast)
        fig = await drive_stream("rpc_send across proxy cut x2", "communicator", send, tally,
                                 count=400, fault=_fault("cut", proxy, fault_broker),
                                 fault_after=(80, 240), concurrency=8, deadline=45)
        fig.notes = _rpc_notes(errors, durations)
        # the RPC subscriber is back: a call answers
        await _eventually("RPC subscriber restored",
                          lambda: asyncio.to_thread(lambda: client.rpc_send(
                              identifier, 21).result(bound) == 42))

        async def broadcast_arrives() -> bool:
            got_broadcast.clear()
            await asyncio.to_thread(client.broadcast_send, "after-cut")
            return await asyncio.to_thread(got_broadcast.wait, 1.0)

        await _eventually("broadcast subscriber restored", broadcast_arrives)
    finally:
        await asyncio.to_thread(client.close, 5)
        await asyncio.to_thread(server.close, 5)
    _report(figures_log, fig)
    assert fig.faults == 2
    assert max(durations) <= bound, fig.notes
    assert fig.confirmed + fig.publish_errors == fig.sent  # each call answered or raised
    assert fig.confirmed >= 80, fig.line()  # the calls before the first cut, at least
    assert broadcasts["after-cut"] >= 1


# ---------------------------------------------------------------------------------------
# async client


async def test_client_publish_receive_through_proxy_cuts(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    url = proxy.url(fault_broker.url)
    queue = unique("client")
    tally = Tally()
    async with AsyncClient(url, reconnect_delay=0.05) as publisher, \
            AsyncClient(url, reconnect_delay=0.05) as receiver_client:
        try:
            async def handler(body: bytes) -> None:
                tally.record(int(body))

            await receiver_client.receive("", queue, queue, handler, prefetch_count=200,
                                          durable=True)

            async def send(i: int) -> None:
                await publisher.publish("", queue, str(i), {"delivery_mode": 2})

            fig = await drive_stream("publish/receive, proxy cut x3", "client", send, tally,
                                     count=3000, fault=_fault("cut", proxy, fault_broker),
                                     fault_after=(500, 1500, 2500), concurrency=64,
                                     deadline=45)
            reconnections = publisher.core.transport.reconnections
        finally:
            await _delete_queues(fault_broker.url, queue)
    _report(figures_log, fig)
    assert fig.faults == 3 and reconnections >= 1
    assert fig.publish_errors == 0 and fig.confirmed == 3000
    assert fig.lost == 0, fig.line()


async def test_client_rpc_across_cuts(
    fault_broker: Broker, proxy: TcpProxy, figures_log: list[Figures]
) -> None:
    url = proxy.url(fault_broker.url)
    queue = unique("client-rpc")
    errors: collections.Counter[str] = collections.Counter()
    durations: list[float] = []
    tally = Tally()
    bound = 2 * RPC_TIMEOUT + 3.0
    async with AsyncClient(url, reconnect_delay=0.05, rpc_timeout=RPC_TIMEOUT) as client, \
            AsyncClient(url, reconnect_delay=0.05) as server:
        async def upper(body: bytes) -> bytes:
            return body.upper()

        await server.receive("", queue, queue, upper, prefetch_count=32)

        async def send(i: int) -> None:
            start = time.monotonic()
            try:
                reply = await asyncio.wait_for(client.rpc("", queue, f"call-{i}"), bound + 5)
            except PostageError as exc:
                errors[type(exc).__name__] += 1
                raise
            except TimeoutError:
                raise AssertionError(f"RPC call {i} hung for {bound + 5:g} s") from None
            finally:
                durations.append(time.monotonic() - start)
            assert reply == f"CALL-{i}".encode()
            tally.record(i)

        fig = await drive_stream("rpc across proxy cut x2", "client", send, tally, count=1000,
                                 fault=_fault("cut", proxy, fault_broker),
                                 fault_after=(200, 600), concurrency=16, deadline=45)
        fig.notes = _rpc_notes(errors, durations)
        await _eventually("RPC server restored",
                          lambda: _answers(client, queue))
    _report(figures_log, fig)
    assert fig.faults == 2
    assert max(durations) <= bound, fig.notes
    assert fig.confirmed + fig.publish_errors == fig.sent  # each call answered or raised
    assert fig.confirmed >= 200, fig.line()  # the calls before the first cut, at least
    assert set(errors) <= {"ConnectionError", "Unroutable", "RpcTimeout", "DeliveryTimeout"}


async def _answers(client: AsyncClient, queue: str) -> bool:
    try:
        return await client.rpc("", queue, "ping", timeout=RPC_TIMEOUT) == b"PING"
    except Unroutable:
        return False
