"""Delayed messages on RabbitMQ itself (no plugin): the topology and the publish.

The layout is :mod:`postage._wire.delays`: one quorum queue per power of two of 10 ms,
each with its own TTL, chained by at-least-once dead-lettering and exchange-to-exchange
bindings, under names of the connection's own user. A delayed message is persistent,
confirmed when it is stored in its first level queue, and survives restarts of its
sender, its consumer and the broker, a broker killed outright included (a move between
two levels is confirmed by the next level before the first lets the message go; a crash
at that moment can deliver it twice, never lose it). A message whose target is gone when
its delay ends goes to the queue ``postage.delay.<user>.unrouted`` (the deliver
exchange's alternate exchange) instead of being dropped.
"""

from __future__ import annotations

__all__ = ["HEADER_DELAY", "DelayNames", "Delays"]

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from .._settings import user_of
from .._wire.delays import (
    LEVELS,
    UNIT,
    DelayNames,
    delay_key,
    level_pattern,
    target_pattern,
    ticks,
)
from .._wire.properties import PERSISTENT, Binding, ExchangeSpec, Properties, QueueSpec
from .inbound import HEADER_EXCHANGE, HEADER_ROUTING_KEY

if TYPE_CHECKING:
    from .._transport import Transport

HEADER_DELAY = "x-postage-delay-ms"
# quorum level queues that hand a message on only once the next level has it
_LEVEL_ARGUMENTS = {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish"}
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
        self._names: DelayNames | None = None

    @property
    def names(self) -> DelayNames:
        """The levels of the connection's user (known once the transport is connected)."""
        if self._names is None:
            self._names = DelayNames(user_of(self.transport.url or ""))
        return self._names

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
        await self.transport.publish(self.names.entry, key, body, props,
                                     mandatory=mandatory, timeout=timeout)

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
        names, declare = self.names, self.transport.declare_exchange
        await declare(ExchangeSpec.make(names.unrouted, "fanout", durable=True))
        await self.transport.declare_queue(QueueSpec.make(names.unrouted, durable=True))
        await self.transport.bind(Binding(names.unrouted, names.unrouted, ""))
        await declare(ExchangeSpec.make(names.deliver, "topic", durable=True,
                                        arguments={"alternate-exchange": names.unrouted}))
        for level in range(LEVELS):
            exchange, below = names.level_exchange(level), names.level_exchange(level - 1)
            await declare(ExchangeSpec.make(exchange, "topic", durable=True))
            ttl = round((2**level) * UNIT * 1000)
            await self.transport.declare_queue(QueueSpec.make(
                names.level_queue(level), durable=True, arguments={
                    **_LEVEL_ARGUMENTS, "x-message-ttl": ttl, "x-dead-letter-exchange": below}))
            await self.transport.bind(Binding(
                names.level_queue(level), exchange, level_pattern(level, "1")))
            await self.transport.bind(Binding(
                below, exchange, level_pattern(level, "0"), to_exchange=True))
        self._declared = True

    async def _bind_target(self, kind: str, name: str) -> None:
        if (kind, name) in self._targets:
            return
        await self.transport.bind(Binding(name, self.names.deliver,
                                          target_pattern(kind, name), to_exchange=kind == "x"))
        self._targets.add((kind, name))

