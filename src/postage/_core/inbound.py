"""The inbound pipeline: the one path every received message takes, whatever API consumes it.

For each delivery, in order:

1. *redelivery count*: a message the broker delivers again (``redelivered``: its consumer
   died or lost its connection before settling it, e.g. a handler that kills its process)
   is sent back to the end of its queue with ``x-postage-redeliveries`` counted up, and
   dead-lettered once over ``RetryPolicy.max_redeliveries``: a message that crashes its
   consumer every time cannot block its queue forever;
2. *checks and decoding*: the size limit, the content type and (for Postage envelopes)
   the envelope itself; a failure dead-letters the message at once (``undecodable``);
3. *middleware and handler*: each middleware's ``handle`` hook around the API's handler;
4. *reply*: the handler's result, encoded by the API's :class:`Replies`, to ``reply_to``;
5. *outcome*: ack; or, when the handler raised, what ``HandlingOptions.errors`` says:
   ``"retry"`` (send it back, at most ``max_attempts`` deliveries, then ``<queue>.dlq``),
   ``"answer"`` (the error is the reply; RPC), ``"log"`` (broadcasts, presence).
   ``Reject`` dead-letters at once. The sender of a message that ends in a dead-letter
   queue is answered with the error (when it waits for a reply).

Headers carried by retried and dead-lettered messages: ``x-postage-attempts``,
``x-postage-redeliveries``, ``x-postage-error`` (the last error), and on dead letters
``x-postage-reason``, ``x-postage-queue`` and the original ``x-postage-exchange`` and
``x-postage-routing-key`` (kept across retries, which go through the default exchange).
"""

from __future__ import annotations

__all__ = [
    "HEADER_ATTEMPTS",
    "HEADER_ERROR",
    "HEADER_EXCHANGE",
    "HEADER_QUEUE",
    "HEADER_REASON",
    "HEADER_REDELIVERIES",
    "HEADER_ROUTING_KEY",
    "HandlingOptions",
    "Replies",
    "RetryPolicy",
    "Subscription",
    "dead_letter_headers",
]

import asyncio
import collections
import datetime
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import (
    ConfigurationError,
    DeadLettered,
    DecodingError,
    EncodingError,
    MessageTooLarge,
    PostageError,
    Reject,
)
from .._transport import HEADER_UNDECODABLE
from .._transport.base import HANDLING
from .._wire.encoding import Encoder
from .._wire.envelope import decode_envelope
from .._wire.properties import Properties, portable
from .middleware import HandleNext, IncomingMessage, chain_handle, overrides
from .workers import Withdrawn

if TYPE_CHECKING:
    from .._transport import Consumer, Delivery
    from .core import Core

log = logging.getLogger("postage.core")

HEADER_ATTEMPTS = "x-postage-attempts"
HEADER_REDELIVERIES = "x-postage-redeliveries"
# a re-sent message (retry, dead letter): its sender's user_id, which the broker would
# refuse from this connection, and the headers that could not be written back
HEADER_USER_ID = "x-postage-user-id"
HEADER_DROPPED = "x-postage-dropped-headers"
MAX_COUNT = 1_000_000  # a counter header beyond this (or negative, or not an integer) is forged
HEADER_REASON = "x-postage-reason"
HEADER_ERROR = "x-postage-error"
HEADER_QUEUE = "x-postage-queue"
HEADER_EXCHANGE = "x-postage-exchange"
HEADER_ROUTING_KEY = "x-postage-routing-key"
HEADER_FIRST_FAILED = "x-postage-first-failed"
HEADER_LAST_FAILED = "x-postage-last-failed"
HEADER_DEAD_LETTERED = "x-postage-dead-lettered"
MAX_ERROR = 1000

Handler = Callable[[IncomingMessage], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What happens to a message whose handler raises, or whose consumer dies on it.

    It is delivered at most ``max_attempts`` times in all when its handler raises (the
    count travels in the ``x-postage-attempts`` header, so it survives restarts and
    reaches other consumers), then moved to ``<queue>.dlq``. A message redelivered by the
    broker because its consumer died (or lost its connection) while handling it is counted
    in ``x-postage-redeliveries`` and moved to ``<queue>.dlq`` after ``max_redeliveries``.

    Back-off: attempt ``n + 1`` comes ``delay * multiplier ** (n - 1)`` seconds after
    attempt ``n`` failed (at most ``max_delay``), give or take ``jitter`` (a fraction of
    it, drawn at random), waiting on the broker (durable delay queues: the wait survives
    restarts of the consumer and of the broker, and holds nothing else up). ``delay = 0``
    (the default) retries at once. An exception of a class in ``no_retry`` (and
    ``postage.Reject``) goes to ``<queue>.dlq`` at once.
    """

    max_attempts: int = 3
    max_redeliveries: int = 5
    delay: float = 0.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.1
    no_retry: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.max_redeliveries < 0:
            raise ConfigurationError("max_redeliveries must be 0 or more")
        if self.delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ConfigurationError(
                "delay and max_delay must be 0 or more, and multiplier at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1 (a fraction of the delay)")
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in self.no_retry):
            raise ConfigurationError("no_retry must be a tuple of exception classes")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first)."""
        if self.delay <= 0:
            return 0.0
        base = min(self.max_delay, self.delay * self.multiplier ** max(0, attempt - 1))
        return max(0.0, base * (1 + self.jitter * random.uniform(-1.0, 1.0)))


class Replies(Protocol):
    """How an API encodes what is sent to ``reply_to``: a result, or an error, with
    ``content_type`` (None for raw bodies)."""

    content_type: str | None

    def result(self, message: IncomingMessage, value: Any) -> bytes | None:
        """The reply body for ``value`` (None: no reply); EncodingError if it cannot be."""

    def error(self, message: IncomingMessage, exc: BaseException) -> bytes | None:
        """The reply body telling the sender about ``exc`` (None: no reply)."""


@dataclass(frozen=True, slots=True)
class HandlingOptions:
    """How a subscription treats messages (the API's choices; defaults: raw bodies,
    retries then ``<queue>.dlq``).

    ``errors``: ``"retry"``, ``"answer"`` (reply with the error, ack) or ``"log"``.
    ``envelope``: decode a Postage envelope (``IncomingMessage.envelope``) first.
    ``dead_letter_queue``: where messages that cannot be handled go (default
    ``<queue>.dlq``); ``None``: they are logged and dropped (only for no-ack consumers
    of transient news, such as presence).
    ``encoder``, ``max_message_size``, ``accept_content_types``: decoding rules in place of
    the core's (the content types are added to the core's).
    ``replies``: the API's encoding of results and errors for ``reply_to``.
    ``middleware``: False for Postage's own control traffic (presence probes and status
    messages), which the connection's middleware neither sees nor counts.
    """

    policy: RetryPolicy | None = None
    errors: str = "retry"
    envelope: bool = False
    dead_letter_queue: str | None = ""
    encoder: Encoder | None = None
    max_message_size: int | None = None
    accept_content_types: frozenset[str] = frozenset()
    replies: Replies | None = None
    middleware: bool = True

    def __post_init__(self) -> None:
        if self.errors not in ("retry", "answer", "log"):
            raise ConfigurationError(f"errors must be retry, answer or log: {self.errors!r}")


def _int_header(headers: dict[str, Any], name: str) -> int:
    """A counter Postage wrote in a message's headers (0 when absent). A value Postage
    would not have written (negative, huge, not an integer) counts as exhausted: a
    sender cannot extend the retry or redelivery policy by forging it."""
    value = headers.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return MAX_COUNT
    return value


class Subscription:
    """A queue consumed through the inbound pipeline."""

    def __init__(self, core: Core, queue: str, handler: Handler,
                 options: HandlingOptions) -> None:
        self.core = core
        self.queue = queue
        self.options = options
        self.policy = options.policy or core.retry_policy
        self.consumer: Consumer | None = None
        dlq = options.dead_letter_queue
        self.dead_letter_queue = f"{queue}.dlq" if dlq == "" else dlq
        middleware = core.middleware if options.middleware else ()
        self._handle: HandleNext = chain_handle(middleware, handler)
        self._track = any(overrides(m, "reply") for m in middleware)
        self._notify_retry = [m for m in middleware if overrides(m, "retried")]
        self._notify_dead = [m for m in middleware if overrides(m, "dead_lettered")]
        self._notify_settled = [m for m in middleware if overrides(m, "settled")]
        self._max_size = (core.max_message_size if options.max_message_size is None
                          else options.max_message_size)
        self._accept = core.accept_content_types | options.accept_content_types
        self._encoder = options.encoder or core.encoder
        self._decode = options.envelope
        self._replies = options.replies
        # a message the broker redelivers is counted (only where retries make sense)
        self._counts = options.errors == "retry" and self.dead_letter_queue is not None
        # messages this subscription gave back to the broker itself because their retry
        # (or redelivery) copy could not be sent: their next delivery is not a crash, and
        # keeps its count (in memory: if this process dies, a crash is what it was)
        self._handed_back: collections.OrderedDict[tuple[Any, ...], tuple[str, int]] = (
            collections.OrderedDict())

    async def cancel(self, timeout: float = 10.0) -> None:
        """Stop consuming; wait for handlers in progress (up to ``timeout``)."""
        if self.consumer is not None:
            await self.consumer.cancel(timeout)
        self.core._subscriptions.discard(self)

    # -- the pipeline ---------------------------------------------------------------------

    async def on_delivery(self, delivery: Delivery) -> None:
        headers = delivery.headers
        if headers:
            exchange = headers.get(HEADER_EXCHANGE, delivery.exchange)
            routing_key = headers.get(HEADER_ROUTING_KEY, delivery.routing_key)
            attempt = _int_header(headers, HEADER_ATTEMPTS) + 1
        else:
            exchange, routing_key, attempt = delivery.exchange, delivery.routing_key, 1
        given_back = self._handed_back.pop(_identity(delivery), None) \
            if delivery.redelivered and self._handed_back else None
        if given_back is not None and given_back[0] == "attempt":
            attempt = given_back[1] + 1  # its retry copy could not be sent: a new try
        message = IncomingMessage(delivery, self.queue, str(exchange), str(routing_key),
                                  attempt)
        if given_back is not None:
            message.state[_GIVEN_BACK] = given_back
        if self._track:  # reply middleware finds the request here
            self.core._handling[id(delivery)] = message
        outcome = "requeued"
        try:
            outcome = await self._process(message, headers)
        finally:
            if self._track:
                self.core._handling.pop(id(delivery), None)
            for mw in self._notify_settled:
                try:
                    mw.settled(message, outcome)
                except Exception:
                    log.exception("middleware %r failed in settled()", mw)

    async def _process(self, message: IncomingMessage, headers: dict[str, Any]) -> str:
        """Handle ``message`` and settle it; what happened to it (see Middleware.settled)."""
        delivery = message.delivery
        given_back = message.state.get(_GIVEN_BACK)
        try:
            if delivery.channel_lost:  # it waited: the broker delivers it again
                return "requeued"
            if delivery.redelivered and self._counts and (
                    given_back is None or given_back[0] == "redelivered"):
                return await self._redelivered(message)
            self._check(message, headers)
            token = HANDLING.set(delivery)
            try:
                result = await self._handle(message)
            finally:
                HANDLING.reset(token)
            if self._replies is not None and delivery.reply_to:
                await self._reply(message, result)
        except Withdrawn:  # its channel was lost before a worker thread took it up
            return "requeued"
        except asyncio.CancelledError:
            await delivery.nack(requeue=True)
            raise
        except Exception as exc:
            return await self._failed(message, exc)
        if not delivery.settled:
            await delivery.ack()
        return "acked"

    def _check(self, message: IncomingMessage, headers: dict[str, Any]) -> None:
        if headers and HEADER_UNDECODABLE in headers:
            raise DecodingError(f"its properties cannot be read: {headers[HEADER_UNDECODABLE]}")
        body = message.delivery.body
        if len(body) > self._max_size:
            raise MessageTooLarge(
                f"body of {len(body)} bytes is over the limit of {self._max_size}")
        if self._decode:
            message.envelope = decode_envelope(
                body, message.delivery.content_type, self._encoder,
                max_size=self._max_size, accept=self._accept)

    async def _reply(self, message: IncomingMessage, result: Any) -> None:
        replies = self.options.replies
        assert replies is not None
        try:
            body = replies.result(message, result)
        except EncodingError as exc:
            raise Reject(f"the handler returned a value that cannot be sent: {exc}") from None
        if body is not None:
            await self.core.reply(message.delivery, body, self._reply_properties(message))

    def _reply_properties(self, message: IncomingMessage) -> Properties:
        replies = self._replies
        return Properties(content_type=replies.content_type if replies is not None else None,
                          correlation_id=message.delivery.correlation_id)

    async def _answer(self, message: IncomingMessage, exc: BaseException) -> None:
        """Tell the sender (if it waits for a reply) that its message failed for good."""
        replies = self.options.replies
        if replies is None or not message.delivery.reply_to:
            return
        try:
            body = replies.error(message, exc)
        except Exception:
            log.exception("cannot encode the error reply")
            return
        if body is not None:
            await self.core.reply(message.delivery, body, self._reply_properties(message))

    # -- outcomes -------------------------------------------------------------------------

    async def _failed(self, message: IncomingMessage, exc: Exception) -> str:
        error = f"{type(exc).__name__}: {exc}"
        mode = self.options.errors
        if isinstance(exc, DecodingError):
            reason, error = "undecodable", str(exc)
        elif isinstance(exc, Reject):
            reason, error = "rejected", str(exc)
        elif mode == "answer":
            log.info("handler for queue %r raised %s", self.queue, error,
                     extra=log_fields(message, self.core))
            await self._answer(message, exc)
            await message.delivery.ack()
            return "failed"
        elif mode == "log":
            log.error("handler for queue %r raised %s", self.queue, error, exc_info=exc,
                      extra=log_fields(message, self.core))
            await message.delivery.ack()
            return "failed"
        elif isinstance(exc, self.policy.no_retry):
            reason = "handler-failed"
            log.error("handler for queue %r failed (%s), which its policy does not retry; "
                      "dead-lettering", self.queue, error, exc_info=exc,
                      extra=log_fields(message, self.core))
        elif message.attempt < self.policy.max_attempts:
            delay = self.policy.delay_after(message.attempt)
            log.warning("handler for queue %r failed (attempt %d of %d): %s; retrying%s",
                        self.queue, message.attempt, self.policy.max_attempts, error,
                        f" in {delay:.2f} s" if delay else "",
                        extra=log_fields(message, self.core))
            return await self._retry(message, error, delay)
        else:
            reason = "handler-failed"
            log.error("handler for queue %r failed %d times (%s); dead-lettering",
                      self.queue, message.attempt, error, exc_info=exc,
                      extra=log_fields(message, self.core))
        await self._answer(message, exc)
        return await self.dead_letter(message, reason, error)

    async def _redelivered(self, message: IncomingMessage) -> str:
        count = _int_header(message.headers, HEADER_REDELIVERIES)
        given_back = message.state.get(_GIVEN_BACK)
        if given_back is not None:  # counted already, but its copy could not be sent
            count = max(count, given_back[1])
        count += 1
        if count > self.policy.max_redeliveries:
            error = (f"delivered {count} times without its handler finishing (its consumer "
                     "died or lost its connection while handling it)")
            log.error("message of queue %r %s; dead-lettering", self.queue, error,
                      extra=log_fields(message, self.core))
            await self._answer(message, DeadLettered(
                f"moved to {self.dead_letter_queue!r}: {error}"))
            return await self.dead_letter(message, "redelivered", error)
        return "retried" if await self._send_back(message, {HEADER_REDELIVERIES: count}) \
            else "requeued"

    async def _retry(self, message: IncomingMessage, error: str, delay: float) -> str:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        headers = message.delivery.headers or {}
        sent = await self._send_back(message, {
            HEADER_ATTEMPTS: message.attempt, HEADER_ERROR: error[:MAX_ERROR],
            HEADER_FIRST_FAILED: headers.get(HEADER_FIRST_FAILED, now),
            HEADER_LAST_FAILED: now}, delay)
        if not sent:
            return "requeued"
        for mw in self._notify_retry:
            try:
                await mw.retried(message, error)
            except Exception:
                log.exception("middleware %r failed in retried()", mw)
        return "retried"

    async def _send_back(self, message: IncomingMessage, counts: dict[str, Any],
                         delay: float = 0.0) -> bool:
        """Publish the message again at the end of its queue (``delay`` seconds later)
        with ``counts`` in its headers (and where it was first sent), then ack this
        delivery; False when it could not be sent (given back to the broker instead)."""
        delivery = message.delivery
        headers = resend_headers(delivery)
        headers.setdefault(HEADER_EXCHANGE, delivery.exchange)
        headers.setdefault(HEADER_ROUTING_KEY, delivery.routing_key)
        headers.update(counts)
        try:
            await self.core.outbound.send_back(self.queue, delivery.body,
                                               resend_properties(delivery, headers), delay)
        except EncodingError as exc:  # it cannot be sent again as it is: dead letters keep
            return await self.dead_letter(message, "undecodable", str(exc)) == "dead-lettered"
        except PostageError as perr:
            log.error("cannot send a message back to %r (%s); the broker redelivers it",
                      self.queue, perr, extra=log_fields(message, self.core))
            self._give_back(delivery, counts)
            await asyncio.sleep(0.5)
            await delivery.nack(requeue=True)
            return False
        await delivery.ack()
        return True

    def _give_back(self, delivery: Delivery, counts: dict[str, Any]) -> None:
        """Remember a message handed back to the broker by this subscription (its copy
        could not be sent), with the count its copy would have carried."""
        if HEADER_REDELIVERIES in counts:
            entry = ("redelivered", int(counts[HEADER_REDELIVERIES]))
        else:
            entry = ("attempt", int(counts.get(HEADER_ATTEMPTS, 0)))
        handed_back = self._handed_back
        handed_back[_identity(delivery)] = entry
        while len(handed_back) > MAX_HANDED_BACK:
            handed_back.popitem(last=False)

    async def dead_letter(self, message: IncomingMessage, reason: str, error: str) -> str:
        """Move the message to the dead-letter queue with why in its headers, then ack;
        the outcome (``"dead-lettered"``, or ``"requeued"`` if that failed)."""
        delivery = message.delivery
        dlq = self.dead_letter_queue
        if dlq is None:
            log.warning("message of queue %r dropped (%s): %s", self.queue, reason, error,
                        extra=log_fields(message, self.core))
            await delivery.ack()
            return "failed"
        moved = await self.core.move_to_dead_letters(
            delivery, self.queue, dlq, reason, error,
            exchange=message.exchange, routing_key=message.routing_key,
            attempts=message.attempt)
        if not moved:
            return "requeued"
        for mw in self._notify_dead:
            try:
                await mw.dead_lettered(message, reason, error)
            except Exception:
                log.exception("middleware %r failed in dead_lettered()", mw)
        return "dead-lettered"


_GIVEN_BACK = "postage.given_back"  # IncomingMessage.state: handed back, and its count
MAX_HANDED_BACK = 10_000  # messages remembered per subscription (the oldest forgotten)


def _identity(delivery: Delivery) -> tuple[Any, ...]:
    """What tells a message apart when the broker delivers it again (same message id,
    same body)."""
    return (delivery.properties.message_id, len(delivery.body), hash(delivery.body))


def log_fields(message: IncomingMessage, core: Core) -> dict[str, Any]:
    """The ``extra`` fields of a log record about ``message``: ``postage_component`` (the
    connection's name, else the program's), ``postage_queue``, ``postage_message_id``,
    ``postage_correlation_id``, ``postage_attempt``, and ``postage_trace_id`` when the
    message carries a W3C ``traceparent`` (as it does with tracing on)."""
    props = message.delivery.properties
    fields: dict[str, Any] = {
        "postage_component": core.component, "postage_queue": message.queue,
        "postage_message_id": props.message_id, "postage_correlation_id": props.correlation_id,
        "postage_attempt": message.attempt, "postage_trace_id": None,
    }
    traceparent = (props.headers or {}).get("traceparent")
    if isinstance(traceparent, str) and len(traceparent) >= 55 and traceparent[2] == "-":
        fields["postage_trace_id"] = traceparent[3:35]
    return fields


def resend_headers(delivery: Delivery) -> dict[str, Any]:
    """The headers of ``delivery`` for sending it again through the default exchange:
    without ``CC``/``BCC`` (their routing keys would reach queues of those names)."""
    headers = dict(delivery.properties.headers or {})
    headers.pop("CC", None)
    headers.pop("BCC", None)
    return headers


def resend_properties(delivery: Delivery, headers: dict[str, Any], **changes: Any
                      ) -> Properties:
    """``delivery``'s properties for sending it again from this connection, with
    ``headers``: its ``user_id`` (set by another user, the broker would refuse it from
    this one) moves to the ``x-postage-user-id`` header, and header values that cannot be
    written back (see :func:`portable`) are left out and named in
    ``x-postage-dropped-headers``."""
    props = delivery.properties
    if props.user_id is not None:
        headers[HEADER_USER_ID] = str(props.user_id)
    dropped = sorted(k for k, v in headers.items() if not portable(v))
    if dropped:
        for key in dropped:
            del headers[key]
        headers[HEADER_DROPPED] = ", ".join(dropped)[:MAX_ERROR]
    return replace(props, headers=headers, user_id=None, **changes)


def dead_letter_headers(
    delivery: Delivery, queue: str, reason: str, error: str, *, exchange: str,
    routing_key: str, attempts: int | None,
) -> dict[str, Any]:
    """The headers of a dead letter: the message's own plus why, where from and when."""
    headers = resend_headers(delivery)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    headers.setdefault(HEADER_FIRST_FAILED, now)
    headers.update({
        HEADER_LAST_FAILED: now,
        HEADER_DEAD_LETTERED: now,
        HEADER_REASON: reason,
        HEADER_ERROR: error[:MAX_ERROR],
        HEADER_QUEUE: queue,
        HEADER_EXCHANGE: exchange,
        HEADER_ROUTING_KEY: routing_key,
    })
    if attempts is not None:
        headers[HEADER_ATTEMPTS] = attempts
    return headers

