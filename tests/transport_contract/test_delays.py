"""Delayed messages and retries with back-off: the same on RabbitMQ and the memory broker
(which runs the same delay queues on its own clock)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from postage import ConfigurationError, Properties, RetryPolicy
from postage._core.core import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_EXCHANGE,
    HEADER_REASON,
    HEADER_ROUTING_KEY,
    Core,
    HandlingOptions,
)
from postage._core.delays import HEADER_DELAY
from postage._core.middleware import IncomingMessage

from .conftest import Names
from .test_contract import Inbox, queue_with

SLACK = 0.4  # s: a loaded CI machine, two transports


class TimedInbox(Inbox):
    """An inbox that notes when each delivery came (``times``, in step with ``items``)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def __call__(self, delivery: Any) -> None:
        self.times.append(time.monotonic())
        await super().__call__(delivery)


async def test_a_delayed_message_reaches_its_queue_later(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    inbox = TimedInbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    # the delay queues and the route back are declared once per connection (28 quorum
    # queues on RabbitMQ: about 0.4 s); declared first, as a retrying consumer does, so
    # that the time below is the message's wait
    await core.outbound.delays.prepare(queue)
    started = time.monotonic()
    await core.publish("", queue, b"later", Properties(headers={"mine": 1}), delay=0.6)
    await core.publish("", queue, b"now")
    [now, later] = await inbox.wait(2)
    assert (now.body, later.body) == (b"now", b"later")
    waited = inbox.times[1] - started
    assert 0.55 <= waited <= 0.6 + SLACK, waited
    # where it was sent, as the consumer's pipeline reads it, and the delay it had
    assert later.headers[HEADER_EXCHANGE] == "" and later.headers[HEADER_ROUTING_KEY] == queue
    assert later.headers[HEADER_DELAY] == 600 and later.headers["mine"] == 1


async def test_a_delayed_message_through_an_exchange_keeps_its_routing_key(
        core: Core, names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    wanted = await queue_with(core, names, exchange, "rk")
    other = await queue_with(core, names, exchange, "other")
    inbox, others = TimedInbox(), Inbox()
    await core.transport.consume(wanted, inbox, no_ack=True)
    await core.transport.consume(other, others, no_ack=True)
    await core.publish(exchange, "rk", b"x", delay=0.3)
    [got] = await inbox.wait(1)
    assert got.headers[HEADER_ROUTING_KEY] == "rk" and got.headers[HEADER_EXCHANGE] == exchange
    await asyncio.sleep(0.3)
    assert others.items == []


async def test_a_short_delay_does_not_wait_behind_a_long_one(core: Core,
                                                            names: Names) -> None:
    queue = await queue_with(core, names)
    inbox = TimedInbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    started = time.monotonic()
    await core.publish("", queue, b"long", delay=1.5)
    await core.publish("", queue, b"short", delay=0.2)
    [first, second] = await inbox.wait(2)
    assert (first.body, second.body) == (b"short", b"long")
    assert inbox.times[0] - started <= 0.2 + SLACK


@pytest.mark.parametrize("gone", ["queue", "exchange"])
async def test_a_target_gone_by_then_ends_in_the_unrouted_queue(core: Core, names: Names,
                                                                gone: str) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    queue = await queue_with(core, names, exchange, "rk")
    marker = names.identifier("gone").encode()
    if gone == "queue":  # sent to the queue itself, which is deleted meanwhile
        await core.publish("", queue, marker, delay=0.4)
        await core.transport.delete_queue(queue)
    else:  # sent through the exchange, which is deleted meanwhile
        await core.publish(exchange, "rk", marker, delay=0.4)
        await core.transport.delete_exchange(exchange)
    unrouted = Inbox()
    await core.transport.consume(core.outbound.delays.names.unrouted, unrouted, no_ack=True)
    async with asyncio.timeout(10):
        while not any(d.body == marker for d in unrouted.items):
            await asyncio.sleep(0.05)


async def test_bad_delays_are_refused(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    for bad in (-1.0, 10.0**9):
        with pytest.raises(ConfigurationError, match="delay"):
            await core.publish("", queue, b"x", delay=bad)


async def test_retries_back_off(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    tries: list[tuple[float, IncomingMessage]] = []
    done = asyncio.Event()

    async def flaky(message: IncomingMessage) -> None:
        tries.append((time.monotonic(), message))
        if len(tries) < 3:
            raise RuntimeError(f"down ({len(tries)})")
        done.set()

    policy = RetryPolicy(max_attempts=3, delay=0.3, multiplier=2, jitter=0)
    await core.consume(queue, flaky, HandlingOptions(policy))
    await core.publish("", queue, b"job")
    async with asyncio.timeout(15):
        await done.wait()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(tries)]
    assert 0.28 <= gaps[0] <= 0.3 + SLACK and 0.58 <= gaps[1] <= 0.6 + SLACK, gaps
    last = tries[-1][1]
    assert last.attempt == 3 and last.routing_key == queue
    headers = last.delivery.headers
    assert headers[HEADER_ATTEMPTS] == 2 and headers[HEADER_ERROR] == "RuntimeError: down (2)"
    assert headers["x-postage-first-failed"] <= headers["x-postage-last-failed"]


async def test_no_retry_exceptions_go_to_the_dlq_at_once(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    calls: list[int] = []

    async def handler(_message: IncomingMessage) -> None:
        calls.append(1)
        raise KeyError("bad input")

    policy = RetryPolicy(max_attempts=5, delay=0.1, no_retry=(KeyError,))
    await core.consume(queue, handler, HandlingOptions(policy))
    await core.publish("", queue, b"job")
    letters = Inbox()
    await core.transport.consume(f"{queue}.dlq", letters, no_ack=True)
    [letter] = await letters.wait(1)
    assert calls == [1] and letter.headers[HEADER_REASON] == "handler-failed"


def test_policy_checks_its_fields() -> None:
    for bad in ({"delay": -1}, {"multiplier": 0.5}, {"jitter": 2}, {"no_retry": (int,)}):
        with pytest.raises(ConfigurationError):
            RetryPolicy(**bad)  # type: ignore[arg-type]
    policy = RetryPolicy(delay=1, multiplier=3, max_delay=5, jitter=0)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [1, 3, 5]
    jittery = RetryPolicy(delay=10, jitter=0.2)
    assert all(8 <= jittery.delay_after(1) <= 12 for _ in range(100))
    assert RetryPolicy().delay_after(1) == 0
