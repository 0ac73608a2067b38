"""An RPC request expires on the broker when its caller stops waiting (every API).

Before, 10,000 ``AsyncClient.rpc`` calls to a queue without a consumer timed out at the
caller, and all 10,000 requests stayed queued, to be run later by a server that comes up,
with nobody waiting for the answers. Now each request's ``expiration`` is its call's
deadline. Tasks do not expire: their work matters without their result.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pika
import pytest

import postage
from postage import RpcTimeout, messaging
from postage._api.communicator import open_communicator
from postage._core.core import Core

from ..classic.conftest import classic_url, classic_vhost, env_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


async def _drained(core: Core, queue: str, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    while True:
        ready, _ = await core.queue_state(queue)
        if ready == 0 or time.monotonic() > deadline:
            return ready


async def test_ten_thousand_timed_out_client_calls_leave_nothing_queued(broker_url: str) -> None:
    queue = f"test.expiry.client.{uuid.uuid4().hex[:8]}"
    async with postage.AsyncClient(broker_url) as client:
        await client.core.declare_queue(queue)
        try:
            results = await asyncio.gather(
                *(client.rpc("", queue, b"nobody answers", timeout=1.0) for _ in range(10_000)),
                return_exceptions=True)
            assert all(isinstance(r, TimeoutError) for r in results)  # at their deadline
            left = await _drained(client.core, queue)
            print(f"\nrequests left queued after 10,000 timed-out calls: {left}")
            assert left == 0
        finally:
            await client.core.delete_queue(queue)


async def test_communicator_requests_expire_and_tasks_do_not(broker_url: str) -> None:
    uid = uuid.uuid4().hex[:8]
    ident, queue = f"test.expiry.{uid}", f"test.expiry.rpcq.{uid}"
    tasks_queue = f"test.expiry.t.{uid}"
    comm = await open_communicator(broker_url, rpc_timeout=1.0, task_timeout=1.0)
    core = comm.core
    try:
        await core.declare_queue(queue)  # served by nobody, bound as a subscriber's would be
        await core.bind(queue, comm.options.rpc_exchange, ident)
        futures = [await comm.rpc_send(ident, n) for n in range(100)]
        tasks = await comm.task_queue(tasks_queue)
        task_futures = [await tasks.task_send(n) for n in range(10)]
        for future in futures + task_futures:
            with pytest.raises(RpcTimeout):
                await future
        assert await _drained(core, queue) == 0
        ready, _ = await core.queue_state(tasks_queue)
        assert ready == 10  # the tasks are still there for a worker
    finally:
        for name in (queue, tasks_queue, f"{tasks_queue}.dlq"):
            await core.delete_queue(name)
        await comm.close(5)


def test_classic_rpc_requests_expire(env_url: str) -> None:  # noqa: F811
    uid = uuid.uuid4().hex[:8]
    exchange: type[messaging.Exchange] = type("ExpiryExchange", (messaging.Exchange,),
                    {"name": f"test.expiry.classic.{uid}", "durable": False})
    queue = f"test.expiry.classic.{uid}"

    class Producer(messaging.GenericProducer):
        eks = [(exchange, "k")]

    connection = pika.BlockingConnection(pika.URLParameters(env_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange.name, "direct")
        channel.queue_declare(queue, exclusive=True)  # (RabbitMQ 4.3: no transient shared)
        channel.queue_bind(queue, exchange.name, "k")
        answer = Producer().rpc_anything(_timeout=1, _max_retry=1)
        assert not answer and answer.body["content"]["value"] == "TimeoutError"
        deadline = time.monotonic() + 15
        while True:  # both tries expire once their caller stopped waiting
            left = channel.queue_declare(queue, passive=True).method.message_count
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left == 0
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(exchange.name)
        connection.close()
