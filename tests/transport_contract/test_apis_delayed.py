"""``delay=``/``not_before=`` and retry back-off on every API, on a memory broker whose
clock the test moves (an hour passes in no time), as a user's tests would do."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import postage
import postage.aio
from postage import RetryPolicy, messaging
from postage._api.classic import runtime as _runtime
from postage.testing import ManualClock, MemoryBroker, forget_broker, fresh_broker
from tests.classic.conftest import running
from tests.classic.test_integration import Calls, exchange_cls, make_processor, producer_for

HOUR = 3600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def broker(clock: ManualClock) -> Iterator[MemoryBroker]:
    broker = fresh_broker("delayed", clock=clock)
    yield broker
    forget_broker(broker)


def until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


async def _advance(clock: ManualClock, seconds: float, until: Any, timeout: float = 5) -> None:
    """Move the clock on, then let the event loop deliver, until ``until()`` holds."""
    clock.advance(seconds)
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "nothing came"
        await asyncio.sleep(0.01)


async def test_async_client_publishes_an_hour_later(broker: MemoryBroker,
                                                    clock: ManualClock) -> None:
    async with postage.AsyncClient(broker.url) as client:
        await client.core.declare_queue("reports", durable=True)
        await client.publish("", "reports", b"nightly", delay=HOUR)
        clock.advance(HOUR - 1)
        await asyncio.sleep(0.05)
        assert broker.message_count("reports") == 0
        await _advance(clock, 1, lambda: broker.message_count("reports") == 1)
        not_before = datetime.datetime.now() + datetime.timedelta(minutes=30)
        await client.publish("", "reports", b"later", not_before=not_before)
        await _advance(clock, 30 * 60, lambda: broker.message_count("reports") == 2)
        with pytest.raises(postage.ConfigurationError, match="not both"):
            await client.publish("", "reports", b"x", delay=1, not_before=not_before)


async def test_communicator_task_and_broadcast_later(broker: MemoryBroker,
                                                     clock: ManualClock) -> None:
    async with postage.aio.connect(broker.url, task_queue=f"t-{uuid.uuid4().hex[:6]}") as comm:
        done: list[Any] = []
        heard: list[Any] = []
        await comm.add_task_subscriber(lambda _c, task: done.append(task))
        await comm.add_broadcast_subscriber(lambda _c, body, *_: heard.append(body))
        result = await comm.task_send("resize", delay=90)
        assert await comm.task_send("cleanup", no_reply=True, delay=120) is None
        await comm.broadcast_send("maintenance at noon", delay=60)
        await _advance(clock, 60, lambda: heard == ["maintenance at noon"])
        assert done == []
        await _advance(clock, 30, lambda: done == ["resize"])
        assert await asyncio.wait_for(result, 5) is None
        await _advance(clock, 30, lambda: done == ["resize", "cleanup"])


async def test_task_retries_back_off_on_the_connection_policy(broker: MemoryBroker,
                                                              clock: ManualClock) -> None:
    policy = RetryPolicy(delay=10, multiplier=3, jitter=0)
    tries: list[float] = []

    def flaky(_comm: Any, _task: Any) -> str:
        tries.append(clock.now())
        if len(tries) < 3:
            raise RuntimeError("down")
        return "ok"

    async with postage.aio.connect(broker.url, retry_policy=policy,
                                   task_queue=f"t-{uuid.uuid4().hex[:6]}") as comm:
        await comm.add_task_subscriber(flaky)
        result = await comm.task_send("job")
        await _advance(clock, 0, lambda: len(tries) == 1 and broker.delayed_count() == 1)
        await _advance(clock, 10, lambda: len(tries) == 2 and broker.delayed_count() == 1)
        await _advance(clock, 30, lambda: len(tries) == 3)
        assert await asyncio.wait_for(result, 5) == "ok"
    assert tries == [0, 10, 40]


def test_classic_producer_sends_later(broker: MemoryBroker, clock: ManualClock,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTAGE_URL", broker.url)
    exchange = exchange_cls(uuid.uuid4().hex[:8])
    calls = Calls()
    try:
        with running(make_processor(exchange, "classic-later", calls)):
            producer = producer_for(exchange)
            producer.message_work("tomorrow", _delay=86400)
            producer.message_work("soon", _not_before=datetime.datetime.now(datetime.UTC)
                                  + datetime.timedelta(seconds=5))
            clock.advance(5)
            assert calls.wait_sync(1) == [("work", "soon")]
            clock.advance(86400)
            assert calls.wait_sync(2)[1] == ("work", "tomorrow")
            assert isinstance(producer.rpc_echo("x", _delay=0.0), messaging.MessageResult)
    finally:
        _runtime.close_all()


def test_classic_processor_retries_with_back_off(broker: MemoryBroker, clock: ManualClock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTAGE_URL", broker.url)
    exchange = exchange_cls(uuid.uuid4().hex[:8])
    tries: list[float] = []

    class Flaky(messaging.MessageProcessor):
        retry_policy = RetryPolicy(max_attempts=3, delay=30, multiplier=2, jitter=0)

        @messaging.MessageHandler("command", "work")
        def msg_work(self, content: Any) -> None:
            tries.append(clock.now())
            if len(tries) < 3:
                raise ConnectionError("the printer is off")

    processor = Flaky({"name": "flaky"}, [(exchange, [("classic-flaky", "rk")])], None, None)
    try:
        with running(processor):
            producer_for(exchange).message_work("print")
            until(lambda: len(tries) == 1 and broker.delayed_count() == 1)  # sent back to wait
            clock.advance(30)
            until(lambda: len(tries) == 2 and broker.delayed_count() == 1)
            clock.advance(60)
            until(lambda: len(tries) == 3)
    finally:
        _runtime.close_all()
    assert tries == [0, 30, 90]
    assert broker.message_count("classic-flaky.dlq") == 0
