"""The ``postage`` pytest plugin (registered through the ``pytest11`` entry point).

Fixtures for testing components built on Postage, without RabbitMQ:

``postage_broker``  a fresh :class:`postage.testing.MemoryBroker` per test, to inspect
                    (``message_count``, ``peek``, ``queue_names``, ...) or to cut connections
                    (``drop_connections``);
``postage_url``     its ``memory://`` URL, for any API: ``postage.AsyncClient(postage_url)``,
                    ``postage.connect(postage_url)``, ``POSTAGE_URL`` for the classic API.

The plugin adds no options, markers or hooks, so it cannot change how other tests run.
"""

from __future__ import annotations

__all__ = ["postage_broker", "postage_url"]

from collections.abc import Iterator

import pytest

from .testing import MemoryBroker, forget_broker, fresh_broker


@pytest.fixture
def postage_broker() -> Iterator[MemoryBroker]:
    """A new, empty in-memory broker, forgotten after the test."""
    broker = fresh_broker()
    try:
        yield broker
    finally:
        forget_broker(broker)


@pytest.fixture
def postage_url(postage_broker: MemoryBroker) -> str:
    """The ``memory://`` URL of ``postage_broker``."""
    return postage_broker.url
