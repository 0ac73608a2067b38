"""Fixtures for the async client tests: a client, unique names cleaned up afterwards, and a
plain pika reader for checking what reached a queue (independent of Postage)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pika
import pytest

import postage
from tests.pika_helpers import pika_read


class Names:
    """Unique queue and exchange names; the queues, their ``.dlq`` and the exchanges are
    deleted at the end of the test."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, prefix: str = "q") -> str:
        name = f"test.client.{prefix}.{uuid.uuid4().hex[:10]}"
        self.queues.append(name)
        return name

    def exchange(self, prefix: str = "x") -> str:
        name = f"test.client.{prefix}.{uuid.uuid4().hex[:10]}"
        self.exchanges.append(name)
        return name


def pika_cleanup(url: str, names: Names) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for queue in names.queues:
            for name in (queue, f"{queue}.dlq"):
                channel = connection.channel()
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    channel.queue_delete(name)
        for exchange in names.exchanges:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.exchange_delete(exchange)
    finally:
        connection.close()


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    n = Names()
    yield n
    pika_cleanup(broker_url, n)


@pytest.fixture
async def client(broker_url: str) -> AsyncIterator[postage.AsyncClient]:
    async with postage.AsyncClient(broker_url) as c:
        yield c


@pytest.fixture
def read_queue(broker_url: str) -> Any:
    async def read(queue: str, count: int, timeout: float = 20.0) -> list[tuple[Any, bytes]]:
        return await asyncio.to_thread(pika_read, broker_url, queue, count, timeout)

    return read
