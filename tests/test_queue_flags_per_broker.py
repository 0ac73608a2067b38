"""Queues asked for as transient and shared (durable=False, exclusive=False): declared as
asked on RabbitMQ 3 (as Postage 1.2 and kiwiPy 0.9 declare the same queues), durable on
RabbitMQ 4, which deprecates them (4.3 refuses them by default; the RabbitMQ 4 stage of
``scripts/test`` runs with those defaults)."""

from __future__ import annotations

import asyncio
import uuid

from postage import AsyncClient
from postage.kiwipy import rmq
from tests.conftest import ON_RABBITMQ_4, Broker


def _flags(broker: Broker, queue: str) -> tuple[str, str, str]:
    """(durable, exclusive, auto_delete) of ``queue`` as the broker lists them."""
    listing = broker.ctl("list_queues", "name", "durable", "exclusive", "auto_delete",
                         "--no-table-headers")
    for line in listing.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return parts[1], parts[2], parts[3]
    raise AssertionError(f"{queue} is not on the broker: {listing}")


EXPECTED_DURABLE = "true" if ON_RABBITMQ_4 else "false"


async def test_a_receive_with_the_defaults_works_on_every_broker(broker: Broker,
                                                                 broker_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    exchange, queue = f"test.flags.x.{suffix}", f"test.flags.q.{suffix}"
    async with AsyncClient(broker_url) as client:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(body: bytes) -> None:
            await got.put(body)

        receiver = await client.receive(exchange, "k", queue, handler)
        assert await asyncio.to_thread(_flags, broker, queue) == (
            EXPECTED_DURABLE, "false", "true")  # auto-delete as asked, on every broker
        await client.publish(exchange, "k", b"hello")
        assert await asyncio.wait_for(got.get(), 10) == b"hello"
        await receiver.cancel()
        await client.core.transport.delete_exchange(exchange)


async def test_kiwipy_testing_mode_task_queues_work_on_every_broker(broker: Broker,
                                                                   broker_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    comm = await rmq.async_connect(connection_params=broker_url, testing_mode=True,
                                   message_exchange=f"test.flags.m.{suffix}",
                                   task_exchange=f"test.flags.t.{suffix}",
                                   task_queue=f"test.flags.tasks.{suffix}")
    try:
        await comm.add_task_subscriber(lambda _comm, task: f"{task} done")
        result = await comm.task_send("job")
        assert await asyncio.wait_for(result, 10) == "job done"
        assert (await asyncio.to_thread(_flags, broker, f"test.flags.tasks.{suffix}"))[:2] == (
            EXPECTED_DURABLE, "false")
    finally:
        await comm.disconnect()
