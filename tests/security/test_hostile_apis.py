"""Hostile and malformed input at every public API's consumer, against the real broker, plus
a hypothesis fuzz of each API's dispatch path without a broker (fake deliveries).

Every hostile message must reach no user handler, end in a ``.dlq`` with an
``x-postage-reason`` header and leave the consumer running (no reconnection); a valid
message sent afterwards IS handled. The async client's bodies are raw bytes by design: only
its size limit applies, so only over-size bodies are refused there.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postage import AsyncClient, JsonEncoder, Properties, messaging
from postage._api.communicator import BroadcastFilter
from postage._api.communicator import wire as _wire
from postage._api.communicator.aio import AsyncCommunicator, open_communicator
from postage._core.core import (
    HEADER_ERROR,
    HEADER_REASON,
    Core,
    HandlingOptions,
    Subscription,
    open_core,
)
from postage._exceptions import ConfigurationError, DecodingError
from postage._wire.encoding import check_encoder
from postage._wire.envelope import build_envelope, decode_envelope
from tests.recorder import Recorder

from ..classic.conftest import classic_url, classic_vhost, env_url  # noqa: F401 - fixtures
from ..client.conftest import pika_read
from .test_hostile import JSON, LIMIT, hostile_inputs

Inputs = list[tuple[str, bytes, str | None]]
CUSTOM = "application/vnd.postage-test+json"  # accepted where the test says so
TALLY: dict[str, dict[str, int]] = {}  # per API: tried, reached, dead-lettered, restarts


def _delete(url: str, queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in [*queues, *(f"{q}.dlq" for q in queues)]:
            channel = connection.channel()
            try:
                channel.queue_delete(name)
            except pika.exceptions.ChannelClosedByBroker:
                pass
        for exchange in exchanges:
            channel = connection.channel()
            try:
                channel.exchange_delete(exchange)
            except pika.exceptions.ChannelClosedByBroker:
                pass
    finally:
        connection.close()


def _check_dead(dead: list[tuple[Any, bytes]], inputs: Inputs) -> None:
    assert len(dead) == len(inputs), f"{len(dead)} dead letters for {len(inputs)} inputs"
    assert sorted(body for _, body in dead) == sorted(body for _, body, _ in inputs)
    assert {props.headers[HEADER_REASON] for props, _ in dead} == {"undecodable"}
    assert all(props.headers.get(HEADER_ERROR) for props, _ in dead)


def _record(api: str, tried: int, reached: int, dead: int, restarts: int) -> None:
    row = TALLY.setdefault(api, {"tried": 0, "reached": 0, "dead": 0, "restarts": 0})
    for key, value in (("tried", tried), ("reached", reached), ("dead", dead),
                       ("restarts", restarts)):
        row[key] += value
    print(f"\n{api}: {tried} hostile inputs tried, reached a handler {reached}, "
          f"dead-lettered {dead}, consumer restarts {restarts}")


# -- classic processor ------------------------------------------------------------------


def test_classic_processor_hostile_inputs(env_url: str) -> None:  # noqa: F811
    uid = uuid.uuid4().hex[:10]
    queue = f"test.hostile.classic.{uid}"
    exchange: type[messaging.Exchange] = type("HostileExchange", (messaging.Exchange,),
                    {"name": f"test.hostile.classic.{uid}", "auto_delete": True})
    seen = Recorder()

    class Consumer(messaging.GenericConsumer):
        max_message_size = LIMIT
        accept_content_types = frozenset({CUSTOM})

    class Processor(messaging.MessageProcessor):
        consumer_class = Consumer

        @messaging.MessageHandler("command", None)
        def msg_any(self, content: Any) -> None:
            seen.add(("command", content))

        @messaging.MessageHandlerFullBody("status", None)
        def msg_status(self, body: Any) -> None:
            seen.add(("status", body))

        @messaging.RpcHandler("command", None)
        def rpc_any(self, content: Any, reply_func: Any) -> None:
            seen.add(("rpc", content))
            reply_func(None)

    processor = Processor({"name": "hostile"}, [(exchange, [(queue, "k")])], None, None)
    core = processor.consumer.core
    reconnections = core.transport.reconnections
    inputs = hostile_inputs(core)
    inputs += [("wrong JSON type", core.encoder.encode(
        build_envelope("command", "x", "rpc", content={"a": 1}) | {"category": 5}), JSON)]
    processor.start_consuming()
    try:
        async def publish_all() -> None:
            publisher = await open_core(env_url)  # default limit: it can send the big one
            try:
                for _, body, content_type in inputs:
                    await publisher.publish("", queue, body, Properties(content_type=content_type))
                good = build_envelope("command", "work", content={"n": 1})
                await publisher.publish("", queue, publisher.encode(good), publisher.properties())
                await publisher.publish("", queue, publisher.encode(good),
                                        Properties(content_type=CUSTOM))  # told to accept it
            finally:
                await publisher.close(5)

        asyncio.run(publish_all())
        assert seen.wait_sync(2) == [("command", {"n": 1})] * 2
        dead = pika_read(env_url, f"{queue}.dlq", len(inputs), 30)
        assert processor.consumer.consuming
    finally:
        processor.stop_consuming()
        _delete(env_url, [queue], (exchange.name,))
    _check_dead(dead, inputs)
    assert seen.items == [("command", {"n": 1})] * 2  # nothing else reached a handler
    assert core.transport.reconnections == reconnections
    _record("classic processor", len(inputs), 0, len(dead), 0)


# -- communicator -----------------------------------------------------------------------


async def test_communicator_hostile_inputs(broker_url: str) -> None:
    uid = uuid.uuid4().hex[:10]
    rpc_x, task_x, bcast_x = (f"test.hostile.{kind}.{uid}" for kind in ("rpc", "task", "bc"))
    comm = await open_communicator(
        broker_url, max_message_size=LIMIT, rpc_exchange=rpc_x, task_exchange=task_x,
        broadcast_exchange=bcast_x, accept_content_types=[CUSTOM],
    )
    publisher = await open_core(broker_url)
    identifier = f"svc.{uid}"
    task_queue, replies = f"test.hostile.tq.{uid}", f"test.hostile.r.{uid}"
    queues = [f"{rpc_x}.{identifier}", task_queue, replies, bcast_x]
    rpc_seen, task_seen, bcast_seen = Recorder(), Recorder(), Recorder()

    async def on_rpc(_comm: Any, body: Any) -> Any:
        rpc_seen.add(body)
        return body

    async def on_task(_comm: Any, body: Any) -> Any:
        task_seen.add(body)
        return body

    async def on_broadcast(_comm: Any, body: Any, sender: Any, subject: Any, msg_id: Any) -> None:
        bcast_seen.add(body)

    try:
        reconnections = comm.core.transport.reconnections
        await comm.add_rpc_subscriber(on_rpc, identifier)
        tq = await comm.task_queue(task_queue)
        await tq.add_task_subscriber(on_task)
        await comm.add_broadcast_subscriber(on_broadcast)
        await comm.add_broadcast_subscriber(messaging_filter(bcast_seen))
        await publisher.declare_queue(replies, auto_delete=False)
        inputs = hostile_inputs(comm.core)
        for _, body, content_type in inputs:
            await publisher.publish(rpc_x, identifier, body, Properties(
                content_type=content_type, reply_to=replies, correlation_id="bad"))
            await publisher.publish(task_x, task_queue, body,
                                    Properties(content_type=content_type))
            await publisher.publish(bcast_x, "any.subject", body,
                                    Properties(content_type=content_type), mandatory=False)
        # then valid ones, one in a content type the communicator was told to accept
        for content_type in (JSON, CUSTOM):
            rpc = _wire.request_envelope("command", identifier, {"ok": 1}, reply=True,
                                         fingerprint={})
            await publisher.publish(rpc_x, identifier, publisher.encode(rpc), Properties(
                content_type=content_type, reply_to=replies, correlation_id="good"))
            task = _wire.request_envelope("task", task_queue, {"ok": 2}, reply=False,
                                          fingerprint={})
            await publisher.publish(task_x, task_queue, publisher.encode(task),
                                    Properties(content_type=content_type))
            bcast = _wire.broadcast_envelope({"ok": 3}, "me", "any.subject", None, {})
            await publisher.publish(bcast_x, "any.subject", publisher.encode(bcast),
                                    Properties(content_type=content_type))
        assert await rpc_seen.wait(2) == [{"ok": 1}] * 2
        assert await task_seen.wait(2) == [{"ok": 2}] * 2
        assert await bcast_seen.wait(4) == [{"ok": 3}] * 4  # plain and filtered subscriber
        got = {}
        for dlq in (f"{rpc_x}.{identifier}.dlq", f"{task_queue}.dlq", f"{bcast_x}.dlq"):
            got[dlq] = await asyncio.to_thread(pika_read, broker_url, dlq, len(inputs), 30)
        answers = await asyncio.to_thread(pika_read, broker_url, replies, len(inputs) + 2, 30)
        assert comm.core.transport.reconnections == reconnections
    finally:
        await comm.close(5)
        await publisher.close(5)
        await asyncio.to_thread(_delete, broker_url, queues, (rpc_x, task_x, bcast_x))
    for dead in got.values():
        _check_dead(dead, inputs)
    assert (rpc_seen.items, task_seen.items) == ([{"ok": 1}] * 2, [{"ok": 2}] * 2)
    assert bcast_seen.items == [{"ok": 3}] * 4
    # every RPC request got an answer: an exception naming the decoding error, or the result
    results = [(props.correlation_id, json.loads(body)["content"]) for props, body in answers]
    assert len(results) == len(inputs) + 2
    assert [c["value"] for cid, c in results if cid == "good"] == [{"ok": 1}] * 2
    bad = [c for cid, c in results if cid == "bad"]
    assert len(bad) == len(inputs) and {c["type"] for c in bad} == {"exception"}
    assert {c["value"] for c in bad} <= {"DecodingError", "MessageTooLarge",
                                         "UnsupportedContentType", "UnsupportedVersion"}
    for what in ("RPC", "task", "broadcast"):
        _record(f"communicator {what}", len(inputs), 0, len(inputs), 0)


def messaging_filter(seen: Recorder) -> Any:


    async def filtered(_comm: Any, body: Any, sender: Any, subject: Any, msg_id: Any) -> None:
        seen.add(body)

    return BroadcastFilter(filtered, subject="any.*")


# -- async client -----------------------------------------------------------------------


async def test_async_client_size_limit(broker_url: str) -> None:
    """Raw bodies reach the handler whatever they hold (by design); over-size ones never."""
    queue = f"test.hostile.client.{uuid.uuid4().hex[:10]}"
    seen = Recorder()

    async def handler(body: bytes) -> None:
        seen.add(body)

    async with AsyncClient(broker_url, max_message_size=LIMIT) as client, \
            AsyncClient(broker_url) as sender:
        reconnections = client.core.transport.reconnections
        receiver = None
        try:
            receiver = await client.receive("", "", queue, handler, durable=True)
            oversize: Inputs = [
                ("over-size", b"x" * (LIMIT + 1), None),
                ("over-size", b'{"pad": "' + b"x" * LIMIT + b'"}', JSON),
                ("over-size", bytes(range(256)) * (LIMIT // 256 + 1), "application/octet-stream"),
            ]
            for _, body, content_type in oversize:
                await sender.publish("", queue, body, Properties(content_type=content_type))
            await sender.publish("", queue, b"y" * LIMIT)  # exactly at the limit: handled
            await sender.publish("", queue, b"\xff not json, raw by design")
            assert await seen.wait(2) == [b"y" * LIMIT, b"\xff not json, raw by design"]
            dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq",
                                           len(oversize), 30)
            assert client.core.transport.reconnections == reconnections
        finally:
            if receiver is not None:  # first, or recovery would declare the queue again
                await receiver.cancel()
            await asyncio.to_thread(_delete, broker_url, [queue])
    _check_dead(dead, oversize)
    assert len(seen.items) == 2
    _record("async client", len(oversize), 0, len(dead), 0)


# -- encoders must declare a content type -----------------------------------------------


def test_custom_encoders_must_declare_a_content_type() -> None:
    class NoType:
        def encode(self, data: Any) -> bytes:
            return b""

        def decode(self, data: bytes) -> Any:
            return None

    class EmptyType(NoType):
        content_type = ""

    for bad in (NoType(), EmptyType()):
        with pytest.raises(ConfigurationError, match="content_type"):
            check_encoder(bad)
        with pytest.raises(ConfigurationError, match="content_type"):
            Core(encoder=bad)  # type: ignore[arg-type]
    good = JsonEncoder()
    assert check_encoder(good) is good
    assert Core(accept_content_types=[CUSTOM]).accept_content_types == frozenset({CUSTOM})


# -- fuzz of each API's dispatch path, no broker ----------------------------------------


class FakeDelivery:
    """What the dispatch paths read of a Delivery; records how it was settled."""

    def __init__(self, body: bytes, content_type: str | None, reply_to: str | None) -> None:
        self.body = body
        self.content_type = content_type
        self.reply_to = reply_to
        self.correlation_id = "cid" if reply_to else None
        self.headers: dict[str, Any] = {}
        self.properties = Properties(content_type=content_type, reply_to=reply_to)
        self.exchange, self.routing_key, self.redelivered = "x", "k", False
        self.settled_as: list[str] = []
        self.channel_lost = False  # its channel is alive
        self.consumer_tag = "fake"

    @property
    def settled(self) -> bool:
        return bool(self.settled_as)

    async def ack(self) -> bool:
        self.settled_as.append("ack")
        return True

    async def nack(self, requeue: bool = True) -> bool:
        self.settled_as.append("nack")
        return True


class FakeCore(Core):
    """A core that never connects: declarations do nothing, subscriptions are kept by
    queue (the APIs' real ones, fed by hand), dead letters and replies are recorded."""

    def __init__(self) -> None:
        super().__init__(max_message_size=FUZZ_LIMIT, accept_content_types={CUSTOM})
        self.dead: list[str] = []
        self.replies: list[bytes] = []
        self.subscriptions: dict[str, Subscription] = {}

    async def declare_exchange(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def declare_queue(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return 0, 0

    async def bind(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def consume(self, queue: str, handler: Any, options: Any = None,
                      **kwargs: Any) -> Subscription:
        sub = Subscription(self, queue, handler, options or HandlingOptions())
        self.subscriptions[queue] = sub
        return sub

    async def move_to_dead_letters(self, delivery: Any, queue: str, dlq: str, reason: str,
                                   error: str = "", **where: Any) -> bool:
        assert error, "a dead letter says why"
        self.dead.append(reason)
        await delivery.ack()
        return True

    async def reply(self, request: Any, body: bytes, properties: Any = None) -> bool:
        self.replies.append(body)
        return True


FUZZ_LIMIT = 600
FUZZ_RUNS: dict[str, int] = {}
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                    max_size=4), max_leaves=20)
envelope_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["command", "task", "status", "result", ""]) | json_leaf,
     "name": st.sampled_from(["svc", "quit", ""]) | json_leaf,
     "category": st.sampled_from(["message", "rpc"]) | json_leaf,
     "version": st.sampled_from(["2", "1", 2]),
     "content": json_values},
    optional={"fingerprint": json_values, "_reserved": json_values, "extra": json_values},
)
bodies = st.one_of(
    st.binary(max_size=FUZZ_LIMIT + 50),
    json_values.map(lambda v: json.dumps(v).encode()),
    envelope_like.map(lambda e: json.dumps(e).encode()),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 300)),
)
content_types = st.sampled_from([None, "", JSON, CUSTOM, "text/plain", "application/x-pickle"])
reply_tos = st.sampled_from([None, "amq.rabbitmq.reply-to"])


def _expected(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    try:
        return decode_envelope(body, content_type, max_size=FUZZ_LIMIT, accept={CUSTOM})
    except DecodingError:
        return None


def _run(coro_fn: Any, core: Core) -> None:
    try:
        asyncio.run(coro_fn())
    finally:
        core.workers.shutdown()


@settings(max_examples=300, deadline=None)
@given(body=bodies, content_type=content_types, reply_to=reply_tos)
def test_fuzz_classic_dispatch(body: bytes, content_type: str | None,
                               reply_to: str | None) -> None:
    FUZZ_RUNS["classic"] = FUZZ_RUNS.get("classic", 0) + 1
    core = FakeCore()
    handled: list[Any] = []

    class Consumer(messaging.GenericConsumer):
        def __init__(self, eqk: Any, hup: Any, vhost: Any) -> None:  # no connection
            self.core = core
            self.encoder = JsonEncoder()

    class Processor(messaging.MessageProcessor):
        consumer_class = Consumer

        @messaging.MessageHandler("command", None)
        def msg_any(self, content: Any) -> None:
            handled.append(content)

        @messaging.MessageHandlerFullBody("status", None)
        def msg_status(self, full: Any) -> None:
            handled.append(full["content"])

    processor = Processor({}, [], None, None)
    delivery = FakeDelivery(body, content_type, reply_to)

    async def run() -> None:
        sub = Subscription(core, "q", processor._dispatch,
                           processor.consumer.handling_options())
        await sub.on_delivery(delivery)  # type: ignore[arg-type]

    _run(run, core)
    expected = _expected(body, content_type)
    if expected is None:
        assert (handled, core.dead) == ([], ["undecodable"])
    else:
        wanted = (expected["category"], expected["type"]) in {("message", "command"),
                                                                ("message", "status")}
        assert handled == ([expected["content"]] if wanted else [])
        assert core.dead == []
    assert delivery.settled_as == ["ack"]


@settings(max_examples=300, deadline=None)
@given(body=bodies, content_type=content_types, reply_to=reply_tos)
def test_fuzz_communicator_dispatch(body: bytes, content_type: str | None,
                                    reply_to: str | None) -> None:
    FUZZ_RUNS["communicator"] = FUZZ_RUNS.get("communicator", 0) + 1
    core = FakeCore()
    comm = AsyncCommunicator(core)
    handled: dict[str, list[Any]] = {"rpc": [], "task": [], "broadcast": []}

    async def on_rpc(_comm: Any, value: Any) -> Any:
        handled["rpc"].append(value)
        return "ok"

    def on_task(_comm: Any, value: Any) -> Any:  # a plain function: in a worker thread
        handled["task"].append(value)
        return "ok"

    async def on_broadcast(_comm: Any, value: Any, *rest: Any) -> None:
        handled["broadcast"].append(value)



    deliveries = [FakeDelivery(body, content_type, reply_to) for _ in range(3)]

    async def run() -> None:
        # the subscriptions the communicator really makes, fed by hand
        comm.options = replace(comm.options, task_max_attempts=1)
        await comm.add_rpc_subscriber(on_rpc, "svc")
        await (await comm.task_queue("tq")).add_task_subscriber(on_task)
        comm._broadcasts.subscribers.clear()
        await comm.add_broadcast_subscriber(on_broadcast, "a")
        await comm.add_broadcast_subscriber(BroadcastFilter(on_broadcast, subject=[1]), "f")
        rpc = core.subscriptions.pop("postage.rpc.svc")
        task = core.subscriptions.pop("tq")
        [broadcast] = core.subscriptions.values()
        for sub, delivery in zip((rpc, task, broadcast), deliveries, strict=True):
            await sub.on_delivery(delivery)  # type: ignore[arg-type]

    _run(run, core)
    expected = _expected(body, content_type)
    if expected is None:
        assert handled == {"rpc": [], "task": [], "broadcast": []}
        assert core.dead == ["undecodable"] * 3
        if reply_to:  # the RPC caller and the task sender are told why
            replies = [json.loads(r)["content"] for r in core.replies]
            assert [r["type"] for r in replies] == ["exception"] * 2
    else:
        value = _wire.request_body(expected)
        assert handled["rpc"] == [value] and handled["task"] == [value]
        assert len(handled["broadcast"]) in (1, 2)  # the filter may pass it too
        assert core.dead == []
        assert len(core.replies) == (2 if reply_to else 0)
    assert [d.settled_as for d in deliveries] == [["ack"]] * 3


@settings(max_examples=300, deadline=None)
@given(body=bodies | st.binary(min_size=FUZZ_LIMIT - 2, max_size=FUZZ_LIMIT + 2),
       content_type=content_types, reply_to=reply_tos)
def test_fuzz_async_client_dispatch(body: bytes, content_type: str | None,
                                    reply_to: str | None) -> None:
    FUZZ_RUNS["async client"] = FUZZ_RUNS.get("async client", 0) + 1
    core = FakeCore()
    handled: list[bytes] = []

    async def handler(raw: bytes) -> bytes:
        handled.append(raw)
        return raw

    delivery = FakeDelivery(body, content_type, reply_to)

    async def run() -> None:
        client = AsyncClient(core=core)
        await client.receive("", "", "q", handler)
        await core.subscriptions["q"].on_delivery(delivery)  # type: ignore[arg-type]

    _run(run, core)
    if len(body) > FUZZ_LIMIT:
        assert (handled, core.dead) == ([], ["undecodable"])
    else:
        assert (handled, core.dead) == ([body], [])
        assert core.replies == ([body] if reply_to else [])  # echoed, raw
    assert delivery.settled_as == ["ack"]


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    if TALLY or FUZZ_RUNS:
        print("\nhostile-input summary:", json.dumps(TALLY), "fuzz examples:",
              json.dumps(FUZZ_RUNS))


def test_a_failing_broadcast_filter_skips_only_its_subscriber() -> None:
    """Regression: a filter value whose ``==`` raises on odd input used to escape the
    dispatcher, so the broadcast reached none of the other subscribers."""

    class Touchy:
        def __eq__(self, other: object) -> bool:
            raise TypeError("cannot compare")

        __hash__ = object.__hash__

    core = FakeCore()
    comm = AsyncCommunicator(core)
    got: list[Any] = []

    async def subscriber(_comm: Any, body: Any, *rest: Any) -> None:
        got.append(body)

    body = JsonEncoder().encode(_wire.broadcast_envelope({"b": 1}, {"odd": []}, "s", None, {}))
    delivery = FakeDelivery(body, JSON, None)

    async def run() -> None:
        await comm.add_broadcast_subscriber(BroadcastFilter(subscriber, sender=Touchy()))
        await comm.add_broadcast_subscriber(subscriber)
        [sub] = core.subscriptions.values()
        await sub.on_delivery(delivery)  # type: ignore[arg-type]

    _run(run, core)
    assert got == [{"b": 1}] and delivery.settled_as == ["ack"]
