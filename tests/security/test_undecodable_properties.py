"""Properties a client cannot decode, or cannot write back, never take a consumer offline.

RabbitMQ accepts and delivers a message whose short-string properties (or header keys)
are not UTF-8, or whose timestamp is past year 9999; the AMQP decoder raised on it inside
the connection, which died, and got the message again on reconnecting, forever. Values
that decode but cannot be encoded again (a double beyond a 32-bit float, an invalid UTF-8
long string, another user's ``user_id``) made every retry or dead letter fail: the
message was nacked every 0.5 s forever. And sender-written counters (a negative
``x-postage-attempts``) extended the retry policy.

Now the transport keeps what it can read and marks the rest; the pipeline dead-letters
such a message as ``undecodable`` with the reason; a re-sent copy leaves out (and names)
what cannot be written back; forged counters count as exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pamqp.frame
import pika
import pytest
from pamqp import header

import postage
from postage import AsyncClient, RetryPolicy
from postage._api.communicator.aio import open_communicator
from postage._core.core import HEADER_ERROR, HEADER_REASON
from postage._core.inbound import HEADER_DROPPED, HEADER_USER_ID
from postage._transport import HEADER_UNDECODABLE
from postage._transport.amqp import headers as guard
from tests.pika_helpers import pika_read
from tests.recorder import Recorder

from .raw_properties import BAD_UTF8, RawProperties, random_properties
from .test_hostile_apis import _delete

FUZZ_FRAMES = 20_000  # content headers tried against the decoder (no broker)
BROKER_FUZZ = 300  # random property sets pushed through the real broker


def _frame(properties: bytes, body_size: int = 3) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + properties
    return b"\x02" + struct.pack(">HI", 1, len(payload)) + payload + b"\xce"


def _short(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _props(**fields: bytes) -> bytes:
    """Raw properties: content_type, correlation_id, reply_to, timestamp and headers."""
    order = [("content_type", 15), ("headers", 13), ("correlation_id", 10),
             ("reply_to", 9), ("timestamp", 6)]
    flags, data = 0, b""
    for name, bit in order:
        if name in fields:
            flags |= 1 << bit
            data += fields[name]
    return struct.pack(">H", flags) + data


def _table(key: bytes, value: bytes) -> bytes:
    entry = _short(key) + value
    return struct.pack(">I", len(entry)) + entry


BAD = {
    "correlation_id": _props(content_type=_short(b"application/json"),
                             correlation_id=_short(b"\xff\xfe"), reply_to=_short(b"r1")),
    "timestamp": _props(content_type=_short(b"application/json"),
                        timestamp=struct.pack(">Q", 253402300800 * 1000 + 5),
                        reply_to=_short(b"r1")),
    "headers": _props(content_type=_short(b"application/json"),
                      headers=_table(b"\xc3\x28", b"S" + struct.pack(">I", 2) + b"ok"),
                      reply_to=_short(b"r1")),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_the_decoder_keeps_what_it_can_read(bad: str) -> None:
    guard.install()
    data = _frame(BAD[bad])
    consumed, channel, frame = pamqp.frame.unmarshal(data)
    assert (consumed, channel) == (len(data), 1)
    assert isinstance(frame, header.ContentHeader) and frame.body_size == 3
    props = frame.properties
    assert (props.content_type, props.reply_to) == ("application/json", "r1")
    assert bad in props.headers[HEADER_UNDECODABLE]
    assert getattr(props, bad if bad != "headers" else "correlation_id") is None


def test_fuzz_no_content_header_breaks_the_decoder() -> None:
    """Random, structurally valid property bytes: the decoder never raises, consumes the
    whole frame, and marks every frame pamqp alone could not decode."""
    guard.install()
    assert guard._original is not None
    rng = random.Random(20261207)
    marked = 0
    for _ in range(FUZZ_FRAMES):
        data = _frame(random_properties(rng))
        try:
            guard._original(data)
            plain_ok = True
        except Exception:
            plain_ok = False
        consumed, _, frame = pamqp.frame.unmarshal(data)
        assert consumed == len(data)
        undecodable = HEADER_UNDECODABLE in (frame.properties.headers or {})
        assert undecodable == (not plain_ok)
        marked += undecodable
    assert marked > FUZZ_FRAMES // 4  # the generator does make undecodable ones


def _publish_raw(url: str, queue: str, items: list[tuple[bytes, bytes]]) -> int:
    """Publish each (properties, body) to ``queue`` with pika, confirmed; how many the
    broker accepted (it may refuse some, closing the publisher's connection)."""
    accepted = 0
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for raw, body in items:
            try:
                channel.basic_publish("", queue, body, RawProperties(raw), mandatory=True)
                accepted += 1
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()
                channel.confirm_delivery()
    finally:
        if connection.is_open:
            connection.close()
    return accepted


def _cleanup(url: str, *queues: str) -> None:
    _delete(url, list(queues))


@contextlib.asynccontextmanager
async def _failing_consumer(url: str, prefix: str, attempts: int
                            ) -> AsyncIterator[tuple[AsyncClient, str, list[bytes]]]:
    """An AsyncClient consuming a new durable queue with a handler that always fails
    (``attempts`` per message); (client, queue, the bodies the handler got)."""
    queue = f"test.undecodable.{prefix}.{uuid.uuid4().hex[:8]}"
    calls: list[bytes] = []

    def fail(body: bytes) -> None:
        calls.append(body)
        raise RuntimeError("handler failed")

    client = AsyncClient(url)
    await client.open()
    try:
        await client.receive("", "", queue, fail, durable=True,
                             policy=RetryPolicy(max_attempts=attempts, delay=0))
        yield client, queue, calls
    finally:
        await client.close()
        await asyncio.to_thread(_cleanup, url, queue)


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_async_client_and_communicator_consumers_survive(broker_url: str) -> None:
    uid = uuid.uuid4().hex[:8]
    client_queue, task_queue = f"test.undecodable.client.{uid}", f"test.undecodable.task.{uid}"
    ident = f"test.undecodable.rpc.{uid}"
    seen = Recorder()
    comm = await open_communicator(broker_url)
    client = AsyncClient(broker_url)
    await client.open()
    try:
        tasks = await comm.task_queue(task_queue)
        await tasks.add_task_subscriber(lambda _c, body: seen.add(("task", body)))
        await comm.add_rpc_subscriber(lambda _c, body: f"echo {body}", ident)
        await client.receive("", "", client_queue, lambda body: seen.add(("client", body)),
                             durable=True)
        items = [(BAD[name], f"bad {name}".encode()) for name in sorted(BAD)]
        for queue in (client_queue, task_queue):
            assert await asyncio.to_thread(_publish_raw, broker_url, queue, items) == 3
        for queue in (client_queue, task_queue):
            dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq", 3)
            assert sorted(body for _, body in dead) == sorted(b for _, b in items)
            assert {p.headers[HEADER_REASON] for p, _ in dead} == {"undecodable"}
            assert all("cannot be read" in p.headers[HEADER_ERROR] for p, _ in dead)
        # nothing reached a handler, nobody reconnected, and everything still works
        assert seen.items == []
        assert comm.core.transport.reconnections == 0
        assert client.core.transport.reconnections == 0
        await client.publish("", client_queue, b"good")
        await (await tasks.task_send("good", no_reply=True) or asyncio.sleep(0))
        await _until(lambda: len(seen.items) == 2)
        reply = await comm.rpc_send(ident, "still here")
        assert await asyncio.wait_for(reply, 10) == "echo still here"
    finally:
        await client.close()
        await comm.close()
        await asyncio.to_thread(_cleanup, broker_url, client_queue, task_queue)


async def test_fuzz_through_the_broker(broker_url: str) -> None:
    """Random property sets pushed through RabbitMQ to an AsyncClient consumer: every one
    is handled or dead-lettered, and the consumer never loses its connection."""
    queue = f"test.undecodable.fuzz.{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    handled: list[bytes] = []
    client = AsyncClient(broker_url)
    await client.open()
    try:
        await client.receive("", "", queue, handled.append, durable=True)
        items = [(random_properties(rng, for_broker=True), f"fuzz {i}".encode())
                 for i in range(BROKER_FUZZ)]
        accepted = await asyncio.to_thread(_publish_raw, broker_url, queue, items)
        assert accepted == BROKER_FUZZ

        def dead_count() -> int:
            connection = pika.BlockingConnection(pika.URLParameters(broker_url))
            try:
                return connection.channel().queue_declare(
                    f"{queue}.dlq", durable=True, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                return 0
            finally:
                if connection.is_open:
                    connection.close()

        deadline = asyncio.get_running_loop().time() + 60
        while True:
            dead = await asyncio.to_thread(dead_count)
            if len(handled) + dead >= accepted:
                break
            assert asyncio.get_running_loop().time() < deadline, (len(handled), dead)
            await asyncio.sleep(0.2)
        assert len(handled) + dead == accepted
        assert client.core.transport.reconnections == 0
    finally:
        await client.close()
        await asyncio.to_thread(_cleanup, broker_url, queue)


async def test_values_that_cannot_be_written_back_are_dropped_and_named(
        broker_url: str) -> None:
    """A failing handler's message carries a header double beyond a 32-bit float and an
    invalid UTF-8 long string: its retries and its dead letter leave them out (named in
    x-postage-dropped-headers) instead of being nacked in a loop."""
    entries = (_short(b"big") + b"d" + struct.pack(">d", 1e39)
               + _short(b"raw") + b"S" + struct.pack(">I", 3) + BAD_UTF8[0] * 3
               + _short(b"fine") + b"S" + struct.pack(">I", 2) + b"ok")
    raw = _props(headers=struct.pack(">I", len(entries)) + entries)
    async with _failing_consumer(broker_url, "resend", 3) as (client, queue, calls):
        assert await asyncio.to_thread(_publish_raw, broker_url, queue, [(raw, b"poison")]) == 1
        dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq", 1)
        assert [body for _, body in dead] == [b"poison"]
        headers = dead[0][0].headers
        assert headers[HEADER_REASON] == "handler-failed"
        assert headers[HEADER_DROPPED] == "big, raw"
        assert headers["fine"] == "ok"
        assert len(calls) == 3  # the policy's attempts, no more, no loop
        assert client.core.transport.reconnections == 0


@pytest.mark.parametrize("forged", [-1_000_000, 10**12, "3", 2.5, True])
async def test_forged_counters_count_as_exhausted(broker_url: str, forged: Any) -> None:
    async with _failing_consumer(broker_url, "counter", 5) as (client, queue, calls):
        await client.publish("", queue, b"forged", properties=postage.Properties(
            headers={"x-postage-attempts": forged}))
        dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq", 1)
        assert [body for _, body in dead] == [b"forged"]
        await asyncio.sleep(0.5)
        assert len(calls) == 1  # exhausted at once: no extra tries


async def test_another_users_user_id_is_kept_in_a_header(broker: Any, broker_url: str) -> None:
    """A message whose user_id names its sender (another user) cannot be published again
    from this connection with that user_id: the copy keeps it in x-postage-user-id."""
    user, password = f"pt-{uuid.uuid4().hex[:6]}", "secret"
    vhost = "/"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        async with _failing_consumer(broker_url, "user", 2) as (_client, queue, calls):
            other = broker_url.replace("guest:guest", f"{user}:{password}")

            def send() -> None:
                connection = pika.BlockingConnection(pika.URLParameters(other))
                try:
                    connection.channel().basic_publish(
                        "", queue, b"signed", pika.BasicProperties(user_id=user))
                finally:
                    connection.close()

            await asyncio.to_thread(send)
            dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq", 1)
            assert [body for _, body in dead] == [b"signed"]
            assert dead[0][0].headers[HEADER_USER_ID] == user
            assert dead[0][0].user_id is None
            assert len(calls) == 2
    finally:
        broker.ctl("delete_user", user)


async def test_a_reply_with_undecodable_properties_keeps_the_caller_connected(
        broker_url: str) -> None:
    """A hostile RPC server answers with a timestamp past year 9999 (and a correlation id
    that is not UTF-8, on a second call): the caller keeps its connection; the first
    reply arrives, the second cannot be matched to its call (which times out)."""
    queue = f"test.undecodable.server.{uuid.uuid4().hex[:8]}"
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def serve(replies: list[bytes]) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            channel = connection.channel()
            channel.queue_declare(queue, exclusive=True)
            loop.call_soon_threadsafe(ready.set)
            for extra in replies:
                for method, props, body in channel.consume(queue, inactivity_timeout=15):
                    assert method is not None, "no request came"
                    cid = props.correlation_id.encode() if extra != b"cid" else b"\xff\xfe"
                    raw = struct.pack(">H", 1 << 10 | 1 << 6) + _short(cid) + struct.pack(
                        ">Q", 253402300800 * 1000 + 5)
                    channel.basic_publish("", props.reply_to, body.upper(), RawProperties(raw))
                    channel.basic_ack(method.delivery_tag)
                    break
            channel.cancel()
        finally:
            connection.close()

    server = asyncio.ensure_future(asyncio.to_thread(serve, [b"ts", b"cid"]))
    client = AsyncClient(broker_url)
    await client.open()
    try:
        await asyncio.wait_for(ready.wait(), 15)
        assert await client.rpc("", queue, b"first", timeout=10) == b"FIRST"
        with pytest.raises(postage.RpcTimeout):
            await client.rpc("", queue, b"second", timeout=2)
        assert client.core.transport.reconnections == 0
        await asyncio.wait_for(server, 20)
    finally:
        await client.close()
