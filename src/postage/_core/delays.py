"""Delayed messages on RabbitMQ itself (no plugin): the topology and the publish.

The layout is :mod:`postage._wire.delays`: one durable queue per power of two of 10 ms,
each with its own TTL, chained by dead-lettering and exchange-to-exchange bindings. A
delayed message is persistent, confirmed when it is stored in its first level queue, and
survives restarts of its sender, its consumer and the broker. A message whose target is
gone when its delay ends goes to the queue ``postage.delay.unrouted`` (the deliver
exchange's alternate exchange) instead of being dropped.
"""

from __future__ import annotations

__all__ = ["HEADER_DELAY", "UNROUTED", "Delays"]

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from .._wire.delays import (
    DELIVER,
    ENTRY,
    LEVELS,
    UNIT,
    delay_key,
    level_exchange,
    level_pattern,
    level_queue,
    target_pattern,
    ticks,
)
from .._wire.properties import PERSISTENT, Binding, ExchangeSpec, Properties, QueueSpec
from .inbound import HEADER_EXCHANGE, HEADER_ROUTING_KEY

if TYPE_CHECKING:
    from .._transport import Transport

HEADER_DELAY = "x-postage-delay-ms"
UNROUTED = "postage.delay.unrouted"
# headers a trip through the levels leaves on a message: dropped before another trip
_TRIP_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                 "x-first-death-reason", "CC")


class Delays:
    """Delayed publishing for one transport (the topology is declared on first use)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._declared = False
        self._lock = asyncio.Lock()
        self._targets: set[tuple[str, str]] = set()

    @staticmethod
    def wanted(delay: float | None) -> bool:
        """True when ``delay`` (seconds) is long enough to take the delay path;
        ConfigurationError when it is not a delay at all."""
        if delay is None:
            return False
        ticks(delay)  # refuses a negative or too long one
        return delay >= UNIT / 2

    async def publish(
        self, delay: float, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None, *, mandatory: bool, timeout: float | None,
    ) -> None:
        """Send ``body`` to ``exchange``/``routing_key`` in ``delay`` seconds (confirmed
        now, when it is stored). Consumers see the target in ``x-postage-exchange`` and
        ``x-postage-routing-key`` (the delivery's own routing key is the delay's)."""
        kind, name = ("x", exchange) if exchange else ("q", routing_key)
        key = delay_key(delay, kind, name)  # ConfigurationError for a bad delay or name
        await self._declare()
        await self._bind_target(kind, name)
        props = properties if properties is not None else Properties()
        headers = {k: v for k, v in (props.headers or {}).items() if k not in _TRIP_HEADERS}
        headers.setdefault(HEADER_EXCHANGE, exchange)
        headers.setdefault(HEADER_ROUTING_KEY, routing_key)
        headers[HEADER_DELAY] = round(delay * 1000)
        if exchange:
            headers["CC"] = [routing_key]  # the target's own key, kept through the trip
        # persistent, so that it survives a broker restart in the durable level queues;
        # no expiration: a per-message TTL would cut the wait short
        props = replace(props, headers=headers, delivery_mode=PERSISTENT, expiration=None)
        await self.transport.publish(ENTRY, key, body, props, mandatory=mandatory,
                                     timeout=timeout)

    async def prepare(self, queue: str) -> None:
        """Declare the delay queues and the route back to ``queue`` now (a consumer that
        retries with back-off), so that its first retry waits no longer than it should."""
        await self._declare()
        await self._bind_target("q", queue)

    async def _declare(self) -> None:
        if not self._declared:
            async with self._lock:
                await self._declare_once()

    async def _declare_once(self) -> None:
        if self._declared:  # by another caller, while this one waited for the lock
            return
        declare = self.transport.declare_exchange
        await declare(ExchangeSpec.make(UNROUTED, "fanout", durable=True))
        await self.transport.declare_queue(QueueSpec.make(UNROUTED, durable=True))
        await self.transport.bind(Binding(UNROUTED, UNROUTED, ""))
        await declare(ExchangeSpec.make(DELIVER, "topic", durable=True,
                                        arguments={"alternate-exchange": UNROUTED}))
        for level in range(LEVELS):
            await declare(ExchangeSpec.make(level_exchange(level), "topic", durable=True))
            ttl = round((2**level) * UNIT * 1000)
            await self.transport.declare_queue(QueueSpec.make(
                level_queue(level), durable=True, arguments={
                    "x-message-ttl": ttl,
                    "x-dead-letter-exchange": level_exchange(level - 1)}))
            await self.transport.bind(Binding(
                level_queue(level), level_exchange(level), level_pattern(level, "1")))
            await self.transport.bind(Binding(
                level_exchange(level - 1), level_exchange(level),
                level_pattern(level, "0"), to_exchange=True))
        self._declared = True

    async def _bind_target(self, kind: str, name: str) -> None:
        if (kind, name) in self._targets:
            return
        await self.transport.bind(Binding(name, DELIVER, target_pattern(kind, name),
                                          to_exchange=kind == "x"))
        self._targets.add((kind, name))
