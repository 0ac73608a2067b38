"""Probes of broker behaviour that the memory broker once got wrong: each runs against
RabbitMQ and against the memory broker, and both must answer alike (or the difference is
listed in docs/testing.md and asserted here as such)."""

from __future__ import annotations

import asyncio
import decimal
import time

import pytest

from postage import (
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    Properties,
    PublishNacked,
    Unroutable,
)
from postage._core.core import Core
from postage._transport import Delivery
from postage._wire.properties import Binding, ExchangeSpec, QueueSpec
from tests.conftest import ON_RABBITMQ_4

from .conftest import Names
from .test_contract import Inbox, eventually, queue_with, ready


async def test_x_death_counts_repeated_deaths_in_one_entry(core: Core, names: Names) -> None:
    # a queue that dead-letters back to itself through a second one: rejected twice from
    # the same queue for the same reason gives one x-death entry with count 2
    first = names.queue()
    back = names.queue()
    await core.declare_queue(back, arguments={"x-dead-letter-exchange": "",
                                              "x-dead-letter-routing-key": first})
    await core.declare_queue(first, arguments={"x-dead-letter-exchange": "",
                                               "x-dead-letter-routing-key": back})
    await core.publish("", first, b"x")
    seen: list[Delivery] = []
    done = asyncio.Event()

    async def bounce(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) < 4:
            await delivery.reject(requeue=False)
        else:
            await delivery.ack()
            done.set()

    await core.transport.consume(first, bounce)
    await core.transport.consume(back, bounce)
    async with asyncio.timeout(10):
        await done.wait()
    deaths = seen[-1].headers["x-death"]
    # the latest death first; a repeated (queue, reason) counts up instead of adding one
    assert [(d["queue"], d["reason"], d["count"], d["exchange"], d["routing-keys"])
            for d in deaths] == [(first, "rejected", 2, "", [first]),
                                 (back, "rejected", 1, "", [back])]
    for death in deaths:  # an AMQP timestamp: whole seconds, UTC
        assert death["time"].tzinfo is not None and death["time"].microsecond == 0
        assert abs(death["time"].timestamp() - time.time()) < 60
    assert seen[-1].headers["x-first-death-queue"] == first
    assert seen[-1].headers["x-first-death-reason"] == "rejected"


async def test_reject_publish_overflow_nacks_the_new_message(core: Core,
                                                             names: Names) -> None:
    queue = await queue_with(core, names, arguments={"x-max-length": 1,
                                                     "x-overflow": "reject-publish"})
    await core.publish("", queue, b"first")
    started = time.monotonic()
    with pytest.raises(PublishNacked, match="reject-publish"):
        await core.publish("", queue, b"second", timeout=20)
    assert time.monotonic() - started < 3  # at once, not after the deadline
    inbox = Inbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    assert [d.body for d in await inbox.wait(1)] == [b"first"]  # the old one is kept


async def test_consumer_priority_serves_the_higher_one_first(core: Core,
                                                             names: Names) -> None:
    queue = await queue_with(core, names)
    low, high = Inbox(), Inbox()
    await core.transport.consume(queue, low, prefetch_count=10)
    await core.transport.consume(queue, high, prefetch_count=3, arguments={"x-priority": 5})
    for i in range(5):
        await core.publish("", queue, str(i).encode())
    await high.wait(3)
    await low.wait(2)
    assert [d.body for d in high.items] == [b"0", b"1", b"2"]
    assert [d.body for d in low.items] == [b"3", b"4"]
    await high.items[0].ack()
    await core.publish("", queue, b"5")  # the high one has room again: it gets it
    await high.wait(4)
    assert high.items[3].body == b"5" and len(low.items) == 2


async def test_headers_binding_compares_types(core: Core, names: Names, url: str) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "headers")
    queue = names.queue()
    await core.declare_queue(queue)
    await core.transport.bind(Binding(queue, exchange, "", (("n", 1), ("x-match", "all"))))
    for value in (True, decimal.Decimal(1), 1.0, "1", 1):
        await core.publish(exchange, "", repr(value).encode(), Properties(headers={"n": value}),
                           mandatory=False)
    inbox = Inbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    # numbers match by value (1.0 too, as RabbitMQ 3 compares them; RabbitMQ 4 matches
    # the same type only, see docs/testing.md); a boolean, a decimal or a string never
    # matches a number
    matching = [b"1"] if ON_RABBITMQ_4 and not url.startswith("memory:") else [b"1.0", b"1"]
    assert [d.body for d in await inbox.wait(len(matching))] == matching
    await asyncio.sleep(0.2)
    assert len(inbox.items) == len(matching)


async def test_stream_queues_are_refused_by_memory_only(core: Core, names: Names,
                                                        url: str) -> None:
    queue = names.queue()
    args = {"x-queue-type": "stream"}
    if url.startswith("memory:"):  # listed in docs/testing.md
        with pytest.raises(PreconditionFailed, match="stream"):
            await core.declare_queue(queue, durable=True, arguments=args)
    else:
        await core.declare_queue(queue, durable=True, arguments=args)
    # both refuse a stream that is not durable (which Postage declares durable on
    # RabbitMQ 4, see Transport.declare_queue)
    if ON_RABBITMQ_4 and not url.startswith("memory:"):
        return
    with pytest.raises(PreconditionFailed):
        await core.declare_queue(names.queue(), arguments=args)


async def test_auto_delete_exchange_goes_with_its_last_binding(core: Core,
                                                               names: Names) -> None:
    exchange = names.exchange()
    await core.transport.declare_exchange(ExchangeSpec(exchange, "direct", auto_delete=True))
    untouched = names.exchange()
    await core.transport.declare_exchange(ExchangeSpec(untouched, "direct", auto_delete=True))
    q1, q2 = names.queue(), names.queue()
    for queue in (q1, q2):
        await core.declare_queue(queue)
        await core.bind(queue, exchange, "k")
    await core.transport.unbind(Binding(q1, exchange, "k"))
    await core.publish(exchange, "k", b"still here")  # one binding left: it stays
    await core.transport.delete_queue(q2)  # the last binding goes with its queue

    async def gone() -> bool:
        try:
            await core.publish(exchange, "k", b"x", mandatory=False, timeout=2)
        except NotFound:
            return True
        return False

    await eventually(gone)
    # an auto-delete exchange that never had a binding stays
    await core.publish(untouched, "k", b"x", mandatory=False)


async def test_names_over_255_bytes_are_refused_before_sending(core: Core,
                                                               names: Names) -> None:
    long = "q" * 256
    with pytest.raises(ConfigurationError, match="255"):
        await core.transport.declare_queue(QueueSpec(long))
    with pytest.raises(ConfigurationError, match="255"):
        await core.transport.declare_exchange(ExchangeSpec("é" * 128, "direct"))
    queue = await queue_with(core, names)
    with pytest.raises(ConfigurationError, match="255"):
        await core.transport.publish("", "k" * 300, b"x", mandatory=False)
    with pytest.raises(ConfigurationError, match="255"):
        await core.transport.bind(Binding(queue, "amq.direct", "k" * 300))
    await core.publish("", queue, b"the connection still works")
    assert await ready(core, queue) == 1


async def test_mandatory_publish_to_a_live_reply_address_is_unroutable(core: Core) -> None:
    # RabbitMQ delivers it to the reply consumer and also returns it (NO_ROUTE): the
    # address is not a queue. Postage sends replies without mandatory.
    replies = Inbox()
    await core.transport.consume_replies(replies)
    address = await _reply_address(core)
    with pytest.raises(Unroutable):
        await core.transport.publish("", address, b"mandatory", mandatory=True)
    await core.transport.publish("", address, b"plain", mandatory=False)
    got = await replies.wait(2)
    await asyncio.sleep(0.2)
    assert [d.body for d in got] == [b"mandatory", b"plain"]


async def _reply_address(core: Core) -> str:
    """The direct reply-to address of this connection, as a request carries it."""
    seen: list[str] = []
    probe = f"reply-address-probe.{id(core)}"
    await core.declare_queue(probe, exclusive=True, auto_delete=True)
    inbox = Inbox()
    await core.transport.consume(probe, inbox, no_ack=True)
    await core.transport.publish("", probe, b"?", Properties(
        reply_to="amq.rabbitmq.reply-to"), mandatory=True)
    [request] = await inbox.wait(1)
    assert request.reply_to is not None and request.reply_to.startswith(
        "amq.rabbitmq.reply-to.")
    seen.append(request.reply_to)
    return seen[0]


async def test_alternate_exchange_only_when_no_binding_matches(core: Core,
                                                               names: Names) -> None:
    alternate, first, second = names.exchange("ae"), names.exchange(), names.exchange()
    await core.declare_exchange(alternate, "fanout")
    caught = await queue_with(core, names, alternate, "")
    await core.transport.declare_exchange(ExchangeSpec.make(
        first, "topic", arguments={"alternate-exchange": alternate}))
    await core.declare_exchange(second, "direct")  # binds no queue
    await core.transport.bind(Binding(second, first, "to-second.#", to_exchange=True))
    # a binding to an exchange matched: that counts as routed, even though it ends nowhere
    await core.publish(first, "to-second.a", b"through", mandatory=False)
    await core.publish(first, "elsewhere", b"caught", mandatory=False)  # no binding matched
    inbox = Inbox()
    await core.transport.consume(caught, inbox, no_ack=True)
    assert [d.body for d in await inbox.wait(1)] == [b"caught"]
    await asyncio.sleep(0.2)
    assert len(inbox.items) == 1


async def test_a_message_expires_only_at_the_head_of_its_queue(core: Core,
                                                               names: Names) -> None:
    dead = await queue_with(core, names)
    queue = await queue_with(core, names, arguments={"x-dead-letter-exchange": "",
                                                     "x-dead-letter-routing-key": dead})
    await core.publish("", queue, b"long", Properties(expiration="60000"))
    await core.publish("", queue, b"short", Properties(expiration="50"))
    await asyncio.sleep(0.3)
    assert await ready(core, dead) == 0  # expired, but behind a message that is not
    inbox = Inbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    assert [d.body for d in await inbox.wait(1)] == [b"long"]
    letters = Inbox()
    await core.transport.consume(dead, letters, no_ack=True)
    [letter] = await letters.wait(1)
    assert letter.body == b"short" and letter.properties.expiration is None
    [death] = letter.headers["x-death"]
    assert (death["reason"], death["original-expiration"]) == ("expired", "50")
    await asyncio.sleep(0.1)
    assert len(inbox.items) == 1
