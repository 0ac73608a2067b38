"""Fixtures for the transport contract: every test runs against RabbitMQ and against the
in-memory broker (``postage.testing``); a difference in behaviour is a bug of the latter.

``url``    the broker URL of the parameter: ``broker_url`` (marked ``broker``) or the
           ``memory://`` URL of a fresh in-memory broker (``postage_url`` of the plugin).
``core``   an open Core on it; ``names`` gives unique names, deleted after the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from postage import PostageError
from postage._core.core import Core, open_core
from tests.names import Names


@pytest.fixture(params=[pytest.param("rabbitmq", marks=pytest.mark.broker), "memory"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("broker_url"))
    return str(request.getfixturevalue("postage_url"))


@pytest.fixture
def names() -> Names:
    return Names("contract")


@pytest.fixture
async def core(url: str, names: Names) -> AsyncIterator[Core]:
    c = await open_core(url, publish_timeout=5.0)
    try:
        yield c
    finally:
        await c.close(5)
        cleaner = await open_core(url)
        try:
            for queue in names.queues:
                for name in (queue, f"{queue}.dlq"):
                    with contextlib.suppress(PostageError):
                        await cleaner.transport.delete_queue(name, timeout=5)
            for exchange in names.exchanges:
                with contextlib.suppress(PostageError):
                    await cleaner.transport.delete_exchange(exchange, timeout=5)
        finally:
            await cleaner.close(5)
