"""Hostile and malformed input at the core: a queue consumed with ``core.subscribe`` and a
dispatcher that calls ``core.decode_envelope``. No bad message reaches the handler; each is
moved to ``<queue>.dlq`` with an ``x-postage-reason`` header; the consumer keeps going."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from postage import EncodingError, Properties
from postage._core.core import HEADER_REASON, Core, open_core
from postage._transport import Delivery
from postage._wire.envelope import build_envelope
from tests.names import Names, pika_cleanup
from tests.pika_helpers import pika_read

LIMIT = 1024 * 1024
GOOD = build_envelope("command", "ping", content={"n": 1})
JSON = "application/json"


def _env(**changes: Any) -> dict[str, Any]:
    env = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            env.pop(key)
        else:
            env[key] = value
    return env


def hostile_inputs(core: Core) -> list[tuple[str, bytes, str | None]]:
    """(kind, body, content type) of messages that must never reach a handler."""
    enc = core.encoder.encode
    nested = 100_000
    return [
        ("non-JSON", b"hello, world", JSON),
        ("non-JSON", b"{'single': 'quotes'}", JSON),
        ("non-JSON", b"\x80\x04\x95pickle-like\x94.", None),
        ("invalid UTF-8", b'{"type": "\xff\xfe"}', JSON),
        ("invalid UTF-8", b"\xc3\x28", None),
        ("wrong JSON type", b"[1, 2, 3]", JSON),
        ("wrong JSON type", b'"a string"', JSON),
        ("wrong JSON type", b"42", JSON),
        ("wrong JSON type", b"null", JSON),
        ("wrong JSON type", enc(_env(type=7)), JSON),
        ("wrong JSON type", enc(_env(name=None)), JSON),
        ("wrong JSON type", enc(_env(category="broadcast")), JSON),
        ("wrong JSON type", enc(_env(fingerprint=[1])), JSON),
        ("wrong JSON type", enc(_env(_reserved="x")), JSON),
        ("wrong JSON type", enc(_env(type="result", content={"type": "maybe"})), JSON),
        ("missing key", enc(_env(type=...)), JSON),
        ("missing key", enc(_env(content=...)), JSON),
        ("missing key", enc(_env(version=...)), JSON),
        ("extra key", enc(_env(__class__="os.system")), JSON),
        ("unknown version", enc(_env(version="3")), JSON),
        ("unknown version", enc(_env(version=2)), JSON),
        ("deeply nested", b"[" * nested + b"]" * nested, JSON),
        ("deeply nested", b'{"a":' * nested + b"1" + b"}" * nested, JSON),
        ("empty body", b"", JSON),
        ("empty body", b"", None),
        ("over-size", b'{"pad": "' + b"x" * (LIMIT + 10) + b'"}', JSON),
        ("wrong content type", enc(GOOD), "application/x-python-pickle"),
        ("wrong content type", enc(GOOD), "application/x-yaml"),
        ("wrong content type", enc(GOOD), "text/plain"),
    ]


@pytest.fixture
async def cores(broker_url: str) -> AsyncIterator[tuple[Core, Core]]:
    consumer = await open_core(broker_url, max_message_size=LIMIT)
    publisher = await open_core(broker_url)  # default limit (16 MiB): can send the big one
    yield consumer, publisher
    await consumer.close(5)
    await publisher.close(5)


class Dispatcher:
    """What an API does: decode the envelope, then call the user's handler."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.handled: list[dict[str, Any]] = []
        self.deliveries = 0
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries += 1
        envelope = self.core.decode_envelope(delivery)  # DecodingError -> dead letter
        self.handled.append(envelope)
        self.changed.set()

    async def wait_handled(self, count: int, timeout: float = 20) -> None:
        async def until() -> None:
            while len(self.handled) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)


async def _run_batch(
    consumer: Core, publisher: Core, broker_url: str, inputs: list[tuple[str, bytes, str | None]]
) -> tuple[Dispatcher, list[tuple[Any, bytes]], str]:
    names = Names("hostile")
    queue = f"test.hostile.{uuid.uuid4().hex[:10]}"
    names.queues.append(queue)
    sub = None
    try:
        await consumer.declare_queue(queue)
        dispatcher = Dispatcher(consumer)
        sub = await consumer.subscribe(queue, dispatcher, prefetch_count=10)
        for _, body, content_type in inputs:
            await publisher.publish("", queue, body, Properties(content_type=content_type))
        # then a valid message: handled, so the consumer went on
        await publisher.publish("", queue, publisher.encode(GOOD), publisher.properties())
        await dispatcher.wait_handled(1)
        dead = await asyncio.to_thread(pika_read, broker_url, f"{queue}.dlq", len(inputs), 30)
        assert sub.consumer is not None and sub.consumer.active
        return dispatcher, dead, queue
    finally:
        if sub is not None:  # first, or recovery would declare the deleted queue again
            await sub.cancel()
        await asyncio.to_thread(pika_cleanup, broker_url, names)


async def test_hostile_inputs_never_reach_the_handler(
    cores: tuple[Core, Core], broker_url: str
) -> None:
    consumer, publisher = cores
    inputs = hostile_inputs(consumer)
    reconnections = consumer.transport.reconnections
    dispatcher, dead, _ = await _run_batch(consumer, publisher, broker_url, inputs)
    assert dispatcher.handled == [GOOD]  # only the valid one
    assert len(dead) == len(inputs)
    assert sorted(body for _, body in dead) == sorted(body for _, body, _ in inputs)
    reasons = {props.headers[HEADER_REASON] for props, _ in dead}
    assert reasons == {"undecodable"}
    assert all(props.headers.get("x-postage-error") for props, _ in dead)
    assert consumer.transport.reconnections == reconnections  # no restarts
    kinds: dict[str, int] = {}
    for kind, _, _ in inputs:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"\nhostile inputs: {len(inputs)} tried, by kind {kinds}; reached handler 0, "
          f"dead-lettered {len(dead)}, consumer restarts 0")


async def test_random_bytes_batch(cores: tuple[Core, Core], broker_url: str) -> None:
    """A bounded, reproducible fuzz over the broker: random bodies and content types."""
    consumer, publisher = cores
    rng = random.Random(20260126)
    inputs: list[tuple[str, bytes, str | None]] = []
    for _ in range(150):
        body = rng.randbytes(rng.randrange(0, 300))
        if rng.random() < 0.3:  # JSON-looking noise
            body = b"{" + body.replace(b"}", b"") + b"}"
        content_type = rng.choice([None, JSON, "text/plain", "application/octet-stream"])
        inputs.append(("random", body, content_type))
    dispatcher, dead, _ = await _run_batch(consumer, publisher, broker_url, inputs)
    assert dispatcher.handled == [GOOD]
    assert len(dead) == len(inputs)
    print(f"\nrandom batch: {len(inputs)} tried, reached handler 0, dead-lettered {len(dead)}")


async def test_publishing_over_the_limit_fails_before_sending(
    cores: tuple[Core, Core], broker_url: str
) -> None:
    consumer, _ = cores
    queue = f"test.hostile.big.{uuid.uuid4().hex[:10]}"
    await consumer.declare_queue(queue, auto_delete=False)
    try:
        with pytest.raises(EncodingError, match="over the limit"):
            await consumer.publish("", queue, b"x" * (LIMIT + 1))
        with pytest.raises(EncodingError, match="over the limit"):
            await consumer.publish_envelope("", queue, _env(content={"pad": "x" * LIMIT}))
        assert await consumer.transport.queue_state(queue) == (0, 0)  # nothing was sent
    finally:
        await consumer.transport.delete_queue(queue)
