"""Fixtures for the communicator tests.

``flavour`` runs a test against the blocking ``postage.connect`` and the asyncio
``postage.aio.connect`` through one adapter (``Comm``) whose verbs are coroutines: blocking
verbs run in a thread and their concurrent futures are wrapped, so each test is written once.
``kind`` makes a subscriber a plain function or an ``async def``. Every test gets its own
default task queue and broadcast exchange (other engineers share the broker), deleted with
pika at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pika
import pytest

import postage
import postage.aio
from tests.names import Names, pika_cleanup
from tests.pika_helpers import pika_read  # noqa: F401 - re-exported to the tests


def pika_queue_state(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of an existing queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ok = connection.channel().queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    finally:
        connection.close()


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    created = Names("comm")
    yield created
    pika_cleanup(broker_url, created)


class Comm:
    """One interface over both communicators: every verb is a coroutine; futures are
    asyncio futures of the test's loop."""

    def __init__(self, flavour: str, comm: Any) -> None:
        self.flavour = flavour
        self.comm = comm

    @property
    def callback_comm(self) -> Any:
        """What subscribers receive as ``comm``."""
        return self.comm

    def __getattr__(self, verb: str) -> Callable[..., Any]:
        method = getattr(self.comm, verb)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.flavour == "async":
                result = await method(*args, **kwargs)
            else:
                result = await asyncio.to_thread(method, *args, **kwargs)
            if isinstance(result, concurrent.futures.Future):
                return asyncio.wrap_future(result)
            if isinstance(result, postage.TaskQueue | postage.aio.AsyncTaskQueue):
                return Comm(self.flavour, result)
            return result

        return call


async def open_comm(flavour: str, url: str, **options: Any) -> Comm:
    if flavour == "async":
        return Comm(flavour, await postage.aio.connect(url, **options))
    return Comm(flavour, await asyncio.to_thread(functools.partial(postage.connect, url,
                                                                    **options)))


async def close_comm(comm: Comm) -> None:
    await comm.close()


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["plain", "async_def"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_subscriber(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself (plain: runs in a worker thread) or an ``async def`` calling it."""
    if kind == "plain":
        return fn

    @functools.wraps(fn)
    async def subscriber(*args: Any) -> Any:
        return fn(*args)

    return subscriber


@pytest.fixture
def options(names: Names) -> dict[str, Any]:
    """Per-test default task queue and broadcast exchange (the broker is shared)."""
    return {
        "task_queue": names.queue("default"),
        "broadcast_exchange": names.exchange("bc"),
        "rpc_timeout": 10.0,
        "task_timeout": 20.0,
    }


@pytest.fixture
async def comm(flavour: str, broker_url: str, options: dict[str, Any]) -> AsyncIterator[Comm]:
    opened = await open_comm(flavour, broker_url, **options)
    try:
        yield opened
    finally:
        with contextlib.suppress(Exception):
            await opened.close()


@pytest.fixture
async def comm2(flavour: str, broker_url: str, options: dict[str, Any]) -> AsyncIterator[Comm]:
    """A second communicator of the same flavour (another connection, same defaults)."""
    opened = await open_comm(flavour, broker_url, **options)
    try:
        yield opened
    finally:
        with contextlib.suppress(Exception):
            await opened.close()
