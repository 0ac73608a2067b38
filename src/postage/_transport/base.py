"""The transport interface: what the core needs from a connection to a broker.

Two siblings implement it: :mod:`postage._transport.amqp` (RabbitMQ through aiormq) and
:mod:`postage._transport.memory` (an in-memory broker for tests). Neither knows the other;
:func:`postage._transport.transport_for` picks one for a URL.

What the base keeps is what both share and is not I/O: the registry of everything declared
(exchanges, queues, bindings, consumers), restored after a reconnection; the readiness of
the connection and its deadline; the callbacks told of reconnections and of flow control
(``connection.blocked``); the background tasks a transport owns.
"""

from __future__ import annotations

__all__ = [
    "DIRECT_REPLY_TO",
    "HEADER_UNDECODABLE",
    "Consumer",
    "Delivery",
    "DeliveryCallback",
    "Transport",
]

import abc
import asyncio
import contextvars
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._exceptions import ConnectionClosed, ConnectionError, OperationRefused, PostageError
from .._settings import ConnectionSettings
from .._wire.properties import Binding, ExchangeSpec, Properties, QueueSpec

log = logging.getLogger("postage.transport")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# set by a transport in place of a headers table it could not decode (why, as its value):
# the inbound pipeline dead-letters such a message as undecodable
HEADER_UNDECODABLE = "x-postage-undecodable-headers"
_tag_counter = itertools.count(1)


class Delivery(abc.ABC):
    """A message received from a queue. Settle it once with ack(), nack() or reject()."""

    __slots__ = (
        "_settled",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "redelivered",
        "routing_key",
    )

    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool
    delivery_tag: int
    consumer_tag: str
    _settled: bool

    @property
    @abc.abstractmethod
    def properties(self) -> Properties:
        """The message's properties."""

    # Shortcuts to the properties the core reads for every message; ``_get`` may answer
    # them without building the whole Properties.

    def _get(self, name: str) -> Any:
        return getattr(self.properties, name)

    @property
    def content_type(self) -> str | None:
        value: str | None = self._get("content_type")
        return value

    @property
    def correlation_id(self) -> str | None:
        value: str | None = self._get("correlation_id")
        return value

    @property
    def reply_to(self) -> str | None:
        value: str | None = self._get("reply_to")
        return value

    @property
    def headers(self) -> dict[str, Any]:
        """The headers table (empty when there is none)."""
        value: dict[str, Any] | None = self._get("headers")
        return value or {}

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def channel_lost(self) -> bool:
        """True once the channel it came on is gone: it can no longer be settled, and the
        broker delivers the message again (to this consumer, once restored, or another)."""
        return False

    async def ack(self) -> bool:
        """Acknowledge; False if the channel died meanwhile (the broker redelivers)."""
        return await self._settle("ack", False)

    async def nack(self, requeue: bool = True) -> bool:
        """Negatively acknowledge, requeueing by default."""
        return await self._settle("nack", requeue)

    async def reject(self, requeue: bool = False) -> bool:
        """Reject without requeueing by default."""
        return await self._settle("reject", requeue)

    @abc.abstractmethod
    async def _settle(self, what: str, requeue: bool) -> bool:
        """Send ``what`` (ack, nack, reject) once; False when it could not be sent."""


DeliveryCallback = Callable[[Delivery], Awaitable[None]]

HANDLING: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "postage_handling", default=None)
"""The delivery whose handler runs in this context (set by the core's inbound pipeline,
carried into worker threads and the calls they make back on the loop)."""


class Consumer(abc.ABC):
    """A subscription to a queue, restored after reconnections until cancelled."""

    _transport: Transport  # set by each implementation, with its own transport's type

    def __init__(
        self,
        queue: str,
        callback: DeliveryCallback,
        *,
        prefetch_count: int,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self.queue = queue
        self.callback = callback
        self.prefetch_count = prefetch_count
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = dict(arguments or {})
        self.tag = f"postage.{next(_tag_counter)}.{queue}"[:255]
        self.active = True
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._restarting = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _begin(self, task: asyncio.Task[None]) -> None:
        self._in_flight.add(task)
        self._idle.clear()

    def _end(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not self._in_flight:
            self._idle.set()

    def _cancelled_by_own_handler(self) -> bool:
        """Is the caller one of this consumer's handlers (which ``cancel`` must not wait
        for: it waits for ``cancel``)? See :data:`HANDLING`."""
        delivery = HANDLING.get()
        return delivery is not None and delivery.consumer_tag == self.tag

    async def _wait_idle(self, timeout: float | None) -> None:
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("%d handler(s) of queue %r still running after %s s",
                            len(self._in_flight), self.queue, timeout)

    def _cancelled_by_broker(self) -> None:
        """The broker cancelled this consumer (e.g. its queue was deleted): restore it."""
        transport = self._transport
        if self.active and not transport.closed:
            log.warning("the broker cancelled the consumer of queue %r; restoring it", self.queue)
            transport._spawn(transport._restart_consumer(self, declare=True))

    def _deactivate(self) -> bool:
        """Mark the consumer cancelled and forget it; False if it was already."""
        if not self.active:
            return False
        self.active = False
        self._transport._consumers.pop(self.tag, None)
        return True

    @abc.abstractmethod
    async def _start(self, connection: Any) -> None:
        """Start (or restart) consuming on ``connection``."""

    @abc.abstractmethod
    async def cancel(self, timeout: float | None = 10.0) -> None:
        """Stop receiving; wait (up to ``timeout``) for deliveries being handled."""


BlockedCallback = Callable[[str | None], None]


class Transport(abc.ABC):
    """A recovering connection with a topology registry: the core's only way out."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._ready = asyncio.Event()
        self._closed = False
        self._failure: PostageError | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exchanges: dict[str, ExchangeSpec] = {}
        self._known_exchanges: set[str] = {""}
        self._queues: dict[str, QueueSpec] = {}
        self._bindings: dict[Binding, None] = {}
        self._consumers: dict[str, Consumer] = {}
        self._reply_callback: DeliveryCallback | None = None
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._blocked_callbacks: list[BlockedCallback] = []
        # why the broker blocked this connection (memory or disk alarm), None when not
        self.blocked_reason: str | None = None
        self.url: str | None = None
        self.reconnections = 0
        self.reconnected_at: float | None = None
        """``time.monotonic()`` of the latest reconnection (None: never reconnected)."""
        self.lost_at: float | None = None
        """``time.monotonic()`` of the latest loss of the connection (None: never lost)."""

    # -- shared state -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and not self._closed

    def queue_spec(self, name: str) -> QueueSpec | None:
        """How ``name`` was declared through this transport (None if it was not)."""
        return self._queues.get(name)

    def add_reconnect_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) each time the topology has been restored."""
        self._reconnect_callbacks.append(callback)

    def add_blocked_callback(self, callback: BlockedCallback) -> None:
        """Call ``callback(reason)`` when the broker blocks the connection (a memory or
        disk alarm) and ``callback(None)`` when it unblocks it."""
        self._blocked_callbacks.append(callback)

    def _set_blocked(self, reason: str | None) -> None:
        self.blocked_reason = reason
        for callback in list(self._blocked_callbacks):
            try:
                callback(reason)
            except Exception:
                log.exception("blocked callback failed")

    def _lost(self) -> None:
        """The connection is lost: calls wait until it is back."""
        self.lost_at = time.monotonic()
        self._ready.clear()

    def _reconnected(self) -> None:
        self.reconnections += 1
        self.reconnected_at = time.monotonic()
        self._ready.set()
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("reconnect callback failed")

    async def _cancel_consumers(self, timeout: float) -> float:
        """Cancel every consumer (letting their handlers finish) within ``timeout``; return
        the loop time by which the whole close is due."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for consumer in list(self._consumers.values()):
            await consumer.cancel(timeout=max(0.0, deadline - loop.time()))
        return deadline

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_queue(self, name: str) -> None:
        self._queues.pop(name, None)
        for binding in [b for b in self._bindings if b.queue == name and not b.to_exchange]:
            del self._bindings[binding]

    async def _wait_ready(self, deadline: float | None) -> None:
        if self._ready.is_set():
            if self._closed:
                raise self._failure or ConnectionClosed("the connection is closed")
            return
        loop = asyncio.get_running_loop()
        limit = self.settings.recovery_timeout
        timeout = limit if deadline is None else min(limit, deadline - loop.time())
        try:
            await asyncio.wait_for(self._ready.wait(), max(0.0, timeout))
        except TimeoutError:
            raise ConnectionError(
                f"the broker connection was not restored within {timeout:.1f} s"
            ) from None
        if self._closed:
            raise self._failure or ConnectionClosed("the connection is closed")

    # -- the operations -----------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; raise a Postage error if the broker cannot be reached."""

    @abc.abstractmethod
    async def close(self, timeout: float = 10.0) -> None:
        """Cancel consumers (letting their handlers finish), wait for confirms, disconnect."""

    @abc.abstractmethod
    async def declare_exchange(self, exchange: ExchangeSpec, *, timeout: float = 30.0) -> None:
        """Declare ``exchange`` (kept in the registry)."""

    @abc.abstractmethod
    async def check_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        """NotFound unless the exchange ``name`` exists."""

    @abc.abstractmethod
    async def declare_queue(self, queue: QueueSpec, *, timeout: float = 30.0) -> tuple[int, int]:
        """Declare ``queue`` (kept in the registry); return (messages, consumers)."""

    @abc.abstractmethod
    async def queue_state(self, name: str, *, timeout: float = 30.0) -> tuple[int, int]:
        """(messages, consumers) of an existing queue; NotFound otherwise."""

    @abc.abstractmethod
    async def delete_queue(self, name: str, *, timeout: float = 30.0) -> None:
        """Delete a queue (and forget it)."""

    @abc.abstractmethod
    async def delete_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        """Delete an exchange (and forget it)."""

    @abc.abstractmethod
    async def purge_queue(self, name: str, *, timeout: float = 30.0) -> None:
        """Drop the ready messages of a queue."""

    @abc.abstractmethod
    async def bind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        """Bind a queue to an exchange (kept in the registry)."""

    @abc.abstractmethod
    async def unbind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        """Remove a binding."""

    @abc.abstractmethod
    async def publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm (Unroutable, PublishNacked...)."""

    @abc.abstractmethod
    async def publish_transient(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
    ) -> None:
        """Publish without a confirm (replies to direct reply-to)."""

    @abc.abstractmethod
    async def consume(
        self, queue: str, callback: DeliveryCallback, *, prefetch_count: int = 0,
        no_ack: bool = False, exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None, timeout: float = 30.0,
    ) -> Consumer:
        """Consume ``queue``; each message is handled in a task of its own."""

    @abc.abstractmethod
    async def get(self, queue: str, *, timeout: float = 30.0) -> Delivery | None:
        """Take the oldest ready message of ``queue`` (basic.get), or None if there is
        none. The delivery must be settled; it goes back to the queue if the connection
        is lost first."""

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself when the connection opened."""
        return {}

    @abc.abstractmethod
    async def consume_replies(self, callback: DeliveryCallback) -> None:
        """Receive direct reply-to replies (``reply_to = amq.rabbitmq.reply-to``)."""

    # -- restoring a consumer ---------------------------------------------------------

    # what a failed restore attempt may raise and still be tried again (with backoff)
    RESTORE_ERRORS: tuple[type[Exception], ...] = (Exception,)

    @abc.abstractmethod
    async def _declare_again(self, queue: str) -> None:
        """Declare ``queue`` and its bindings again, as registered."""

    @abc.abstractmethod
    async def _start_again(self, consumer: Consumer) -> None:
        """Start ``consumer`` again (on a fresh channel)."""

    async def _restart_consumer(self, consumer: Consumer, *, declare: bool) -> None:
        """Restore one consumer (the broker cancelled it, or its channel closed), with
        backoff, until it works or is cancelled; ``declare``: its queue first."""
        if consumer._restarting:
            return
        consumer._restarting = True
        delay = self.settings.reconnect_delay
        try:
            while consumer.active and not self._closed:
                try:
                    await self._wait_ready(None)
                    if declare and consumer.queue in self._queues:
                        await self._declare_again(consumer.queue)
                    await self._start_again(consumer)
                    log.warning("consumer of queue %r restored", consumer.queue)
                    return
                except self.RESTORE_ERRORS as exc:
                    log.warning("cannot restore the consumer of %r yet (%s)", consumer.queue, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
        finally:
            consumer._restarting = False


def refused(text: str, code: int) -> OperationRefused:
    """The error for an operation the broker refused by closing the connection (``text``:
    the broker's words), with what to change for the refusals RabbitMQ is known to make."""
    hint = _refusal_hint(text)
    return OperationRefused(f"the broker refused the operation and closed the connection: "
                            f"{text}{f' ({hint})' if hint else ''}", code)


def _refusal_hint(text: str) -> str:
    if "transient_nonexcl_queues" in text:
        return ("this broker denies transient non-exclusive queues, as RabbitMQ 4.3 does by "
                "default: declare the queue durable (with x-expires to have it removed when "
                "unused) or exclusive, or permit them on the broker with "
                "deprecated_features.permit.transient_nonexcl_queues = true")
    if "global_qos" in text:
        return ("this broker denies a prefetch shared by a channel's consumers (global "
                "QoS), as RabbitMQ 4.3 does by default: use a per-consumer prefetch, or "
                "permit it with deprecated_features.permit.global_qos = true")
    feature = re.search(r"[Ff]eature `?(\w+)`? is deprecated", text)
    if feature:
        return (f"this broker denies the deprecated feature {feature.group(1)}; "
                f"deprecated_features.permit.{feature.group(1)} = true permits it")
    if "unknown exchange type" in text:
        return "an exchange type other than direct, fanout, topic and headers needs its plugin"
    return ""
