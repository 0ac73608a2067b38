"""Task queues of both communicators: results, durability, retries and the dead-letter queue."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

import postage

from .conftest import Comm, Names, make_subscriber, open_comm, pika_queue_state, pika_read


async def test_task_round_trip_on_a_named_queue(comm: Comm, names: Names, kind: str) -> None:
    seen: list[tuple[Any, Any]] = []

    def work(c: Any, body: Any) -> Any:
        seen.append((c, body))
        return body.upper()

    queue = await comm.task_queue(names.queue("tasks"), prefetch_count=2)
    ident = await queue.add_task_subscriber(make_subscriber(kind, work))
    assert isinstance(ident, str)
    future = await queue.task_send("hello")
    assert await asyncio.wait_for(future, 10) == "HELLO"
    assert seen == [(comm.callback_comm, "hello")]


async def test_default_task_queue(comm: Comm, options: dict[str, Any], kind: str) -> None:
    await comm.add_task_subscriber(make_subscriber(kind, lambda _c, b: b * 3))
    assert await asyncio.wait_for(await comm.task_send(5), 10) == 15
    # the default queue is the configured one
    state = await asyncio.to_thread(pika_queue_state, comm_url(comm), options["task_queue"])
    assert state[1] == 1


def comm_url(comm: Comm) -> str:
    core = comm.comm.aio.core if comm.flavour == "sync" else comm.comm.core
    url: str = core.settings.urls[0]
    return url


async def test_tasks_wait_in_a_durable_queue_for_a_worker(
    comm: Comm, comm2: Comm, names: Names, broker_url: str
) -> None:
    name = names.queue("durable")
    sender = await comm.task_queue(name)
    future = await sender.task_send({"n": 1})
    assert (await asyncio.to_thread(pika_queue_state, broker_url, name))[0] == 1
    listing = await asyncio.to_thread(
        lambda: comm_broker_durable(broker_url, name))
    assert listing, "the task queue must be durable"
    worker = await comm2.task_queue(name)
    await worker.add_task_subscriber(lambda _c, b: b["n"] + 1)
    assert await asyncio.wait_for(future, 10) == 2


def comm_broker_durable(url: str, queue: str) -> bool:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        # Redeclaring with durable=True succeeds only if the queue is durable (else 406).
        channel.queue_declare(queue, durable=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


async def test_task_messages_on_the_wire(comm: Comm, names: Names, broker_url: str) -> None:
    name = names.queue("wire")
    queue = await comm.task_queue(name)
    assert await queue.task_send(["a", 1], no_reply=True) is None
    pending = await queue.task_send("b")
    [(props, body), (props2, body2)] = await asyncio.to_thread(pika_read, broker_url, name, 2)
    pending.cancel()
    assert props.delivery_mode == 2 and props2.delivery_mode == 2  # persistent
    assert props.content_type == "application/json"
    assert props.reply_to is None
    envelope = json.loads(body)
    assert envelope["type"] == "task" and envelope["name"] == name
    assert envelope["category"] == "message" and envelope["version"] == "2"
    assert envelope["content"] == {"parameters": ["a", 1]}
    assert envelope["fingerprint"]["type"] == "communicator"
    assert props2.reply_to and props2.correlation_id
    assert json.loads(body2)["category"] == "rpc"


async def test_no_reply_task_is_still_run(comm: Comm, names: Names, kind: str) -> None:
    done = threading.Event()
    queue = await comm.task_queue(names.queue("noreply"))
    await queue.add_task_subscriber(make_subscriber(kind, lambda _c, _b: done.set()))
    assert await queue.task_send("x", no_reply=True) is None
    assert await asyncio.to_thread(done.wait, 10)


async def test_failing_task_retried_then_dead_lettered(
    flavour: str, broker_url: str, options: dict[str, Any], names: Names, kind: str
) -> None:
    comm = await open_comm(flavour, broker_url, **{**options, "task_max_attempts": 3})
    try:
        attempts: list[Any] = []

        def failing_task(_c: Any, body: Any) -> Any:
            attempts.append(body)
            raise ValueError(f"cannot do {body}")

        name = names.queue("failing")
        queue = await comm.task_queue(name)
        await queue.add_task_subscriber(make_subscriber(kind, failing_task))
        future = await queue.task_send("job-1")
        with pytest.raises(postage.RemoteError) as info:
            await asyncio.wait_for(future, 15)
        # only the final failure is reported; by then every attempt has been made
        assert attempts == ["job-1"] * 3
        assert info.value.type_name == "ValueError"
        assert info.value.remote_message == "cannot do job-1"
        assert info.value.remote_traceback == ""  # opt-in: error_details=True
        [(props, body)] = await asyncio.to_thread(pika_read, broker_url, f"{name}.dlq", 1)
        assert props.headers["x-postage-reason"] == "handler-failed"
        assert "ValueError: cannot do job-1" in props.headers["x-postage-error"]
        assert props.headers["x-postage-attempts"] == 3
        assert json.loads(body)["content"] == {"parameters": "job-1"}
    finally:
        await comm.close()


async def test_task_succeeds_after_a_retry(comm: Comm, names: Names, broker_url: str) -> None:
    attempts: list[Any] = []

    def flaky(_c: Any, body: Any) -> Any:
        attempts.append(body)
        if len(attempts) < 2:
            raise RuntimeError("transient")
        return "ok"

    name = names.queue("flaky")
    queue = await comm.task_queue(name)
    await queue.add_task_subscriber(flaky)
    assert await asyncio.wait_for(await queue.task_send(1), 15) == "ok"
    assert attempts == [1, 1]
    assert (await asyncio.to_thread(pika_queue_state, broker_url, f"{name}.dlq"))[0] == 0


async def test_reject_dead_letters_at_once(comm: Comm, names: Names, broker_url: str) -> None:
    calls: list[Any] = []

    def refuse(_c: Any, body: Any) -> Any:
        calls.append(body)
        raise postage.Reject("not for me")

    name = names.queue("reject")
    queue = await comm.task_queue(name)
    await queue.add_task_subscriber(refuse)
    with pytest.raises(postage.RemoteError) as info:
        await asyncio.wait_for(await queue.task_send(1), 15)
    assert info.value.type_name == "Reject"
    assert calls == [1]
    [(props, _)] = await asyncio.to_thread(pika_read, broker_url, f"{name}.dlq", 1)
    assert props.headers["x-postage-reason"] == "rejected"


async def test_remove_task_subscriber_stops_delivery(
    comm: Comm, names: Names, broker_url: str
) -> None:
    calls: list[Any] = []
    name = names.queue("remove")
    queue = await comm.task_queue(name)
    ident = await queue.add_task_subscriber(lambda _c, b: calls.append(b))
    await asyncio.wait_for(await queue.task_send(1), 10)
    await queue.remove_task_subscriber(ident)
    await queue.task_send(2, no_reply=True)
    ready, consumers = await asyncio.to_thread(pika_queue_state, broker_url, name)
    assert (ready, consumers) == (1, 0)
    assert calls == [1]


async def test_task_deadline(
    flavour: str, broker_url: str, options: dict[str, Any], names: Names
) -> None:
    comm = await open_comm(flavour, broker_url, **{**options, "task_timeout": 0.3})
    try:
        queue = await comm.task_queue(names.queue("nobody-works"))
        future = await queue.task_send("x")
        with pytest.raises(postage.RpcTimeout):
            await asyncio.wait_for(future, 10)
    finally:
        await comm.close()


async def test_task_to_an_unknown_queue_is_unroutable(comm: Comm, names: Names) -> None:
    """A queue object made elsewhere and deleted meanwhile: the broker returns the task."""
    name = names.queue("gone")
    queue = await comm.task_queue(name)
    import pika

    def delete() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(comm_url(comm)))
        connection.channel().queue_delete(name)
        connection.close()

    await asyncio.to_thread(delete)
    with pytest.raises(postage.Unroutable):
        await queue.task_send("x")
