"""The core's behaviour, the same against RabbitMQ and the in-memory broker.

Each test runs twice (see ``conftest.url``); the memory half needs no RabbitMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from postage import (
    ChannelError,
    ConnectionClosed,
    EncodingError,
    NotFound,
    OperationRefused,
    PreconditionFailed,
    Properties,
    Reject,
    RetryPolicy,
    RpcTimeout,
    Unroutable,
)
from postage._core.core import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_QUEUE,
    HEADER_REASON,
    Core,
    open_core,
)
from postage._transport import Delivery
from postage._wire.properties import Binding
from tests.conftest import ON_RABBITMQ_4

from .conftest import Names

WAIT = 10.0


class Inbox:
    """Deliveries of a queue consumed through the raw transport (settled by the test)."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self._changed.set()

    async def wait(self, count: int, timeout: float = WAIT) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def queue_with(core: Core, names: Names, exchange: str | None = None,
                     key: str = "k", **flags: object) -> str:
    queue = names.queue()
    await core.declare_queue(queue, **flags)  # type: ignore[arg-type]
    if exchange is not None:
        await core.bind(queue, exchange, key)
    return queue


async def ready(core: Core, queue: str) -> int:
    return (await core.transport.queue_state(queue))[0]


async def _ready_is(core: Core, queue: str, count: int) -> bool:
    return await ready(core, queue) == count


# -- publishing and routing ---------------------------------------------------------------


async def test_publish_consume_round_trip(core: Core, names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    queue = await queue_with(core, names, exchange)
    props = Properties(content_type="text/plain",
                       headers={"h": 1, "t": ["a", 2], "f": 0.1, "n": None, "d": {"x": True}},
                       correlation_id="c1", message_id="m1", type="greeting")
    await core.publish(exchange, "k", b"hello", props)
    inbox = Inbox()
    await core.transport.consume(queue, inbox)
    [d] = await inbox.wait(1)
    assert d.body == b"hello"
    assert d.content_type == "text/plain"
    assert d.headers == {"h": 1, "t": ["a", 2], "f": pytest.approx(0.1), "n": None,
                         "d": {"x": True}}
    assert (d.correlation_id, d.properties.message_id, d.properties.type) == ("c1", "m1",
                                                                               "greeting")
    assert (d.exchange, d.routing_key, d.redelivered) == (exchange, "k", False)
    assert await d.ack()
    assert await ready(core, queue) == 0


async def test_header_values_the_wire_cannot_carry_fail(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    for bad in (("a", 1), b"bytes", object()):
        with pytest.raises(EncodingError):
            await core.publish("", queue, b"x", Properties(headers={"bad": bad}))
    assert await ready(core, queue) == 0


async def test_messages_keep_their_order(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    for i in range(20):
        await core.publish("", queue, str(i).encode())
    inbox = Inbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    got = await inbox.wait(20)
    assert [d.body for d in got] == [str(i).encode() for i in range(20)]


async def test_mandatory_message_reaching_no_queue_is_unroutable(core: Core,
                                                                 names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    await queue_with(core, names, exchange, "bound")
    with pytest.raises(Unroutable) as info:
        await core.publish(exchange, "other", b"x")
    assert (info.value.exchange, info.value.routing_key) == (exchange, "other")
    await core.publish(exchange, "other", b"x", mandatory=False)  # dropped silently
    with pytest.raises(Unroutable):
        await core.publish("", names.queue("absent"), b"x")


async def test_publish_to_missing_exchange_is_not_found(core: Core, names: Names) -> None:
    with pytest.raises(NotFound):
        await core.publish(names.exchange("absent"), "k", b"x")
    with pytest.raises(NotFound):
        await core.declare_exchange(names.exchange("absent"), passive=True)


async def test_topic_routing(core: Core, names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "topic")
    patterns = ["a.*", "a.#", "#.c", "*", "#", "a.*.c"]
    queues = {p: await queue_with(core, names, exchange, p) for p in patterns}
    for key in ["a.b", "a.b.c", "a", "x.c", "a.b.b.c", ""]:
        await core.publish(exchange, key, key.encode(), mandatory=False)
    counts = {p: await ready(core, q) for p, q in queues.items()}
    # a.*: a.b | a.#: a.b a.b.c a a.b.b.c | #.c: a.b.c x.c a.b.b.c | *: a | #: all | a.*.c
    assert counts == {"a.*": 1, "a.#": 4, "#.c": 3, "*": 1, "#": 6, "a.*.c": 1}


async def test_fanout_reaches_every_bound_queue(core: Core, names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "fanout")
    q1 = await queue_with(core, names, exchange, "ignored")
    q2 = await queue_with(core, names, exchange, "")
    await core.publish(exchange, "any key", b"x")
    assert (await ready(core, q1), await ready(core, q2)) == (1, 1)
    await core.unbind(q2, exchange, "")
    await core.publish(exchange, "any key", b"y")
    assert (await ready(core, q1), await ready(core, q2)) == (2, 1)


async def test_headers_exchange(core: Core, names: Names) -> None:
    exchange = names.exchange()
    await core.declare_exchange(exchange, "headers")
    q_all, q_any = names.queue(), names.queue()
    for queue, match in ((q_all, "all"), (q_any, "any")):
        await core.declare_queue(queue)
        await core.transport.bind(Binding(queue, exchange, "", (
            ("color", "red"), ("size", 1), ("x-match", match))))
    for headers in ({"color": "red", "size": 1}, {"color": "red"}, {"size": 2}):
        await core.publish(exchange, "", b"x", Properties(headers=headers), mandatory=False)
    assert (await ready(core, q_all), await ready(core, q_any)) == (1, 2)


# -- topology -----------------------------------------------------------------------------


async def test_redeclaring_with_other_flags_fails(core: Core, names: Names) -> None:
    queue = names.queue()
    assert await core.declare_queue(queue, durable=True) == (0, 0)
    await core.publish("", queue, b"x")
    assert await core.declare_queue(queue, durable=True) == (1, 0)
    with pytest.raises(PreconditionFailed):
        await core.declare_queue(queue, durable=True, auto_delete=True)
    with pytest.raises(PreconditionFailed):
        await core.declare_queue(queue, durable=True, arguments={"x-max-length": 5})
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    with pytest.raises(PreconditionFailed):
        await core.declare_exchange(exchange, "topic")
    await core.declare_exchange(exchange, "direct")  # the same again is fine


async def test_a_refusal_that_closes_the_connection_fails_at_once(core: Core, names: Names,
                                                                  url: str) -> None:
    """RabbitMQ refuses some operations with a hard error, closing the whole connection
    (an unknown exchange type here; RabbitMQ 4's denied deprecated features too): the
    operation fails at once with the broker's reason and what to change, it is not waited
    out as a lost link, and the connection (opened again) serves what comes next."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    if ON_RABBITMQ_4 and not url.startswith("memory:"):  # a channel error there
        with pytest.raises(PreconditionFailed, match="no-such-type"):
            await core.declare_exchange(names.exchange(), "no-such-type")
    else:
        with pytest.raises(OperationRefused,
                           match=r"unknown exchange type 'no-such-type'.*plugin") as refusal:
            await core.declare_exchange(names.exchange(), "no-such-type")
        assert refusal.value.reply_code == 503
    assert loop.time() - started < 5  # not the 30 s deadline
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    queue = await queue_with(core, names, exchange)
    await core.publish(exchange, "k", b"after")
    inbox = Inbox()
    await core.transport.consume(queue, inbox)
    [d] = await inbox.wait(1)
    assert d.body == b"after"
    assert await d.ack()


async def test_missing_queue_is_not_found(core: Core, names: Names) -> None:
    absent = names.queue("absent")
    with pytest.raises(NotFound):
        await core.transport.queue_state(absent)
    with pytest.raises(NotFound):
        await core.transport.consume(absent, Inbox())
    exchange = names.exchange()
    await core.declare_exchange(exchange, "direct")
    with pytest.raises(NotFound):
        await core.bind(absent, exchange, "k")


async def test_exclusive_queue_belongs_to_its_connection(core: Core, names: Names,
                                                         url: str) -> None:
    queue = await queue_with(core, names, exclusive=True)
    other = await open_core(url)
    try:
        with pytest.raises(ChannelError) as info:
            await other.declare_queue(queue, exclusive=True)
        assert info.value.reply_code == 405
    finally:
        await other.close(5)
    owner = await open_core(url)
    mine = await queue_with(owner, names, exclusive=True)
    await owner.close(5)
    # gone with its connection: at once, or (aiormq 6.9 does not wait for the broker's
    # close-ok) within moments
    for _ in range(40):
        try:
            await core.transport.queue_state(mine)
        except NotFound:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(NotFound):
        await core.transport.queue_state(mine)


async def test_auto_delete_queue_goes_with_its_last_consumer(core: Core, names: Names) -> None:
    queue = await queue_with(core, names, auto_delete=True)
    first = await core.transport.consume(queue, Inbox())
    second = await core.transport.consume(queue, Inbox())
    await first.cancel()
    assert (await core.transport.queue_state(queue))[1] == 1
    await second.cancel()

    async def gone() -> bool:
        try:
            await core.transport.queue_state(queue)
        except NotFound:
            return True
        return False

    await eventually(gone)


async def test_default_exchange_takes_no_bindings(core: Core, names: Names) -> None:
    from postage import AccessRefused

    queue = await queue_with(core, names)
    with pytest.raises(AccessRefused):
        await core.bind(queue, "", "k")


async def test_closed_core_refuses_to_publish(url: str, names: Names) -> None:
    c = await open_core(url)
    await c.close(5)
    with pytest.raises(ConnectionClosed):
        await c.publish("", names.queue(), b"x")


# -- acknowledgements ---------------------------------------------------------------------


async def test_nack_requeues_at_the_head_flagged_redelivered(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    for body in (b"1", b"2", b"3"):
        await core.publish("", queue, body)
    inbox = Inbox()
    await core.transport.consume(queue, inbox, prefetch_count=1)
    [first] = await inbox.wait(1)
    assert (first.body, first.redelivered) == (b"1", False)
    assert await first.nack(requeue=True)
    second = (await inbox.wait(2))[1]
    assert (second.body, second.redelivered) == (b"1", True)
    await second.ack()
    third = (await inbox.wait(3))[2]
    assert (third.body, third.redelivered) == (b"2", False)
    await third.reject(requeue=False)  # dropped
    fourth = (await inbox.wait(4))[3]
    assert fourth.body == b"3"
    await fourth.ack()
    assert await ready(core, queue) == 0


async def test_get_takes_the_oldest_message_and_the_caller_settles_it(core: Core,
                                                                      names: Names) -> None:
    queue = await queue_with(core, names)
    assert await core.get(queue) is None  # nothing ready
    for body in (b"1", b"2"):
        await core.publish("", queue, body, Properties(message_id=f"m{body.decode()}"))
    first = await core.get(queue)
    assert first is not None
    assert (first.body, first.redelivered, first.properties.message_id) == (b"1", False, "m1")
    assert await ready(core, queue) == 1  # taken, not yet settled
    assert await first.nack(requeue=True)
    again = await core.get(queue)
    assert again is not None and (again.body, again.redelivered) == (b"1", True)
    assert await again.ack()
    second = await core.get(queue)
    assert second is not None and second.body == b"2"
    assert await second.reject(requeue=False)
    assert await core.get(queue) is None
    assert await ready(core, queue) == 0


async def test_get_from_a_missing_queue_is_not_found_and_harms_nothing(core: Core,
                                                                        names: Names) -> None:
    queue = await queue_with(core, names)
    await core.publish("", queue, b"kept")
    taken = await core.get(queue)
    assert taken is not None
    control = getattr(core.transport, "_control", None)
    with pytest.raises(NotFound):
        await core.get(names.queue("absent"))
    # declarations go on as before (on RabbitMQ, on the same control channel: the refused
    # get closed only the channel of gets), and so do gets
    assert getattr(core.transport, "_control", None) is control
    other = await queue_with(core, names)
    await core.publish("", other, b"next")
    got = await core.get(other)
    assert got is not None and got.body == b"next"
    assert await got.ack()
    # the message taken before, on the channel the refusal closed, went back to its
    # queue; settling it now reports the closed channel
    assert not await taken.ack()
    await eventually(lambda: _ready_is(core, queue, 1))


async def test_unsettled_messages_return_when_the_consumer_goes(core: Core,
                                                                names: Names) -> None:
    queue = await queue_with(core, names)
    await core.publish("", queue, b"a")
    await core.publish("", queue, b"b")
    inbox = Inbox()
    consumer = await core.transport.consume(queue, inbox)
    first, second = await inbox.wait(2)
    await first.ack()
    await consumer.cancel()
    assert not await second.ack()  # too late: its channel closed
    assert await ready(core, queue) == 1
    again = Inbox()
    await core.transport.consume(queue, again)
    [d] = await again.wait(1)
    assert (d.body, d.redelivered) == (b"b", True)


async def test_subscription_acks_after_the_handler(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(d: Delivery) -> None:
        started.set()
        await release.wait()

    await core.subscribe(queue, handler)
    await core.publish("", queue, b"x")
    await asyncio.wait_for(started.wait(), WAIT)
    other = await open_core(core.settings.urls[0])  # a second connection sees the queue
    try:
        assert await other.transport.queue_state(queue) == (0, 1)
        release.set()
        sub = next(iter(core._subscriptions))
        assert sub.consumer is not None

        async def idle() -> bool:
            return sub.consumer is not None and sub.consumer.in_flight == 0

        await eventually(idle)
        await sub.cancel()
        assert await other.transport.queue_state(queue) == (0, 0)  # acked, not requeued
    finally:
        await other.close(5)


async def test_prefetch_bounds_unsettled_deliveries(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    for i in range(5):
        await core.publish("", queue, str(i).encode())
    inbox = Inbox()
    await core.transport.consume(queue, inbox, prefetch_count=2)
    got = await inbox.wait(2)
    await asyncio.sleep(0.2)  # room for a wrong third delivery to show up
    assert len(got) == 2
    assert await ready(core, queue) == 3
    await got[0].ack()
    await inbox.wait(3)
    await asyncio.sleep(0.2)
    assert [d.body for d in inbox.items] == [b"0", b"1", b"2"]


async def test_consumers_share_a_queue_round_robin(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    a, b = Inbox(), Inbox()
    await core.transport.consume(queue, a, no_ack=True)
    await core.transport.consume(queue, b, no_ack=True)
    for i in range(6):
        await core.publish("", queue, str(i).encode())
    async with asyncio.timeout(WAIT):
        while len(a.items) + len(b.items) < 6:
            await asyncio.sleep(0.01)
    assert (len(a.items), len(b.items)) == (3, 3)


async def test_quorum_queue_counts_deliveries(core: Core, names: Names) -> None:
    queue = await queue_with(core, names, quorum=True)
    await core.publish("", queue, b"x")
    inbox = Inbox()
    await core.transport.consume(queue, inbox, prefetch_count=1)
    [first] = await inbox.wait(1)
    assert "x-delivery-count" not in first.headers
    await first.nack(requeue=True)
    second = (await inbox.wait(2))[1]
    assert second.redelivered
    assert second.headers["x-delivery-count"] == 1
    await second.ack()


async def test_broker_dead_letter_exchange_and_max_length(core: Core, names: Names) -> None:
    dlx = names.exchange("dlx")
    await core.declare_exchange(dlx, "fanout")
    dead = await queue_with(core, names, dlx, "")
    queue = await queue_with(core, names, arguments={"x-dead-letter-exchange": dlx,
                                                     "x-max-length": 2})
    for body in (b"1", b"2", b"3"):
        await core.publish("", queue, body)
    assert (await ready(core, queue), await ready(core, dead)) == (2, 1)  # 1 dropped
    inbox = Inbox()
    await core.transport.consume(queue, inbox)
    first = (await inbox.wait(1))[0]
    assert first.body == b"2"
    await first.reject(requeue=False)
    await eventually(lambda: _equals(ready(core, dead), 2))
    letters = Inbox()
    await core.transport.consume(dead, letters, no_ack=True)
    got = await letters.wait(2)
    assert [d.body for d in got] == [b"1", b"2"]
    assert [d.headers["x-death"][0]["reason"] for d in got] == ["maxlen", "rejected"]
    assert got[1].headers["x-first-death-queue"] == queue


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_deleted_queue_is_redeclared_for_its_consumer(core: Core, names: Names,
                                                            url: str) -> None:
    queue = await queue_with(core, names)
    inbox = Inbox()
    await core.transport.consume(queue, inbox, no_ack=True)
    other = await open_core(url)
    try:
        await other.transport.delete_queue(queue)

        async def consumed_again() -> bool:
            try:
                await other.publish("", queue, b"again")
            except Unroutable:
                return False
            return True

        await eventually(consumed_again)
        [d] = await inbox.wait(1)
        assert d.body == b"again"
    finally:
        await other.close(5)


# -- handler policy: retries and dead letters ----------------------------------------------


async def _dead_letters(core: Core, queue: str, count: int) -> list[Delivery]:
    inbox = Inbox()
    await core.transport.consume(f"{queue}.dlq", inbox, no_ack=True)
    return await inbox.wait(count)


async def test_failing_handler_is_retried_then_dead_lettered(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)
    calls: list[int] = []

    async def handler(d: Delivery) -> None:
        calls.append(int(d.headers.get(HEADER_ATTEMPTS, 0)))
        raise ValueError("boom")

    await core.subscribe(queue, handler, policy=RetryPolicy(max_attempts=3))
    await core.publish("", queue, b"poison", Properties(headers={"mine": "kept"}))
    [dead] = await _dead_letters(core, queue, 1)
    assert calls == [0, 1, 2]
    assert dead.body == b"poison"
    assert dead.headers[HEADER_ATTEMPTS] == 3
    assert dead.headers[HEADER_REASON] == "handler-failed"
    assert dead.headers[HEADER_ERROR] == "ValueError: boom"
    assert dead.headers[HEADER_QUEUE] == queue
    assert dead.headers["mine"] == "kept"
    assert await ready(core, queue) == 0


async def test_reject_and_undecodable_go_to_the_dlq_at_once(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)

    async def handler(d: Delivery) -> None:
        if d.body == b"reject":
            raise Reject("not for me")
        core.decode_envelope(d)

    await core.subscribe(queue, handler)
    await core.publish("", queue, b"reject")
    await core.publish("", queue, b"\xff garbage", core.properties())
    dead = await _dead_letters(core, queue, 2)
    assert [d.headers[HEADER_REASON] for d in dead] == ["rejected", "undecodable"]
    assert dead[0].headers[HEADER_ERROR] == "not for me"


# -- RPC ----------------------------------------------------------------------------------


async def test_rpc_round_trip(core: Core, names: Names, url: str) -> None:
    queue = await queue_with(core, names)
    server = await open_core(url)
    try:
        async def serve(d: Delivery) -> None:
            await server.reply(d, b"re:" + d.body, Properties(headers={"srv": 1}))

        await server.subscribe(queue, serve)
        replies = await asyncio.gather(*(core.call("", queue, str(i).encode(), timeout=WAIT)
                                         for i in range(10)))
        assert [r.body for r in replies] == [f"re:{i}".encode() for i in range(10)]
        assert all(r.headers == {"srv": 1} for r in replies)
        assert len({r.correlation_id for r in replies}) == 10
        assert core.pending_calls == 0
    finally:
        await server.close(5)


async def test_rpc_timeout(core: Core, names: Names) -> None:
    queue = await queue_with(core, names)

    async def silent(d: Delivery) -> None:
        return None

    await core.subscribe(queue, silent)
    with pytest.raises(RpcTimeout):
        await core.call("", queue, b"x", timeout=0.3)
    assert core.pending_calls == 0


async def test_rpc_to_nobody_is_unroutable_at_once(core: Core, names: Names) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Unroutable):
        await core.call("", names.queue("nobody"), b"x", timeout=WAIT)
    assert loop.time() - start < 2
    await asyncio.sleep(0)  # the call is forgotten by a done-callback of its future
    assert core.pending_calls == 0


async def test_late_reply_is_dropped(core: Core, names: Names, url: str) -> None:
    queue = await queue_with(core, names)
    server = await open_core(url)
    requests: list[Delivery] = []
    got = asyncio.Event()
    try:
        async def hold(d: Delivery) -> None:
            requests.append(d)
            got.set()

        await server.subscribe(queue, hold)
        with pytest.raises(RpcTimeout):
            await core.call("", queue, b"x", timeout=0.3)
        await asyncio.wait_for(got.wait(), WAIT)
        assert await server.reply(requests[0], b"late")  # accepted, then dropped
        replies = await asyncio.gather(core.call("", queue, b"y", timeout=0.3),
                                       return_exceptions=True)
        assert isinstance(replies[0], RpcTimeout)
    finally:
        await server.close(5)
