"""The one message path: middleware and the inbound pipeline's outcomes, the same for every
API, against RabbitMQ and the in-memory broker (see ``conftest.url``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import postage
from postage import (
    IncomingMessage,
    Middleware,
    OutgoingMessage,
    PostageError,
    RemoteError,
    RetryPolicy,
)
from postage._api.communicator.aio import open_communicator
from postage._core.core import (
    HEADER_ATTEMPTS,
    HEADER_EXCHANGE,
    HEADER_REASON,
    HEADER_REDELIVERIES,
    HEADER_ROUTING_KEY,
    open_core,
)
from postage._core.middleware import PublishNext
from tests.drain import drain

from .conftest import Names

WAIT = 10.0
DOC = Path(__file__).resolve().parents[2] / "docs" / "middleware.md"


class Recorder(Middleware):
    """Stamps ``x-mw`` on what it sends, records the order of its hooks."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def publish(self, message: OutgoingMessage, call_next: PublishNext) -> None:
        self.log.append(f"{self.name}:publish:{message.kind}")
        message.headers.setdefault("x-mw", []).append(self.name)
        await call_next(message)

    async def handle(self, message: IncomingMessage, call_next: Any) -> Any:
        self.log.append(f"{self.name}:enter:{message.headers.get('x-mw')}")
        try:
            return await call_next(message)
        finally:
            self.log.append(f"{self.name}:leave")

    async def reply(self, message: OutgoingMessage, request: IncomingMessage | None,
                    call_next: PublishNext) -> None:
        self.log.append(f"{self.name}:reply:{request is not None}")
        message.headers["x-replied-by"] = self.name
        await call_next(message)

    async def dead_lettered(self, message: IncomingMessage, reason: str, error: str) -> None:
        self.log.append(f"{self.name}:dead:{reason}")


async def _drain_dlq(url: str, queue: str, count: int) -> list[Any]:
    reader = await open_core(url)
    try:
        return list(await drain(reader, f"{queue}.dlq", count, WAIT))
    finally:
        await reader.close(5)


@pytest.fixture
async def client_pair(url: str, names: Names) -> AsyncIterator[tuple[list[str], Any]]:
    log: list[str] = []
    mw = [Recorder("outer", log), Recorder("inner", log)]
    async with postage.AsyncClient(url, middleware=mw, publish_timeout=5.0) as client:
        yield log, client
    cleaner = await open_core(url)
    try:
        for queue in names.queues:
            for name in (queue, f"{queue}.dlq"):
                with contextlib.suppress(PostageError):
                    await cleaner.delete_queue(name, timeout=5)
        for exchange in names.exchanges:
            with contextlib.suppress(PostageError):
                await cleaner.transport.delete_exchange(exchange, timeout=5)
    finally:
        await cleaner.close(5)


async def test_middleware_order_and_headers_on_the_async_client(
    client_pair: tuple[list[str], Any], names: Names
) -> None:
    log, client = client_pair
    queue = names.queue()
    got: list[bytes] = []

    async def echo(body: bytes) -> bytes:
        got.append(body)
        return body.upper()

    await client.receive("", "", queue, echo)
    reply = await client.rpc("", queue, b"hi", timeout=WAIT)
    assert reply == b"HI" and got == [b"hi"]
    # publish: the first middleware sees the message first, and both stamp it in order;
    # handle: the first one is entered first and left last; reply: same order as publish
    assert log == [
        "outer:publish:request", "inner:publish:request",
        "outer:enter:['outer', 'inner']", "inner:enter:['outer', 'inner']",
        "outer:reply:True", "inner:reply:True",
        "inner:leave", "outer:leave",
    ] or log == [  # the reply is sent after the handler returned (both orders are fine
        "outer:publish:request", "inner:publish:request",     # for the hooks' nesting)
        "outer:enter:['outer', 'inner']", "inner:enter:['outer', 'inner']",
        "inner:leave", "outer:leave",
        "outer:reply:True", "inner:reply:True",
    ]


async def test_middleware_sees_communicator_tasks_rpcs_and_broadcasts(
    url: str, names: Names
) -> None:
    log: list[str] = []
    comm = await open_communicator(url, middleware=[Recorder("mw", log)])
    try:
        queue = names.queue("tasks")
        tasks = await comm.task_queue(queue)
        await tasks.add_task_subscriber(lambda _c, n: n * 2)
        ident = names.identifier()
        await comm.add_rpc_subscriber(lambda _c, n: n + 1, ident)
        heard = asyncio.Event()

        async def on_broadcast(_c: Any, body: Any, *rest: Any) -> None:
            heard.set()

        await comm.add_broadcast_subscriber(on_broadcast)
        assert await (await tasks.task_send(20)) == 40
        assert await (await comm.rpc_send(ident, 1)) == 2
        await comm.broadcast_send("news", subject="docs")
        await asyncio.wait_for(heard.wait(), WAIT)
    finally:
        await comm.close(5)
    published = [e for e in log if ":publish:" in e]
    handled = [e for e in log if ":enter:" in e]
    assert published == ["mw:publish:request", "mw:publish:request", "mw:publish:publish"]
    assert handled == ["mw:enter:['mw']"] * 3  # every API's messages carry the stamp
    assert log.count("mw:reply:True") == 2


async def test_retries_keep_the_original_exchange_and_key_in_dead_letters(
    url: str, client_pair: tuple[list[str], Any], names: Names
) -> None:
    log, client = client_pair
    exchange, queue = names.exchange(), names.queue()
    attempts: list[int] = []

    async def failing(body: bytes) -> None:
        attempts.append(1)
        raise ValueError("always")

    await client.receive(exchange, "orders.*", queue, failing, exchange_type="topic",
                         policy=RetryPolicy(max_attempts=3))
    await client.publish(exchange, "orders.new", b"order")
    [dead] = await _drain_dlq(url, queue, 1)
    assert len(attempts) == 3
    assert dead.headers[HEADER_REASON] == "handler-failed"
    assert dead.headers[HEADER_ATTEMPTS] == 3
    # retries go through the default exchange; the dead letter still names the original
    assert dead.headers[HEADER_EXCHANGE] == exchange
    assert dead.headers[HEADER_ROUTING_KEY] == "orders.new"
    while "outer:dead:handler-failed" not in log:
        await asyncio.sleep(0.01)


async def test_a_message_redelivered_too_often_is_dead_lettered_and_its_sender_told(
    url: str, names: Names
) -> None:
    """The broker redelivers a message whose consumer went away mid-handler; the pipeline
    counts that, and past ``max_redeliveries`` the task goes to ``<queue>.dlq`` and its
    sender's future fails at once with an error naming the dead-letter queue."""
    queue = names.queue("crash")
    sender = await open_communicator(url)
    try:
        tasks = await sender.task_queue(queue)
        future = await tasks.task_send("poison")
        for _ in range(3):  # max_redeliveries = 2: the third redelivery dead-letters it
            worker = await open_communicator(url, task_max_redeliveries=2)
            started = asyncio.Event()

            async def hang(_comm: Any, task: Any, started: asyncio.Event = started) -> None:
                started.set()
                await asyncio.sleep(3600)

            await (await worker.task_queue(queue)).add_task_subscriber(hang)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), 3)
            # a worker that dies without settling its task (its connection drops)
            await worker.core.transport.close(0.1)
            worker.core.workers.shutdown()
        last = await open_communicator(url, task_max_redeliveries=2)
        try:
            await (await last.task_queue(queue)).add_task_subscriber(lambda _c, t: "done")
            with pytest.raises(RemoteError) as caught:
                await asyncio.wait_for(future, WAIT)
        finally:
            await last.close(5)
    finally:
        await sender.close(5)
    assert caught.value.type_name == "DeadLettered"
    assert f"{queue}.dlq" in str(caught.value)
    [dead] = await _drain_dlq(url, queue, 1)
    assert dead.headers[HEADER_REASON] == "redelivered"
    assert dead.headers[HEADER_REDELIVERIES] == 2


@pytest.mark.parametrize("index", [0, 1])
def test_middleware_doc_examples_run(index: int, url: str, tmp_path: Path) -> None:
    import re

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    expected = [["from billing", "42"],
                ["2 handled; the slow one took >= 0.05 s: True",
                 "dead-lettered: [('docs.mw.work', 'handler-failed', 1)]"]]
    script = tmp_path / "example.py"
    script.write_text(blocks[index], encoding="utf-8")
    env = {**os.environ, "POSTAGE_URL": url}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected[index]


async def test_quorum_queue_with_a_delivery_limit_dead_letters_at_the_limit(
    url: str, names: Names
) -> None:
    """A consumer that is not Postage's keeps giving the message back: at the queue's
    delivery limit the broker moves it to ``<queue>.dlq`` (it used to drop it)."""
    queue = names.queue("quorum")
    core = await open_core(url)
    try:
        await core.declare_queue(queue, quorum=True, delivery_limit=2)
        await core.publish("", queue, b"poison")
        returned: list[int] = []

        async def give_back(delivery: Any) -> None:
            returned.append(1)
            await delivery.nack(requeue=True)

        consumer = await core.transport.consume(queue, give_back, prefetch_count=1)
        [dead] = await _drain_dlq(url, queue, 1)
        await consumer.cancel()
        assert dead.body == b"poison"
        assert len(returned) == 3  # delivered, then 2 redeliveries: the limit
        assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
        assert (await core.queue_state(queue))[0] == 0
    finally:
        await core.close(5)


async def test_names_over_255_bytes_are_refused_before_anything_is_sent(
    url: str, names: Names
) -> None:
    long_name = "q" * 200 + "é" * 30  # 260 bytes of UTF-8, 230 characters
    fits = "q" * 255
    async with postage.AsyncClient(url) as client:
        for attempt in (
            lambda: client.publish("", long_name, b"x"),
            lambda: client.publish(long_name, "k", b"x"),
            lambda: client.core.declare_queue(long_name),
            lambda: client.core.declare_exchange(long_name),
            lambda: client.rpc("", long_name, b"x", timeout=1),
        ):
            with pytest.raises(postage.ConfigurationError, match="255"):
                await attempt()
        # the connection is fine (nothing was sent), and 255 bytes still fit
        queue = names.queue()
        await client.core.declare_queue(queue)
        await client.publish("", queue, b"ok")
        with pytest.raises(postage.Unroutable):
            await client.publish("", fits, b"x")
        assert client.core.transport.reconnections == 0


async def test_a_request_to_direct_reply_to_without_its_consumer_keeps_the_brokers_error(
    url: str, names: Names
) -> None:
    """Publishing with ``reply_to = amq.rabbitmq.reply-to`` before consuming replies: the
    broker says PRECONDITION_FAILED (fast reply consumer does not exist); the retry path
    used to hide it behind an AccessRefused on the default exchange."""
    queue = names.queue()
    core = await open_core(url)
    try:
        await core.declare_queue(queue)
        with pytest.raises(postage.PreconditionFailed, match="fast reply consumer"):
            await core.publish("", queue, b"x",
                               postage.Properties(reply_to="amq.rabbitmq.reply-to"))
        await core.publish("", queue, b"after")  # the connection goes on
    finally:
        await core.close(5)
