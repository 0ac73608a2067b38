"""The memory broker's state: exchanges, queues, messages, routing rules (no behaviour
beyond matching), and what tests may read of it (:class:`BrokerState`)."""

from __future__ import annotations

__all__ = ["BrokerState", "Routing", "add_death", "headers_match", "is_full", "topic_matches"]

import functools
import itertools
import struct
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..._exceptions import EncodingError, NotFound
from ..._wire.properties import Binding, ExchangeSpec, Properties, QueueSpec
from ..base import DIRECT_REPLY_TO
from .clock import Clock, SystemClock

if TYPE_CHECKING:
    from .transport import MemoryConsumer, MemoryTransport

SCHEME = "memory"
EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})
_REPLY_PREFIX = DIRECT_REPLY_TO + "."
_PREDECLARED = (
    ExchangeSpec("amq.direct", "direct", durable=True),
    ExchangeSpec("amq.fanout", "fanout", durable=True),
    ExchangeSpec("amq.topic", "topic", durable=True),
    ExchangeSpec("amq.headers", "headers", durable=True),
    ExchangeSpec("amq.match", "headers", durable=True),
)
# The queue arguments RabbitMQ compares when a queue is declared again.
_CHECKED_QUEUE_ARGS = (
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-expires", "x-max-length",
    "x-max-length-bytes", "x-max-priority", "x-message-ttl", "x-overflow", "x-queue-mode",
    "x-single-active-consumer", "x-delivery-limit",
)


# ---------------------------------------------------------------------------------------
# routing


def _words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when topic binding key ``pattern`` (``*`` one word, ``#`` zero or more) matches."""
    pat, key = _words(pattern), _words(routing_key)

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(key)
        if pat[i] == "#":
            return match(i + 1, j) or (j < len(key) and match(i, j + 1))
        return j < len(key) and (pat[i] in ("*", key[j])) and match(i + 1, j + 1)

    return match(0, 0)


def headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """The headers exchange's test: ``x-match`` all (default) or any, of the binding's
    arguments against the message's headers (``x-`` arguments ignored unless ``*-with-x``)."""
    mode = str(arguments.get("x-match", "all"))
    with_x = mode.endswith("-with-x")
    wanted = {k: v for k, v in arguments.items()
              if k != "x-match" and (with_x or not k.startswith("x-"))}
    if not wanted:
        return mode.startswith("all")

    def hit(name: str, value: Any) -> bool:
        if name not in headers:
            return False
        got = headers[name]
        # RabbitMQ compares typed values: numbers by value (1 matches 1.0), but a
        # boolean, a decimal or a string never equals a number
        return value is None or (_kind(got) == _kind(value) and got == value)

    if mode.startswith("any"):
        return any(hit(k, v) for k, v in wanted.items())
    return all(hit(k, v) for k, v in wanted.items())


def _kind(value: Any) -> type:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int | float):
        return float
    return type(value)


def add_death(headers: dict[str, Any], queue: str, reason: str, exchange: str,
              routing_keys: list[str], expiration: str | None) -> None:
    """Record a death in ``headers`` as RabbitMQ does: the latest (queue, reason) first in
    ``x-death``, its ``count`` raised when it died that way before; the first death in the
    ``x-first-death-*`` headers."""
    deaths = [d for d in headers.get("x-death", []) if isinstance(d, dict)]
    previous = next((d for d in deaths if (d.get("queue"), d.get("reason")) == (queue, reason)),
                    None)
    count = int(previous.get("count", 0)) + 1 if previous is not None else 1
    death: dict[str, Any] = {"count": count, "reason": reason, "queue": queue,
                             "time": datetime.now(UTC).replace(microsecond=0),
                             "exchange": exchange, "routing-keys": list(routing_keys)}
    if expiration is not None:
        death["original-expiration"] = expiration
    headers["x-death"] = [death, *(d for d in deaths if d is not previous)]
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", exchange)


def is_full(q: _Queue, messages: int = 0, size: int = 0) -> bool:
    """True when ``q``, with ``messages`` more of ``size`` bytes, would hold more than its
    ``x-max-length`` messages or ``x-max-length-bytes`` bytes of bodies."""
    args = q.arguments
    max_length, max_bytes = args.get("x-max-length"), args.get("x-max-length-bytes")
    if isinstance(max_length, int) and len(q.ready) + messages > max_length:
        return True
    return isinstance(max_bytes, int) and sum(len(m.body) for m in q.ready) + size > max_bytes


def _wire_copy(value: Any) -> Any:
    """What a header value looks like after a trip through the broker: the AMQP field
    table types only (floats go as single precision, as the AMQP client sends them)."""
    if isinstance(value, bool | int | str | Decimal | None):
        return value
    if isinstance(value, float):
        return struct.unpack("f", struct.pack("f", value))[0]
    if isinstance(value, dict):
        return {str(k): _wire_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire_copy(v) for v in value]
    if isinstance(value, bytearray):
        return bytearray(value)
    if isinstance(value, datetime):
        return value.replace(microsecond=0)
    # the real transport fails the same way (the AMQP client cannot encode the value)
    raise EncodingError(
        f"cannot encode the message's properties: header value of unsupported type "
        f"{type(value).__name__}: {value!r}"
    )


def _copy_properties(props: Properties) -> Properties:
    if props.headers:
        return replace(props, headers=_wire_copy(props.headers))
    return replace(props)


# ---------------------------------------------------------------------------------------
# the broker's state


@dataclass(slots=True)
class _Message:
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    seq: int
    redelivered: bool = False
    delivery_count: int = 0
    expires: float | None = None  # the clock's time when its TTL ends

    @property
    def routing_keys(self) -> list[str]:
        """Its routing key and those of its ``CC`` header (kept when dead-lettered)."""
        cc = (self.properties.headers or {}).get("CC")
        extra = [k for k in cc if isinstance(k, str)] if isinstance(cc, list) else []
        return [self.routing_key, *extra]


@dataclass(slots=True)
class _Exchange:
    spec: ExchangeSpec
    bindings: dict[Binding, None] = field(default_factory=dict)


@dataclass(slots=True)
class _Queue:
    spec: QueueSpec
    owner: MemoryTransport | None
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[MemoryConsumer] = field(default_factory=list)
    turn: int = 0  # round robin among consumers
    had_consumers: bool = False

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.spec.arguments)

    @property
    def quorum(self) -> bool:
        return ("x-queue-type", "quorum") in self.spec.arguments


class BrokerState:
    """What a memory broker holds, and the read-only views tests use."""

    def __init__(self, name: str = "", clock: Clock | None = None) -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.RLock()
        self._exchanges: dict[str, _Exchange] = {s.name: _Exchange(s) for s in _PREDECLARED}
        self._queues: dict[str, _Queue] = {}
        self._connections: dict[int, MemoryTransport] = {}
        self._replies: dict[str, MemoryTransport] = {}
        self._seq = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self.published = 0

    def __repr__(self) -> str:
        return f"MemoryBroker({self.name!r}, queues={len(self._queues)})"

    @property
    def url(self) -> str:
        """The ``memory://`` URL of this broker when it is a named one."""
        return f"{SCHEME}://{self.name}"

    # -- inspection (for tests) -------------------------------------------------------

    def queue_names(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    def exchange_names(self) -> list[str]:
        with self._lock:
            return sorted(n for n in self._exchanges if not n.startswith("amq."))

    def has_queue(self, name: str) -> bool:
        with self._lock:
            return name in self._queues

    def has_exchange(self, name: str) -> bool:
        with self._lock:
            return name == "" or name in self._exchanges

    def message_count(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those delivered and not yet settled)."""
        with self._lock:
            return len(self._require_queue(queue).ready)

    def delayed_count(self) -> int:
        """Messages waiting out a delay (a delayed publish, or a retry with back-off, once
        it was sent back): move ``clock`` on to deliver them."""
        with self._lock:
            return sum(len(q.ready) for name, q in self._queues.items()
                       if name.startswith("postage.delay.") and name.endswith(".queue"))

    def unacked_count(self, queue: str) -> int:
        with self._lock:
            q = self._require_queue(queue)
            return sum(sum(1 for d in c._unacked.values() if d._queue is q) for c in q.consumers)

    def consumer_count(self, queue: str) -> int:
        with self._lock:
            return len(self._require_queue(queue).consumers)

    def bindings(self, queue: str | None = None) -> list[Binding]:
        with self._lock:
            found = [b for x in self._exchanges.values() for b in x.bindings]
            return [b for b in found if queue is None or (b.queue == queue and not b.to_exchange)]

    def peek(self, queue: str) -> list[tuple[bytes, Properties]]:
        """Bodies and properties of the messages ready in ``queue``, oldest first (copies)."""
        with self._lock:
            return [(m.body, _copy_properties(m.properties))
                    for m in self._require_queue(queue).ready]

    def get(self, queue: str) -> tuple[bytes, Properties] | None:
        """Take the oldest ready message of ``queue`` (like basic.get with auto-ack)."""
        with self._lock:
            q = self._require_queue(queue)
            if not q.ready:
                return None
            m = q.ready.popleft()
            return m.body, _copy_properties(m.properties)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def _require_queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            raise NotFound(f"NOT_FOUND - no queue '{name}' in vhost '/'", 404)
        return q

    def _require_exchange(self, name: str) -> _Exchange:
        x = self._exchanges.get(name)
        if x is None:
            raise NotFound(f"NOT_FOUND - no exchange '{name}' in vhost '/'", 404)
        return x


def _matches(kind: str, binding: Binding, keys: list[str], headers: Mapping[str, Any]) -> bool:
    if kind == "fanout":
        return True
    if kind == "direct":
        return binding.routing_key in keys
    if kind == "topic":
        return any(topic_matches(binding.routing_key, key) for key in keys)
    return headers_match(dict(binding.arguments), headers)


class Routing(BrokerState):
    """Where a message goes: bindings of queues and of exchanges (each exchange visited
    once), alternate exchanges, the default exchange; every routing key counts (CC)."""

    def _route(self, x: _Exchange | None, keys: list[str],
               headers: Mapping[str, Any]) -> list[_Queue]:
        found: dict[str, _Queue] = {}
        self._route_into(x, keys, headers, found, set())
        return list(found.values())

    def _route_into(self, x: _Exchange | None, keys: list[str], headers: Mapping[str, Any],
                    found: dict[str, _Queue], seen: set[str]) -> None:
        if x is None:  # the default exchange: the keys name queues
            found.update((k, self._queues[k]) for k in keys if k in self._queues)
            return
        seen.add(x.spec.name)
        matched = False  # as in RabbitMQ: a binding to an exchange counts, whatever follows
        for b in list(x.bindings):
            if not _matches(x.spec.type, b, keys, headers):
                continue
            matched = True
            if not b.to_exchange:
                if b.queue in self._queues:
                    found.setdefault(b.queue, self._queues[b.queue])
            elif b.queue in self._exchanges and b.queue not in seen:
                self._route_into(self._exchanges[b.queue], keys, headers, found, seen)
        alternate = dict(x.spec.arguments).get("alternate-exchange")
        if not matched and alternate and str(alternate) not in seen:
            ax = self._exchanges.get(str(alternate))
            if ax is not None:
                self._route_into(ax, keys, headers, found, seen)
