"""Fixtures for the async client tests: a client, unique names cleaned up afterwards, and a
plain pika reader for checking what reached a queue (independent of Postage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import postage
from tests.names import Names, pika_cleanup
from tests.pika_helpers import pika_read


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    n = Names("client")
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
