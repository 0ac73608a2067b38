"""The broker's delivery limit of quorum queues, per RabbitMQ version (docs/reliability.md,
"RabbitMQ versions"): a message returned to its quorum queue over and over (nacked with
requeue, or left unsettled by a consumer that dies) ends in ``<queue>.dlq`` once over the
``delivery_limit`` Postage declares; without one, RabbitMQ 4 applies its default of 20 and
then drops the message, which RabbitMQ 3 never does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from postage._core.core import Core, open_core
from postage._transport import Delivery
from tests.conftest import ON_RABBITMQ_4

pytestmark = pytest.mark.broker


async def _nacked(core: Core, queue: str) -> bool:
    delivery = await core.get(queue)
    if delivery is None:
        return False
    await delivery.nack(requeue=True)
    return True


async def _left_by_a_dying_consumer(core: Core, queue: str) -> bool:
    got = asyncio.Event()

    async def take(_delivery: Delivery) -> None:
        got.set()  # never settled: its channel closes with it

    consumer = await core.consume_raw(queue, take, prefetch_count=1)
    try:
        await asyncio.wait_for(got.wait(), 2)
    except TimeoutError:
        return False
    finally:
        await consumer.cancel(1)
    return True


RETURNS: dict[str, Callable[[Core, str], Awaitable[bool]]] = {
    "nacked": _nacked, "dying consumer": _left_by_a_dying_consumer}


@pytest.mark.parametrize("returned", sorted(RETURNS))
@pytest.mark.parametrize("limit", [None, 3])
async def test_a_message_returned_over_and_over(broker_url: str, returned: str,
                                               limit: int | None) -> None:
    queue = f"test.qlimit.{uuid.uuid4().hex[:8]}"
    core = await open_core(broker_url)
    try:
        await core.declare_queue(queue, quorum=True, delivery_limit=limit)
        await core.publish("", queue, b"poison")
        deliveries = 0
        while deliveries < 25 and await RETURNS[returned](core, queue):
            deliveries += 1
        await asyncio.sleep(0.5)
        left = (await core.queue_state(queue))[0]
        if limit is not None:  # over the limit: dead-lettered, on every version
            assert (deliveries, left) == (limit + 1, 0)
            assert (await core.queue_state(f"{queue}.dlq"))[0] == 1
        elif ON_RABBITMQ_4:  # RabbitMQ 4's default limit, and no dead-letter queue: gone
            assert (deliveries, left) == (21, 0)
        else:  # RabbitMQ 3: no limit unless declared
            assert (deliveries, left) == (25, 1)
    finally:
        for name in (queue, f"{queue}.dlq"):
            await core.transport.delete_queue(name)
        await core.close(2)
