"""Connecting, closing (cleanly, waiting for running subscribers), options, public names."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

import postage
import postage.aio

from .conftest import Names, pika_queue_state


def test_public_names() -> None:
    for name in ("connect", "Communicator", "BroadcastFilter", "TaskQueue", "aio"):
        assert name in postage.__all__
        assert hasattr(postage, name)
    assert set(postage.aio.__all__) == {
        "AsyncCommunicator", "AsyncTaskQueue", "BroadcastFilter", "CommunicatorOptions",
        "connect",
    }
    assert postage.aio.BroadcastFilter is postage.BroadcastFilter


def test_url_without_credentials_means_guest(broker_url: str) -> None:
    parts = urlsplit(broker_url)
    bare = f"amqp://{parts.hostname}:{parts.port}"
    with postage.connect(bare) as comm:
        assert comm.broadcast_send("hello") is True


def test_context_manager_waits_for_running_subscribers(broker_url: str, names: Names) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow(_c: Any, _body: Any) -> str:
        started.set()
        time.sleep(0.5)
        finished.set()
        return "done"

    name = names.queue("close")
    with postage.connect(broker_url) as worker:
        worker.task_queue(name).add_task_subscriber(slow)
        with postage.connect(broker_url) as sender:
            sender.task_queue(name).task_send("x", no_reply=True)
        assert started.wait(10)
    # leaving the block closed the worker after the running task finished and was acked
    assert finished.is_set()
    assert worker.is_closed()
    assert pika_queue_state(broker_url, name) == (0, 0)
    with pytest.raises(postage.ConnectionClosed):
        worker.rpc_send("anyone", 1)
    worker.close()  # closing twice is harmless


def test_close_cancels_futures_still_waiting(broker_url: str, names: Names) -> None:
    comm = postage.connect(broker_url)
    queue = comm.task_queue(names.queue("pending"))
    future = queue.task_send("never handled")
    assert future is not None
    comm.close()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(5)


def test_cancelling_a_future_forgets_the_call(broker_url: str, names: Names) -> None:
    with postage.connect(broker_url) as comm:
        ident = names.identifier()
        release = threading.Event()
        comm.add_rpc_subscriber(lambda _c, _b: release.wait(10), ident)
        future = comm.rpc_send(ident, 1)
        assert future.cancel()
        core = comm.aio.core
        deadline = time.monotonic() + 5
        while core.pending_calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert core.pending_calls == 0
        release.set()


async def test_async_context_manager(broker_url: str, names: Names) -> None:
    done = asyncio.Event()

    async def slow(_c: Any, _body: Any) -> None:
        await asyncio.sleep(0.3)
        done.set()

    name = names.queue("aclose")
    async with postage.aio.connect(broker_url) as comm:
        assert isinstance(comm, postage.aio.AsyncCommunicator)
        queue = await comm.task_queue(name)
        await queue.add_task_subscriber(slow)
        await queue.task_send(1, no_reply=True)
        await asyncio.sleep(0.1)  # let the delivery start; close must wait for it
    assert done.is_set()
    assert comm.is_closed()
    comm2 = await postage.aio.connect(broker_url)  # the awaitable form
    async with comm2:
        assert not comm2.is_closed()
    assert comm2.is_closed()


async def test_blocking_call_inside_async_subscriber_is_refused(
    broker_url: str, names: Names
) -> None:
    """An ``async def`` subscriber of a blocking communicator runs on the loop: a blocking
    verb there would deadlock, so it is refused; ``comm.aio`` is the way."""
    errors: list[BaseException] = []
    results: list[Any] = []
    comm = await asyncio.to_thread(postage.connect, broker_url)
    try:
        echo = names.identifier("echo")
        await asyncio.to_thread(comm.add_rpc_subscriber, lambda _c, b: b, echo)

        async def subscriber(c: Any, body: Any) -> Any:
            try:
                c.rpc_send(echo, body)
            except postage.WrongThreadError as exc:
                errors.append(exc)
            results.append(await (await c.aio.rpc_send(echo, body)))
            return "ok"

        ident = names.identifier()
        await asyncio.to_thread(comm.add_rpc_subscriber, subscriber, ident)
        future = await asyncio.to_thread(comm.rpc_send, ident, 5)
        assert await asyncio.wrap_future(future) == "ok"
        assert len(errors) == 1 and results == [5]
    finally:
        await asyncio.to_thread(comm.close)


def test_unknown_option_is_refused(broker_url: str) -> None:
    with pytest.raises(postage.ConfigurationError, match="rpc_timeuot"):
        postage.connect(broker_url, rpc_timeuot=3)
    with pytest.raises(postage.ConfigurationError):
        postage.connect(broker_url, task_max_attempts=0)


def test_options_reach_core_and_connection(broker_url: str) -> None:
    with postage.connect(broker_url, heartbeat=17, max_pending_calls=10, rpc_timeout=5,
                         name="options-test") as comm:
        core = comm.aio.core
        assert core.settings.heartbeat == 17
        assert core.max_pending_calls == 10
        assert comm.aio.options.rpc_timeout == 5
        assert comm.aio.options.name == "options-test"


def test_no_deadline_only_when_asked(broker_url: str) -> None:
    assert postage.aio.CommunicatorOptions().task_timeout == 3600.0
    with postage.connect(broker_url, task_timeout=None) as comm:
        assert comm.aio.options.task_timeout is None
