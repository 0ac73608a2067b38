"""AsyncClient (seed 002) against the real broker: every verb, replies, retries and dead
letters, 200 concurrent RPC calls, fast failure when nobody listens."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import postage
from postage import (
    AsyncClient,
    ConnectionClosed,
    EncodingError,
    NotFound,
    PreconditionFailed,
    Properties,
    RetryPolicy,
    RpcTimeout,
    Unroutable,
)
from postage._core.core import HEADER_ATTEMPTS, HEADER_ERROR, HEADER_REASON

from .conftest import Names


class Inbox:
    """Collects bodies; ``wait(n)`` returns once n arrived (or fails at the deadline)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.threads: list[str] = []
        self._changed = asyncio.Event()

    def add(self, body: bytes) -> None:
        self.bodies.append(body)
        self.threads.append(threading.current_thread().name)
        self._changed.set()

    async def wait(self, count: int, timeout: float = 10.0) -> list[bytes]:
        async def until() -> None:
            while len(self.bodies) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.bodies


async def test_publish_and_receive_bytes_and_str(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        inbox.add(body)

    receiver = await client.receive(exchange, "dog.*", queue, handler)
    await client.publish(exchange, "dog.black", b"\x00\xffraw")
    await client.publish(exchange, "dog.white", "héllo")
    await client.publish(exchange, "cat.big", b"nobody", mandatory=False)
    assert await inbox.wait(2) == [b"\x00\xffraw", "héllo".encode()]
    assert receiver.active and receiver.queue == queue
    await receiver.cancel()
    assert not receiver.active


async def test_publish_properties_as_dict_or_object(
    client: AsyncClient, names: Names, read_queue: Any
) -> None:
    queue = names.queue()
    await client.core.declare_queue(queue)
    await client.publish("", queue, b"a", {"content_type": "text/plain", "headers": {"k": 1}})
    await client.publish("", queue, b"b", Properties(correlation_id="c-2", app_id="me"))
    (p1, b1), (p2, b2) = await read_queue(queue, 2)
    assert (b1, p1.content_type, p1.headers) == (b"a", "text/plain", {"k": 1})
    assert (b2, p2.correlation_id, p2.app_id) == (b"b", "c-2", "me")
    assert p2.content_type is None  # the client adds nothing: the body is the user's


async def test_publish_errors(client: AsyncClient, names: Names) -> None:
    with pytest.raises(NotFound):
        await client.publish(names.exchange("missing"), "k", b"x")
    with pytest.raises(Unroutable):
        await client.publish("", names.queue("nobody"), b"x")
    await client.publish("", names.queue("nobody"), b"x", mandatory=False)
    with pytest.raises(EncodingError):
        await client.publish("", "q", 42)  # type: ignore[arg-type]
    with pytest.raises(postage.ConfigurationError):
        await client.publish("", "q", b"x", {"no_such_property": 1})


async def test_sync_handler_runs_in_a_worker_thread(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()
    loop = asyncio.get_running_loop()

    def handler(body: bytes) -> str:
        time.sleep(0.05)  # blocking is fine here: not on the loop
        loop.call_soon_threadsafe(inbox.add, body)
        return "ok:" + body.decode()

    await client.receive(exchange, "k", queue, handler)
    assert await client.rpc(exchange, "k", "x", timeout=5) == b"ok:x"
    assert await inbox.wait(1) == [b"x"]


async def test_sync_handler_thread_name(client: AsyncClient, names: Names) -> None:
    queue = names.queue()
    seen: list[str] = []

    def handler(body: bytes) -> bytes:
        seen.append(threading.current_thread().name)
        return body

    await client.receive("", "", queue, handler)
    assert await client.rpc("", queue, b"echo", timeout=5) == b"echo"
    assert seen and seen[0].startswith("postage-handler")


async def test_reply_goes_to_reply_to_with_correlation_id(
    client: AsyncClient, names: Names, read_queue: Any
) -> None:
    exchange, queue, replies = names.exchange(), names.queue(), names.queue("replies")
    await client.core.declare_queue(replies)

    async def handler(body: bytes) -> bytes:
        return body.upper()

    await client.receive(exchange, "svc", queue, handler)
    await client.publish(exchange, "svc", b"abc", {"reply_to": replies, "correlation_id": "c-9"})
    [(props, body)] = await read_queue(replies, 1)
    assert body == b"ABC"
    assert props.correlation_id == "c-9"


async def test_handler_returning_none_sends_no_reply(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        inbox.add(body)

    await client.receive(exchange, "k", queue, handler)
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        await client.rpc(exchange, "k", b"q", timeout=0.5)
    assert time.monotonic() - started < 2
    assert inbox.bodies == [b"q"]


async def test_failing_handler_is_retried_then_dead_lettered(
    client: AsyncClient, names: Names, read_queue: Any
) -> None:
    exchange, queue = names.exchange(), names.queue()
    calls: list[bytes] = []
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        calls.append(body)
        if body == b"bad":
            raise ValueError("cannot handle bad")
        inbox.add(body)

    await client.receive(exchange, "k", queue, handler, policy=RetryPolicy(max_attempts=3))
    await client.publish(exchange, "k", b"bad")
    [(props, body)] = await read_queue(f"{queue}.dlq", 1)
    assert body == b"bad"
    assert props.headers[HEADER_REASON] == "handler-failed"
    assert "ValueError: cannot handle bad" in props.headers[HEADER_ERROR]
    assert props.headers[HEADER_ATTEMPTS] == 3
    assert calls.count(b"bad") == 3
    # the client goes on
    await client.publish(exchange, "k", b"good")
    assert await inbox.wait(1) == [b"good"]


async def test_handler_returning_a_non_body_is_dead_lettered(
    client: AsyncClient, names: Names, read_queue: Any
) -> None:
    exchange, queue = names.exchange(), names.queue()

    async def handler(body: bytes) -> Any:
        return {"not": "bytes"}

    await client.receive(exchange, "k", queue, handler)
    with pytest.raises(RpcTimeout):
        await client.rpc(exchange, "k", b"x", timeout=0.5)
    [(props, body)] = await read_queue(f"{queue}.dlq", 1)
    assert (body, props.headers[HEADER_REASON]) == (b"x", "rejected")


async def test_receive_options(client: AsyncClient, names: Names, read_queue: Any) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        inbox.add(body)

    receiver = await client.receive(
        exchange, "a.#", queue, handler, no_ack=True, prefetch_count=5, exchange_type="topic",
        durable=True,
    )
    for i in range(20):
        await client.publish(exchange, f"a.{i}.z", str(i))
    assert sorted(await inbox.wait(20)) == sorted(str(i).encode() for i in range(20))
    await receiver.cancel()
    # durable: the queue outlives its consumer; messages wait there
    await client.publish(exchange, "a.late", b"late")
    assert [b for _, b in await read_queue(queue, 1)] == [b"late"]
    # another type for an existing exchange is refused by the broker
    with pytest.raises(PreconditionFailed):
        await client.receive(exchange, "k", names.queue(), handler, exchange_type="fanout")


async def test_receive_on_a_quorum_queue(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        inbox.add(body)

    with pytest.raises(postage.ConfigurationError):
        await client.receive(exchange, "q.#", queue, handler, quorum=True, auto_delete=True)
    receiver = await client.receive(exchange, "q.#", queue, handler, quorum=True)
    for i in range(5):
        await client.publish(exchange, f"q.{i}", str(i))
    assert sorted(await inbox.wait(5)) == [str(i).encode() for i in range(5)]
    await receiver.cancel()
    # it is a quorum queue: declaring it as a classic one is refused by the broker
    with pytest.raises(PreconditionFailed):
        await client.core.declare_queue(queue, durable=True)


async def test_cancelled_receiver_gets_nothing(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()
    inbox = Inbox()

    async def handler(body: bytes) -> None:
        inbox.add(body)

    receiver = await client.receive(exchange, "k", queue, handler)
    await client.publish(exchange, "k", b"1")
    await inbox.wait(1)
    await receiver.cancel()
    # the auto-delete queue went with its consumer: nobody receives now
    with pytest.raises(Unroutable):
        await client.publish(exchange, "k", b"2")
    assert inbox.bodies == [b"1"]


async def test_rpc_round_trip_and_errors(client: AsyncClient, names: Names) -> None:
    exchange, queue = names.exchange(), names.queue()

    async def handler(body: bytes) -> str:
        return f"re:{body.decode()}"

    await client.receive(exchange, "calc.*", queue, handler)
    assert await client.rpc(exchange, "calc.add", "1+1") == b"re:1+1"
    with pytest.raises(NotFound):
        await client.rpc(names.exchange("missing"), "k", b"x", timeout=2)


async def test_rpc_to_nobody_fails_at_once(client: AsyncClient, names: Names) -> None:
    exchange = names.exchange()
    await client.core.declare_exchange(exchange, "topic")
    started = time.monotonic()
    with pytest.raises(Unroutable):
        await client.rpc(exchange, "nobody.home", b"x", timeout=30)
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0)  # the core forgets the call in a done callback of its future
    assert client.core.pending_calls == 0


async def test_rpc_timeout_is_a_timeout_error(client: AsyncClient, names: Names) -> None:
    queue = names.queue()
    never = asyncio.Event()

    async def handler(body: bytes) -> bytes:
        await never.wait()
        return b""

    receiver = await client.receive("", "", queue, handler)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await client.rpc("", queue, b"x", timeout=0.3)
    assert isinstance(info.value, RpcTimeout)
    assert 0.25 < time.monotonic() - started < 2
    never.set()
    await receiver.cancel()


async def test_200_concurrent_rpc_calls_each_get_their_own_answer(
    client: AsyncClient, names: Names
) -> None:
    exchange, queue = names.exchange(), names.queue()

    async def handler(body: bytes) -> bytes:
        await asyncio.sleep(0.01 * (int(body) % 7))  # replies come back out of order
        return b"answer-" + body

    await client.receive(exchange, "svc", queue, handler, prefetch_count=50)
    started = time.monotonic()
    answers = await asyncio.gather(
        *(client.rpc(exchange, "svc", str(i), timeout=30) for i in range(200))
    )
    elapsed = time.monotonic() - started
    assert answers == [f"answer-{i}".encode() for i in range(200)]
    assert client.core.pending_calls == 0
    print(f"200 concurrent rpc: {elapsed:.3f} s")


async def test_closed_client_refuses_and_reopen_is_clear(broker_url: str) -> None:
    client = AsyncClient(broker_url)
    with pytest.raises(ConnectionClosed):
        await client.publish("", "q", b"x")
    async with client:
        assert "open on" in repr(client) and "guest:guest" not in repr(client)
    with pytest.raises(ConnectionClosed):
        await client.publish("", "q", b"x")
    with pytest.raises(ConnectionClosed):
        await client.open()
    await client.close()  # idempotent


async def test_client_on_a_shared_core(broker_url: str, names: Names) -> None:
    from postage._core.core import open_core

    core = await open_core(broker_url)
    try:
        async with AsyncClient(core=core) as client:
            queue = names.queue()

            async def handler(body: bytes) -> bytes:
                return body

            await client.receive("", "", queue, handler)
            assert await client.rpc("", queue, b"shared", timeout=5) == b"shared"
        assert not core.closed  # the client did not own it
    finally:
        await core.close(5)
    with pytest.raises(TypeError):
        AsyncClient(broker_url, core=core)


async def test_presence_watcher_on_a_client_sees_an_announcing_communicator(
        client: AsyncClient, broker_url: str) -> None:
    with pytest.raises(postage.ConfigurationError):
        postage.PresenceWatcher(object())
    name = f"test.client.presence.{time.monotonic_ns()}"
    async with postage.PresenceWatcher(client) as watcher:
        async with postage.aio.connect(broker_url) as comm:
            await comm.announce({"name": name, "type": "test"}, interval=5)
            deadline = time.monotonic() + 10
            while watcher.get({"name": name, "type": "test"}) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            state = watcher.get({"name": name, "type": "test"})
            assert isinstance(state, postage.ComponentState) and state.alive()
        # closing the communicator says offline
        deadline = time.monotonic() + 10
        while (state := watcher.get({"name": name, "type": "test"})) is None or \
                state.status != "offline":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert name not in {s.fingerprint.get("name") for s in watcher.components()}


async def test_raw_replies_carry_no_content_type(client: AsyncClient, names: Names) -> None:
    """A raw body is not JSON: its reply says nothing of a content type (as the request's
    own handler returned bytes), and echoes the correlation id."""
    exchange, queue = names.exchange(), names.queue()

    async def upper(body: bytes) -> bytes:
        return body.upper()

    await client.receive(exchange, "k", queue, upper)
    reply = await client.core.call(exchange, "k", b"abc", timeout=10)
    assert reply.body == b"ABC"
    assert reply.content_type is None
    assert reply.correlation_id is not None


async def test_the_exchange_of_a_durable_queue_is_durable(
        client: AsyncClient, names: Names, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(body: bytes) -> None:
        pass

    fresh, old = names.exchange(), names.exchange()
    await client.receive(fresh, "k", names.queue(), handler, durable=True)
    # it is durable: declaring it transient is refused by the broker
    with pytest.raises(PreconditionFailed):
        await client.core.declare_exchange(fresh, "topic", durable=False)
    # one declared transient before (by an earlier version) is used as it is, with a word
    await client.core.declare_exchange(old, "topic", durable=False)
    queue = names.queue()
    inbox = Inbox()

    async def keep(body: bytes) -> None:
        inbox.add(body)

    with caplog.at_level("WARNING", logger="postage.client"):
        await client.receive(old, "k", queue, keep, durable=True)
    assert f"exchange {old!r} exists and is not durable" in caplog.text
    await client.publish(old, "k", b"still works")
    assert await inbox.wait(1) == [b"still works"]
    # another type is still refused
    with pytest.raises(PreconditionFailed):
        await client.receive(old, "k", names.queue(), handler, durable=True,
                             exchange_type="fanout")
