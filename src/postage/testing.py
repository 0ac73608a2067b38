"""Testing helpers: an in-memory broker for testing components without RabbitMQ.

Every Postage API accepts a ``memory://NAME`` URL: it connects to the process-wide
:class:`MemoryBroker` called NAME (created on first use), which routes, queues,
acknowledges and redelivers as RabbitMQ does, within the process. With pytest, the
``postage`` plugin (installed with the package) gives each test a fresh broker::

    async def test_greeter(postage_url: str) -> None:
        async with postage.AsyncClient(postage_url) as client:
            ...

Fixtures: ``postage_broker`` (a new :class:`MemoryBroker`, forgotten after the test) and
``postage_url`` (its ``memory://`` URL). Outside pytest, :func:`fresh_broker` does the same.
"""

from __future__ import annotations

__all__ = [
    "Clock",
    "ManualClock",
    "MemoryBroker",
    "MemoryDelivery",
    "MemoryTransport",
    "SystemClock",
    "forget_broker",
    "fresh_broker",
    "named_broker",
]

import itertools
import os

from ._transport.memory import MemoryDelivery, MemoryTransport
from ._transport.memory.broker import MemoryBroker
from ._transport.memory.clock import Clock, ManualClock, SystemClock
from ._transport.memory.names import _named, _named_lock, named_broker

_fresh = itertools.count(1)


def fresh_broker(prefix: str = "test", *, clock: Clock | None = None) -> MemoryBroker:
    """A new, empty broker reachable as ``broker.url`` (``memory://<prefix>-<n>``) from any
    API of this process. Call :func:`forget_broker` when done with it.

    ``clock``: what message TTLs and delays count on; a :class:`ManualClock` moves only
    when the test calls ``clock.advance(seconds)``, so a test of retries with back-off or
    of delayed messages does not sleep."""
    while True:
        name = f"{prefix}-{os.getpid()}-{next(_fresh)}"
        with _named_lock:
            if name not in _named:
                broker = _named[name] = MemoryBroker(name, clock)
                return broker


def forget_broker(broker: MemoryBroker) -> None:
    """Drop ``broker`` from the process-wide registry: its URL then names a new, empty one."""
    with _named_lock:
        if _named.get(broker.name) is broker:
            del _named[broker.name]
