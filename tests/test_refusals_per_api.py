"""A declaration the broker refuses is an error at once on every API, naming the broker's
reason; never a reconnection loop or a timeout. The API keeps working afterwards.

The refusal here: the queue exists as a quorum queue, and the API declares a classic one
of the same name (PRECONDITION_FAILED, on RabbitMQ 3 and 4). ``OperationRefused`` (the
broker closing the whole connection) is tested in ``tests/transport_contract``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pika
import pytest

import postage
from postage import AsyncClient, PreconditionFailed
from postage.kiwipy import rmq

AT_ONCE = 5.0  # seconds: far below every deadline (30 s) a loop would reach


@pytest.fixture
def quorum_queue(broker_url: str) -> Iterator[str]:
    name = f"test.refusal.{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(broker_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        yield name
        channel.queue_delete(name)


async def test_async_client(broker_url: str, quorum_queue: str) -> None:
    async with AsyncClient(broker_url) as client:
        started = time.monotonic()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            await client.receive("", quorum_queue, quorum_queue, lambda body: None,
                                 durable=True)
        assert time.monotonic() - started < AT_ONCE
        assert await client.core.queue_state(quorum_queue) == (0, 0)  # still usable


def test_blocking_communicator(broker_url: str, quorum_queue: str) -> None:
    with postage.connect(broker_url) as comm:
        started = time.monotonic()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            comm.task_queue(quorum_queue)
        assert time.monotonic() - started < AT_ONCE
        assert comm.broadcast_send("still here")


async def test_asyncio_communicator(broker_url: str, quorum_queue: str) -> None:
    async with postage.aio.connect(broker_url) as comm:
        started = time.monotonic()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            await comm.task_queue(quorum_queue)
        assert time.monotonic() - started < AT_ONCE
        assert await comm.broadcast_send("still here")


def test_kiwipy_thread_communicator(broker_url: str, quorum_queue: str) -> None:
    comm = rmq.RmqThreadCommunicator.connect(connection_params=broker_url)
    try:
        started = time.monotonic()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            comm.task_queue(quorum_queue)
        assert time.monotonic() - started < AT_ONCE
        assert comm.broadcast_send("still here")
    finally:
        comm.close()


async def test_kiwipy_asyncio_communicator(broker_url: str, quorum_queue: str) -> None:
    comm = await rmq.async_connect(connection_params=broker_url)
    try:
        started = time.monotonic()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            await comm.task_queue(quorum_queue)
        assert time.monotonic() - started < AT_ONCE
        assert await asyncio.wait_for(comm.broadcast_send("still here"), AT_ONCE)
    finally:
        await comm.disconnect()
