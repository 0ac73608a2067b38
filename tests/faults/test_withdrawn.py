"""No handler starts for a delivery whose channel was lost: cut the connection while
plain-function handlers wait for one of 4 worker threads, and count the handlers run twice.

Before a cut, 100 messages are delivered (prefetch 100) and wait for the 4 threads; after
it, the broker delivers again every one not acked. Only the handlers already running at
the cut (at most 4) may run a second time. The same through each API: the async client,
the communicator, ``postage.kiwipy``'s thread communicator, and a classic processor (which
takes one message at a time: at most 1).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from postage import AsyncClient, messaging
from postage._api.classic import runtime as _runtime
from postage._api.communicator import open_communicator
from postage._core.core import open_core
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy
from tests.faults.test_api_recovery import scheduled

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


class _WorkProcessor(messaging.MessageProcessor):
    calls: Calls

    @messaging.MessageHandler("command", "work")
    def msg_work(self, content: Any) -> None:
        self.calls.handle(int(content["parameters"]))


def _classic_exchange(queue: str) -> type[messaging.Exchange]:
    attrs = {"name": f"{queue}.x", "exchange_type": "direct", "durable": True,
             "auto_delete": False, "passive": False}
    return type("WorkExchange", (messaging.Exchange,), attrs)


def _hup(url: str) -> dict[str, str]:
    return {"host": f"127.0.0.1:{urlsplit(url).port}", "user": "guest", "password": "guest"}


async def _consume_classic(url: str, queue: str, calls: Calls) -> Callable[[], Any]:
    hup = _hup(url)
    eqk = [(_classic_exchange(queue), [({"name": queue, "flags": {"durable": True}}, queue)])]

    def build() -> _WorkProcessor:
        processor = _WorkProcessor({"name": "fault-withdrawn"}, eqk, hup, "/")
        processor.calls = calls
        return processor

    running = scheduled(await asyncio.to_thread(build))
    await running.__aenter__()

    async def close() -> None:
        await running.__aexit__(None, None, None)
        await asyncio.to_thread(_runtime.close_all)

    return close


async def _consume_kiwipy(url: str, queue: str, calls: Calls) -> Callable[[], Any]:
    from postage.kiwipy import rmq

    def start() -> Any:
        comm = rmq.RmqThreadCommunicator.connect(connection_params=url,
                                                 task_prefetch_count=PREFETCH)
        comm._communicator.core.workers.max_workers = WORKERS  # default: 512 threads
        comm.task_queue(queue).add_task_subscriber(
            lambda _comm, body: calls.handle(int(body)))
        return comm

    comm = await asyncio.to_thread(start)
    return lambda: asyncio.to_thread(comm.close)


async def _send(api: str, url: str, queue: str) -> None:
    """COUNT messages in the API's own format."""
    if api == "classic":
        exchange = _classic_exchange(queue)
        core = await open_core(url)
        try:  # what the processor declares, declared first so that nothing is unroutable
            await core.declare_exchange(exchange.name, "direct", durable=True)
            await core.declare_queue(queue, durable=True)
            await core.bind(queue, exchange.name, queue)
        finally:
            await core.close(2)

        def send() -> None:
            producer = type("WorkProducer", (messaging.GenericProducer,),
                            {"eks": [(exchange, queue)], "persistent": True})(hup=_hup(url))
            for i in range(COUNT):
                producer.message_work(i)
            producer.close()

        await asyncio.to_thread(send)
        return
    if api == "kiwipy":
        from postage.kiwipy import rmq

        sender = rmq.RmqCommunicator(_core_for(url))
        await sender.connect()
        try:
            sending = await sender.task_queue(queue)
            for i in range(COUNT):
                await sending.task_send(i, no_reply=True)
        finally:
            await sender.disconnect()
        return
    if api == "communicator":
        comm = await open_communicator(url)
        try:
            sending = await comm.task_queue(queue)
            for i in range(COUNT):
                await sending.task_send(i, no_reply=True)
        finally:
            await comm.close(2)
        return
    core = await open_core(url)
    try:
        await core.declare_queue(queue, durable=True, auto_delete=False)
        for i in range(COUNT):
            await core.publish("", queue, str(i).encode())
    finally:
        await core.close(2)


def _core_for(url: str) -> Any:
    from postage._core.core import Core
    from postage._settings import ConnectionSettings

    return Core(ConnectionSettings.from_url(url))


async def _consume_with(api: str, url: str, queue: str, calls: Calls
                        ) -> Callable[[], Any]:
    """Start consuming ``queue`` through ``api``; returns how to close it."""
    if api == "classic":
        return await _consume_classic(url, queue, calls)
    if api == "kiwipy":
        return await _consume_kiwipy(url, queue, calls)
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


# what may run twice: the handlers running at the cut (a classic processor runs one)
BOUND = {"client": WORKERS, "communicator": WORKERS, "kiwipy": WORKERS, "classic": 1}


@pytest.mark.parametrize("api", list(BOUND))
async def test_no_handler_starts_for_a_delivery_its_channel_lost(
        fault_broker: Broker, proxy: TcpProxy, api: str) -> None:
    queue = f"fault.withdrawn.{uuid.uuid4().hex[:8]}"
    calls = Calls()
    close = None
    try:
        await _send(api, fault_broker.url, queue)
        close = await _consume_with(api, proxy.url(fault_broker.url), queue, calls)
        async with asyncio.timeout(30):
            while calls.total < 2 * BOUND[api]:
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
        core = await open_core(fault_broker.url)
        await core.delete_queue(queue)
        await core.close(2)
    twice = sum(n - 1 for n in calls.counts.values())
    print(f"\n{api}: {COUNT} messages, {BOUND[api]} handler(s) at a time, prefetch "
          f"{PREFETCH if api != 'classic' else 1}, cut after {at_cut} handler calls: "
          f"{calls.total} calls, {len(calls.counts)} distinct, run twice {twice}")
    assert twice <= BOUND[api]
