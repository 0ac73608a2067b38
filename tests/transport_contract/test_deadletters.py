"""``postage.dlq``: reading, replaying and purging dead letters, on both transports."""

from __future__ import annotations

import asyncio
import json

import pytest

from postage import ConfigurationError, RetryPolicy, dlq
from postage._core.core import Core, HandlingOptions
from postage._core.middleware import IncomingMessage

from .conftest import Names
from .test_contract import Inbox, queue_with


async def _dead_letters(core: Core, names: Names, count: int) -> tuple[str, str, str]:
    """(exchange, queue, dlq) with ``count`` messages dead-lettered by a failing handler."""
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    queue = await queue_with(core, names, exchange, "orders")

    async def failing(message: IncomingMessage) -> None:
        order = json.loads(message.delivery.body)["order"]
        raise ValueError("price missing" if order % 2 else "no stock")

    sub = await core.consume(queue, failing, HandlingOptions(RetryPolicy(max_attempts=2)))
    for order in range(1, count + 1):
        await core.publish(exchange, "orders", json.dumps({"order": order}).encode())
    async with asyncio.timeout(10):
        while (await core.queue_state(f"{queue}.dlq"))[0] < count:
            await asyncio.sleep(0.02)
    await sub.cancel()
    return exchange, queue, f"{queue}.dlq"


def _orders(bodies: list[bytes]) -> list[int]:
    return [json.loads(b)["order"] for b in bodies]


async def test_peek_reads_why_and_leaves_them_in_order(core: Core, names: Names) -> None:
    exchange, queue, dead = await _dead_letters(core, names, 4)
    letters = await dlq.peek(core, dead, 3)
    assert _orders([letter.body for letter in letters]) == [1, 2, 3]
    first = letters[0]
    assert (first.reason, first.error, first.attempts) == (
        "handler-failed", "ValueError: price missing", 2)
    assert (first.queue, first.exchange, first.routing_key) == (queue, exchange, "orders")
    assert first.first_failed is not None and first.dead_lettered is not None
    assert first.as_dict()["body"] == '{"order": 1}'
    # nothing was taken, and the order is kept
    assert _orders([letter.body for letter in await dlq.peek(core, dead, 10)]) == [1, 2, 3, 4]
    count, oldest = await dlq.summary(core, dead)
    assert count == 4 and oldest == first.dead_lettered


async def test_replay_sends_back_only_what_where_accepts(core: Core, names: Names) -> None:
    _exchange, queue, dead = await _dead_letters(core, names, 5)
    where = dlq.Where.parse(["error~price", "attempts=2"])
    report = await dlq.replay(core, dead, where=where)
    assert (report.replayed, report.kept, report.failed) == (3, 2, [])
    back = Inbox()
    await core.transport.consume(queue, back, no_ack=True)
    got = await back.wait(3)
    assert _orders([d.body for d in got]) == [1, 3, 5]
    assert got[0].headers == {"x-postage-replays": 1}  # why it died is gone
    assert _orders([letter.body for letter in await dlq.peek(core, dead, 10)]) == [2, 4]
    assert (await dlq.replay(core, dead, limit=1)).replayed == 1
    assert await dlq.purge(core, dead) == 1
    assert (await core.queue_state(dead))[0] == 0


async def test_a_message_whose_target_is_gone_is_kept(core: Core, names: Names) -> None:
    _exchange, queue, dead = await _dead_letters(core, names, 2)
    await core.transport.delete_queue(queue)  # the exchange routes nowhere now
    report = await dlq.replay(core, dead)  # back to its queue: gone
    assert report.replayed == 0 and len(report.failed) == 2
    assert queue in report.failed[0] and (await core.queue_state(dead))[0] == 2
    # to the exchange and routing key of its headers (only when asked): routes nowhere
    report = await dlq.replay(core, dead, to_original=True)
    assert report.replayed == 0 and len(report.failed) == 2
    assert "orders" in report.failed[0] and (await core.queue_state(dead))[0] == 2


def test_where_reads_conditions_and_runs_no_code() -> None:
    for bad in ("reason", "__import__('os')=1", "nosuchfield=1", "reason>1"):
        with pytest.raises(ConfigurationError, match="FIELD"):
            dlq.Where.parse([bad])
    where = dlq.Where.parse(["header.tenant=acme", "reason!=undecodable"])
    assert where.conditions == (("header.tenant", "=", "acme"),
                                ("reason", "!=", "undecodable"))
