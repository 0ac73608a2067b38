"""Waiting, with a deadline, until another process serves an RPC identifier or a task queue
(``wait_for_subscriber``), on both communicators, against RabbitMQ and the memory broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import postage
from postage.testing import forget_broker, fresh_broker

from .conftest import Comm, Names, close_comm, open_comm


@pytest.fixture(params=[pytest.param("rabbitmq", marks=pytest.mark.broker), "memory"])
def url(request: pytest.FixtureRequest, broker_url: str) -> Any:
    if request.param == "rabbitmq":
        yield broker_url
        return
    broker = fresh_broker()
    yield broker.url
    forget_broker(broker)


async def _later(delay: float, coro: Any) -> Any:
    await asyncio.sleep(delay)
    return await coro


async def test_wait_for_an_rpc_subscriber_of_another_connection(
        flavour: str, url: str, names: Names, options: dict[str, Any]) -> None:
    client = await open_comm(flavour, url, **options)
    server = await open_comm("async", url, **options)
    identifier = names.identifier()
    try:
        with pytest.raises(postage.Unroutable):  # why one waits: nobody serves it yet
            await (await client.rpc_send(identifier, 1))
        with pytest.raises(postage.DeliveryTimeout, match="RPC subscriber"):
            await client.wait_for_subscriber(identifier, 0.3)
        started = time.monotonic()
        serving = asyncio.ensure_future(_later(0.5, server.add_rpc_subscriber(
            lambda _c, n: n + 1, identifier)))
        await client.wait_for_subscriber(identifier, 10)
        assert 0.4 < time.monotonic() - started < 3
        await serving
        assert await asyncio.wait_for(await client.rpc_send(identifier, 41), 10) == 42
        await client.wait_for_subscriber(identifier, 1)  # served: returns at once
    finally:
        await close_comm(server)
        await close_comm(client)


async def test_wait_for_a_task_subscriber(flavour: str, url: str, names: Names,
                                          options: dict[str, Any]) -> None:
    client = await open_comm(flavour, url, **options)
    worker = await open_comm("async", url, **options)
    name = names.queue("tasks")
    try:
        queue: Comm = await client.task_queue(name)
        with pytest.raises(postage.DeliveryTimeout, match=name):
            await queue.wait_for_subscriber(0.3)  # the queue exists, nobody consumes it
        worker_queue = await worker.task_queue(name)
        serving = asyncio.ensure_future(_later(0.5, worker_queue.add_task_subscriber(
            lambda _c, body: body * 2)))
        await queue.wait_for_subscriber(10)
        await serving
        assert await asyncio.wait_for(await queue.task_send(21), 10) == 42
    finally:
        await close_comm(worker)
        await close_comm(client)


async def test_a_missing_task_queue_is_waited_for_too(url: str, names: Names,
                                                      options: dict[str, Any]) -> None:
    client = await open_comm("async", url, **options)
    try:
        # the queue does not even exist: still a timeout, not NotFound
        with pytest.raises(postage.DeliveryTimeout, match="consumer"):
            await client.comm.core.wait_for_consumer(names.queue("none"), 0.2, "consumer")
    finally:
        await close_comm(client)
