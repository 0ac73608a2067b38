"""Dead-letter queues as a tool: look at what is in a ``<queue>.dlq``, send it back, purge.

Every message Postage could not handle ends in ``<queue>.dlq`` with why in its headers
(``x-postage-reason``, ``-error``, ``-attempts``, ``-queue``, ``-exchange``,
``-routing-key``, ``-first-failed``, ``-last-failed``, ``-dead-lettered``); messages the
broker dead-lettered itself carry ``x-death``. This module reads both.

* :func:`peek` shows the first messages without taking them (they are put back in place).
* :func:`replay` sends messages back where they were first sent, each confirmed by the
  broker **before** its dead letter is acked: a replay killed at any point loses nothing,
  and at most the message in flight is sent twice. Messages a ``where`` filter leaves out
  are moved to the end of the dead-letter queue the same way (confirm, then ack).
* :func:`purge` drops them all.
"""

from __future__ import annotations

__all__ = ["Connection", "DeadLetter", "ReplayReport", "Where", "peek", "purge", "replay",
           "summary"]

import asyncio
import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .._core.core import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_EXCHANGE,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_REDELIVERIES,
    HEADER_ROUTING_KEY,
    Core,
)
from .._core.inbound import (
    HEADER_DEAD_LETTERED,
    HEADER_FIRST_FAILED,
    HEADER_LAST_FAILED,
)
from .._exceptions import ConfigurationError, DeliveryTimeout, PostageError
from .._transport import Delivery
from .._wire.properties import Properties


class HasCore(Protocol):
    """An API object on a connection: ``AsyncClient``, ``postage.aio`` communicator."""

    @property
    def core(self) -> Core: ...


Connection = Core | HasCore


def _core_of(conn: Connection) -> Core:
    return conn if isinstance(conn, Core) else conn.core


HEADER_REPLAYS = "x-postage-replays"
# what a replay takes off a message: why it died, and what the broker added on the way
_DEATH_HEADERS = (HEADER_REASON, HEADER_ERROR, HEADER_QUEUE, HEADER_EXCHANGE,
                  HEADER_ROUTING_KEY, HEADER_ATTEMPTS, HEADER_REDELIVERIES,
                  HEADER_FIRST_FAILED, HEADER_LAST_FAILED, HEADER_DEAD_LETTERED, "x-death",
                  "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                  "CC", "BCC", "x-delivery-count")
_PREVIEW = 200


def _time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return None


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter queue, read from its headers."""

    body: bytes
    properties: Properties
    reason: str
    error: str
    attempts: int | None
    queue: str
    exchange: str
    routing_key: str
    first_failed: datetime.datetime | None
    last_failed: datetime.datetime | None
    dead_lettered: datetime.datetime | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    dead_letter_queue: str = ""

    @classmethod
    def from_delivery(cls, delivery: Delivery, dead_letter_queue: str) -> DeadLetter:
        headers = dict(delivery.headers or {})
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(
            deaths[0], dict) else {}
        keys = death.get("routing-keys")
        broker_key = keys[0] if isinstance(keys, list) and keys else None
        attempts = headers.get(HEADER_ATTEMPTS, death.get("count"))
        source = dead_letter_queue.removesuffix(".dlq")
        return cls(
            body=delivery.body,
            properties=delivery.properties,
            reason=str(headers.get(HEADER_REASON, death.get("reason", "unknown"))),
            error=str(headers.get(HEADER_ERROR, "")),
            attempts=attempts if isinstance(attempts, int) else None,
            queue=str(headers.get(HEADER_QUEUE, death.get("queue", source))),
            exchange=str(headers.get(HEADER_EXCHANGE, death.get("exchange", ""))),
            routing_key=str(headers.get(HEADER_ROUTING_KEY, broker_key or source)),
            first_failed=_time(headers.get(HEADER_FIRST_FAILED)),
            last_failed=_time(headers.get(HEADER_LAST_FAILED)),
            dead_lettered=_time(headers.get(HEADER_DEAD_LETTERED, death.get("time"))),
            headers=headers,
            dead_letter_queue=dead_letter_queue,
        )

    def preview(self, size: int = _PREVIEW) -> str:
        """The start of the body as text (bytes that are not UTF-8 shown escaped)."""
        text = self.body[:size].decode("utf-8", "backslashreplace")
        return text + ("..." if len(self.body) > size else "")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (times as ISO 8601, the body as a preview)."""
        def iso(t: datetime.datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "reason": self.reason, "error": self.error, "attempts": self.attempts,
            "queue": self.queue, "exchange": self.exchange, "routing_key": self.routing_key,
            "first_failed": iso(self.first_failed), "last_failed": iso(self.last_failed),
            "dead_lettered": iso(self.dead_lettered), "source": self.source,
            "sender_written": ["exchange", "routing_key"],
            "message_id": self.properties.message_id,
            "content_type": self.properties.content_type,
            "size": len(self.body), "body": self.preview(),
            "headers": {k: _jsonable(v) for k, v in self.headers.items()},
        }

    def replay_target(self, *, to_original: bool = False) -> tuple[str, str]:
        """Where a replay sends the message: back to the queue it was consumed from
        (through the default exchange), or with ``to_original`` to the exchange and
        routing key its headers name, which its sender could have written."""
        if to_original:
            return self.exchange, self.routing_key
        return "", self.source

    @property
    def source(self) -> str:
        """The queue the message was consumed from: the one the dead-letter queue is
        named after (``<queue>.dlq``), else the one the broker recorded (``x-death``),
        else the one Postage's pipeline recorded."""
        if self.dead_letter_queue.endswith(".dlq"):
            return self.dead_letter_queue.removesuffix(".dlq")
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            queue = deaths[0].get("queue")
            if isinstance(queue, str) and queue:
                return queue
        return self.queue


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


_CONDITION = re.compile(r"^(?P<field>[\w.-]+)\s*(?P<op>=|!=|~)\s*(?P<value>.*)$")
_FIELDS = ("reason", "error", "queue", "exchange", "routing_key", "attempts", "body")


@dataclass(frozen=True)
class Where:
    """A filter of dead letters: conditions ``FIELD=VALUE``, ``FIELD!=VALUE`` or
    ``FIELD~TEXT`` (contains), all of which must hold. FIELD is one of reason, error,
    queue, exchange, routing_key, attempts, body, or ``header.NAME``. No code is run."""

    conditions: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, expressions: list[str] | tuple[str, ...]) -> Where:
        conditions = []
        for expression in expressions:
            match = _CONDITION.match(expression.strip())
            name = match.group("field") if match else ""
            if match is None or (name not in _FIELDS and not name.startswith("header.")):
                raise ConfigurationError(
                    f"cannot read the condition {expression!r}: write FIELD=VALUE, "
                    f"FIELD!=VALUE or FIELD~TEXT with FIELD one of {', '.join(_FIELDS)} "
                    "or header.NAME")
            conditions.append((name, match.group("op"), match.group("value")))
        return cls(tuple(conditions))

    def __call__(self, letter: DeadLetter) -> bool:
        for name, op, wanted in self.conditions:
            if name.startswith("header."):
                raw = letter.headers.get(name[len("header."):])
                value = "" if raw is None else str(raw)
            elif name == "body":
                value = letter.body.decode("utf-8", "replace")
            else:
                got = getattr(letter, name)
                value = "" if got is None else str(got)
            ok = (value == wanted if op == "=" else value != wanted if op == "!="
                  else wanted in value)
            if not ok:
                return False
        return True


@dataclass
class ReplayReport:
    replayed: int = 0
    kept: int = 0
    failed: list[str] = field(default_factory=list)


class _Reader:
    """Deliveries of a dead-letter queue, taken one by one (at most ``count``)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()

    async def __call__(self, delivery: Delivery) -> None:
        await self.queue.put(delivery)

    async def next(self, timeout: float) -> Delivery:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise DeliveryTimeout(f"no message came within {timeout:g} s") from None

    async def give_back(self) -> None:
        """Requeue what was fetched and not taken."""
        while not self.queue.empty():
            await self.queue.get_nowait().nack(requeue=True)


async def summary(conn: Connection, queue: str) -> tuple[int, datetime.datetime | None]:
    """(messages ready, when the oldest was dead-lettered) of ``queue``."""
    core = _core_of(conn)
    ready, _consumers = await core.queue_state(queue)
    if not ready:
        return 0, None
    first = await peek(core, queue, 1)
    return ready, first[0].dead_lettered if first else None


async def peek(conn: Connection, queue: str, count: int = 10,
               timeout: float = 5.0) -> list[DeadLetter]:
    """The first ``count`` messages of ``queue``, left in place (put back in order)."""
    core = _core_of(conn)
    ready, _ = await core.queue_state(queue)
    wanted = min(count, ready)
    if wanted <= 0:
        return []
    reader = _Reader()
    consumer = await core.consume_raw(queue, reader, prefetch_count=wanted)
    taken: list[Delivery] = []
    try:
        while len(taken) < wanted:
            taken.append(await reader.next(timeout))
    finally:
        await consumer.cancel(1.0)
        for delivery in taken:  # back at their places, in order
            await delivery.nack(requeue=True)
        await reader.give_back()
    return [DeadLetter.from_delivery(d, queue) for d in taken]


async def replay(conn: Connection, queue: str, *, limit: int | None = None,
                 where: Where | None = None, timeout: float = 10.0,
                 to_original: bool = False) -> ReplayReport:
    """Send the messages of ``queue`` back to the queue they were consumed from (at most
    ``limit``; only those ``where`` accepts), each confirmed before its dead letter is
    acked. ``to_original``: to the exchange and routing key their headers name instead
    (their sender could have written those: only for messages you trust)."""
    core = _core_of(conn)
    ready, _ = await core.queue_state(queue)
    report = ReplayReport()
    if ready == 0 or limit == 0:
        return report
    reader = _Reader()
    consumer = await core.consume_raw(queue, reader, prefetch_count=min(ready, 100))
    try:
        for _ in range(ready):  # each message present at the start, once
            delivery = await reader.next(timeout)
            letter = DeadLetter.from_delivery(delivery, queue)
            if where is not None and not where(letter):
                await _move(core, delivery, "", queue, delivery.properties)
                report.kept += 1
                continue
            exchange, routing_key = letter.replay_target(to_original=to_original)
            try:
                await _move(core, delivery, exchange, routing_key, _replayed(letter))
            except PostageError as exc:  # e.g. Unroutable: its target is gone; kept
                await _move(core, delivery, "", queue, delivery.properties)
                report.failed.append(f"{exchange!r}/{routing_key!r}: {exc}")
                continue
            report.replayed += 1
            if limit is not None and report.replayed >= limit:
                break
    finally:
        await consumer.cancel(1.0)
        await reader.give_back()
    return report


def _replayed(letter: DeadLetter) -> Properties:
    headers = {k: v for k, v in letter.headers.items() if k not in _DEATH_HEADERS}
    previous = letter.headers.get(HEADER_REPLAYS)
    headers[HEADER_REPLAYS] = (previous if isinstance(previous, int) else 0) + 1
    return replace(letter.properties, headers=headers)


async def _move(core: Core, delivery: Delivery, exchange: str, routing_key: str,
                properties: Properties) -> None:
    """Publish (confirmed), then ack: never the other way round."""
    await core.resend(exchange, routing_key, delivery.body, properties)
    await delivery.ack()


async def purge(conn: Connection, queue: str) -> int:
    """Drop every ready message of ``queue``; how many there were."""
    core = _core_of(conn)
    ready, _ = await core.queue_state(queue)
    await core.purge_queue(queue)
    return ready
