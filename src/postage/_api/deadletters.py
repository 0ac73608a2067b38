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
import collections
import datetime
import hashlib
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
from .._exceptions import ConfigurationError, ConnectionClosed, DeliveryTimeout, PostageError
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
    """What a replay did: ``replayed`` and ``kept`` count distinct messages; ``repeated``
    counts messages sent a second time because the ack of their first copy was lost with
    a connection (each may be at its target, or back in the queue, twice)."""

    replayed: int = 0
    kept: int = 0
    failed: list[str] = field(default_factory=list)
    repeated: int = 0


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


REPLAY_WINDOW = 32  # messages sent and not yet confirmed at once


async def replay(conn: Connection, queue: str, *, limit: int | None = None,
                 where: Where | None = None, timeout: float = 10.0,
                 to_original: bool = False, window: int = REPLAY_WINDOW) -> ReplayReport:
    """Send the messages of ``queue`` back to the queue they were consumed from (at most
    ``limit``; only those ``where`` accepts), each confirmed before its dead letter is
    acked, up to ``window`` at once. ``to_original``: to the exchange and routing key their
    headers name instead (their sender could have written those: only for messages you
    trust).

    Through a lost connection (on a reconnecting connection): a delivery of the dead
    channel is never sent (the broker delivers it again). A message whose copy was
    confirmed but whose ack was lost with the connection comes back, and is sent again
    (counted in ``repeated``, not twice in ``replayed``); so is one whose copy was sent as
    the connection died, its confirm lost with it. Either way at most about ``window``
    messages per lost connection can reach their target twice, and none is lost.
    ``timeout``: the longest wait for the next message (a reconnection included)."""
    if window < 1:
        raise ConfigurationError(f"window must be 1 or more, not {window!r}")
    core = _core_of(conn)
    ready, _ = await core.queue_state(queue)
    report = ReplayReport()
    if ready == 0 or limit == 0:
        return report
    run = _Replay(core, queue, report, where=where, to_original=to_original, window=window)
    reader = _Reader()
    consumer = await core.consume_raw(queue, reader, prefetch_count=min(ready, 100))
    try:
        # each message present at the start, once
        while run.taken < ready and (limit is None or run.started < limit):
            delivery = await reader.next(timeout)
            await run.take(delivery)
    finally:
        await run.finish()
        await consumer.cancel(1.0)
        await reader.give_back()
    return report


class _Replay:
    """One replay: deliveries taken, copies in flight, and the latest moved (by content:
    one whose ack is lost with its channel comes back, and is not counted twice)."""

    def __init__(self, core: Core, queue: str, report: ReplayReport, *,
                 where: Where | None, to_original: bool, window: int) -> None:
        self.core, self.queue, self.report = core, queue, report
        self.where, self.to_original = where, to_original
        self.taken = 0  # deliveries counted towards the messages present at the start
        self.started = 0  # replays started (the limit counts these)
        self._window = asyncio.Semaphore(window)
        self._tasks: set[asyncio.Task[None]] = set()
        # moved lately: an ack still in flight when its channel died may be lost
        self._recent: collections.deque[tuple[bytes, Delivery]] = collections.deque(
            maxlen=4 * window)

    async def take(self, delivery: Delivery) -> None:
        if delivery.channel_lost:
            return  # the broker delivers it again, on the restored consumer
        key = _content_key(delivery)
        if delivery.redelivered and self._tasks:
            await self.finish()  # (rare) a move in flight may be this message's first
        # moved already by this replay, its ack lost: sent again (never dropped unsent:
        # another message may have the same content), but not counted again
        again = delivery.redelivered and self._moved_on_lost_channel(key)
        if not again:
            self.taken += 1
        letter = DeadLetter.from_delivery(delivery, self.queue)
        if self.where is not None and not self.where(letter):
            exchange, routing_key, props, kept = "", self.queue, delivery.properties, True
        else:
            exchange, routing_key = letter.replay_target(to_original=self.to_original)
            props, kept = _replayed(letter), False
            self.started += not again
        await self._window.acquire()
        task = asyncio.create_task(self._move(delivery, key, exchange, routing_key, props,
                                              kept, again))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _moved_on_lost_channel(self, key: bytes) -> bool:
        for i, (moved, delivery) in enumerate(self._recent):
            if moved == key and delivery.channel_lost:
                del self._recent[i]
                return True
        return False

    async def _move(self, delivery: Delivery, key: bytes, exchange: str, routing_key: str,
                    props: Properties, kept: bool, again: bool) -> None:
        """Publish (confirmed), then ack: never the other way round."""
        try:
            try:
                if delivery.channel_lost:  # lost while it waited: it comes again
                    raise ConnectionClosed("its channel is lost")
                await self.core.resend(exchange, routing_key, delivery.body, props)
            except PostageError as exc:
                if delivery.channel_lost:  # sent as the connection died: it comes again
                    if again:  # still known as moved before, when it does
                        self._recent.append((key, delivery))
                    else:
                        self._count_again(kept)
                    return
                if kept:
                    raise
                # e.g. Unroutable: its target is gone; it stays, at the end of the queue
                await self.core.resend("", self.queue, delivery.body, delivery.properties)
                self.report.failed.append(f"{exchange!r}/{routing_key!r}: {exc}")
                self.started -= not again  # not replayed: the limit does not count it
                kept = True
            await delivery.ack()
            self._recent.append((key, delivery))
            self._count(kept, again)
        finally:
            self._window.release()

    def _count(self, kept: bool, again: bool) -> None:
        if again:
            self.report.repeated += 1
        elif kept:
            self.report.kept += 1
        else:
            self.report.replayed += 1

    def _count_again(self, kept: bool) -> None:
        self.taken -= 1
        if not kept:
            self.started -= 1

    async def finish(self) -> None:
        """Wait for the copies in flight (an error of one is raised once all are done)."""
        tasks = list(self._tasks)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _content_key(delivery: Delivery) -> bytes:
    digest = hashlib.blake2b(delivery.body, digest_size=16)
    digest.update(repr(delivery.properties).encode())
    return digest.digest()


def _replayed(letter: DeadLetter) -> Properties:
    headers = {k: v for k, v in letter.headers.items() if k not in _DEATH_HEADERS}
    previous = letter.headers.get(HEADER_REPLAYS)
    headers[HEADER_REPLAYS] = (previous if isinstance(previous, int) else 0) + 1
    return replace(letter.properties, headers=headers)


async def purge(conn: Connection, queue: str) -> int:
    """Drop every ready message of ``queue``; how many there were."""
    core = _core_of(conn)
    ready, _ = await core.queue_state(queue)
    await core.purge_queue(queue)
    return ready
