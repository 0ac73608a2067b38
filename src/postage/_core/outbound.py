"""The outbound pipeline: the one path every message sent takes, whatever API sends it.

Publish: size limit, then each middleware's ``publish`` hook, then the transport's
confirmed, mandatory publish (with its deadline). Replies: each middleware's ``reply`` hook,
then an unconfirmed publish to ``reply_to`` through the default exchange. Dead letters:
persistent, confirmed, to ``<queue>.dlq`` with why in the headers. With no middleware
installed, nothing is allocated per message.
"""

from __future__ import annotations

__all__ = ["Outbound"]

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, EncodingError, PostageError
from .._wire.properties import PERSISTENT, Properties, QueueSpec, check_name
from .delays import Delays
from .inbound import HEADER_DROPPED, dead_letter_headers, resend_properties
from .middleware import (
    IncomingMessage,
    Middleware,
    OutgoingMessage,
    PublishNext,
    chain_publish,
    chain_reply,
    overrides,
)

if TYPE_CHECKING:
    from .._transport import Delivery, Transport

log = logging.getLogger("postage.core")


DIRECT_REPLY_TO_RULE = r"amq\.rabbitmq\.reply-to(\..*)?"


def reply_to_rule(allowed: str | None) -> re.Pattern[str] | None:
    """The ``allowed_reply_to`` option: None (any queue, as every AMQP RPC server),
    ``"direct"`` (RabbitMQ's direct reply-to only), or a regular expression the whole
    ``reply_to`` must match."""
    if allowed is None:
        return None
    pattern = DIRECT_REPLY_TO_RULE if allowed == "direct" else allowed
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigurationError(f"allowed_reply_to {allowed!r} is not a pattern: {exc}") \
            from None


class Outbound:
    """Publishing for one core: messages, replies and dead letters."""

    def __init__(self, transport: Transport, middleware: Sequence[Middleware],
                 max_message_size: int, *,
                 allowed_reply_to: re.Pattern[str] | None = None) -> None:
        self.transport = transport
        self.allowed_reply_to = allowed_reply_to
        self.middleware = tuple(middleware)
        self.max_message_size = max_message_size
        self._chain: PublishNext | None = (
            chain_publish(self.middleware, self._send)
            if any(overrides(m, "publish") for m in self.middleware) else None)
        self._reply_hooks = any(overrides(m, "reply") for m in self.middleware)
        self._dlqs: set[str] = set()
        self.delays = Delays(transport)

    def check_size(self, body: bytes) -> None:
        if len(body) > self.max_message_size:
            raise EncodingError(
                f"message of {len(body)} bytes is over the limit of {self.max_message_size}")

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties | None,
        *, mandatory: bool, timeout: float | None, kind: str = "publish",
        delay: float | None = None, reply: asyncio.Future[Any] | None = None,
    ) -> None:
        """Publish, confirmed; with ``delay`` (seconds), the message reaches ``exchange``
        that much later (see :mod:`.delays`)."""
        self.check_size(body)
        check_name("exchange name", exchange)
        check_name("routing key", routing_key)
        if self._chain is None:
            await self._deliver(exchange, routing_key, body, properties, mandatory, timeout,
                                delay)
            return
        props = replace(properties) if properties is not None else Properties()
        if props.headers is not None:
            props.headers = dict(props.headers)
        await self._chain(OutgoingMessage(exchange, routing_key, body, props, kind, mandatory,
                                          timeout, delay, reply))

    async def _send(self, message: OutgoingMessage) -> None:
        self.check_size(message.body)
        await self._deliver(message.exchange, message.routing_key, message.body,
                            message.properties, message.mandatory, message.timeout,
                            message.delay)

    async def _deliver(self, exchange: str, routing_key: str, body: bytes,
                       properties: Properties | None, mandatory: bool,
                       timeout: float | None, delay: float | None) -> None:
        """The confirmed publish itself: through the delay queues when ``delay`` asks."""
        if delay is not None and Delays.wanted(delay):
            await self.delays.publish(delay, exchange, routing_key, body, properties,
                                      mandatory=mandatory, timeout=timeout)
            return
        await self.transport.publish(exchange, routing_key, body, properties,
                                     mandatory=mandatory, timeout=timeout)

    async def reply(self, reply_to: str, body: bytes, props: Properties,
                    request: IncomingMessage | None) -> bool:
        """Send a reply (no confirm); False (logged) when it cannot be sent, or when
        ``reply_to`` is not one the connection allows (``allowed_reply_to``)."""
        rule = self.allowed_reply_to
        if rule is not None and rule.fullmatch(reply_to) is None:
            log.warning("not replying to %r: reply_to is not one this connection answers "
                        "(allowed_reply_to=%r)", reply_to[:100], rule.pattern)
            return False
        if len(body) > self.max_message_size:
            log.warning("cannot send a reply to %r: %d bytes is over the limit", reply_to,
                        len(body))
            return False
        try:
            # No confirm awaited (a reply to direct reply-to is transient and not kept by
            # the broker anyway): the frame is queued before the request's ack, so a link
            # that drops loses both and the request is delivered again.
            if not self._reply_hooks:
                await self.transport.publish_transient("", reply_to, body, props)
            else:
                headers = dict(props.headers) if props.headers is not None else None
                message = OutgoingMessage("", reply_to, body, replace(props, headers=headers),
                                          "reply", False)
                await chain_reply(self.middleware, request, self._send_reply)(message)
        except PostageError as exc:
            log.warning("cannot send a reply to %r: %s", reply_to, exc)
            return False
        return True

    async def _send_reply(self, message: OutgoingMessage) -> None:
        await self.transport.publish_transient(
            message.exchange, message.routing_key, message.body, message.properties)

    async def send_back(self, queue: str, body: bytes, props: Properties,
                        delay: float | None = None) -> None:
        """Publish a received message again to the end of ``queue`` (a retry), confirmed,
        through the default exchange, ``delay`` seconds later; not through the middleware
        (it is not a new message: middleware hears of it through ``retried``)."""
        await self._deliver("", queue, body, props, True, None, delay)

    async def ensure_dlq(self, dlq: str) -> None:
        """Declare ``dlq`` (durable; a quorum queue when its source queue is one)."""
        if dlq in self._dlqs:
            return
        # A quorum queue's dead letters go to a quorum queue too, so that they survive
        # the loss of a node just as the messages did.
        source = self.transport.queue_spec(dlq.removesuffix(".dlq"))
        quorum = source is not None and ("x-queue-type", "quorum") in source.arguments
        arguments = {"x-queue-type": "quorum"} if quorum else None
        await self.transport.declare_queue(QueueSpec.make(dlq, durable=True, arguments=arguments))
        self._dlqs.add(dlq)

    async def dead_letter(
        self, delivery: Delivery, queue: str, dlq: str, reason: str, error: str, *,
        exchange: str, routing_key: str, attempts: int | None,
    ) -> bool:
        """Move ``delivery`` to ``dlq`` with why in its headers, then ack it. When the
        dead-letter queue cannot be written, the message goes back to its queue (nack)
        and False is returned."""
        try:
            await self.ensure_dlq(dlq)
            headers = dead_letter_headers(delivery, queue, reason, error, exchange=exchange,
                                          routing_key=routing_key, attempts=attempts)
            # kept until an operator looks: persistent, and never expiring (an RPC
            # request's expiration was its caller's deadline)
            props = resend_properties(delivery, headers, delivery_mode=PERSISTENT,
                                      expiration=None)
            try:
                await self.transport.publish("", dlq, delivery.body, props, mandatory=True)
            except EncodingError as exc:  # still not writable: keep only why and where
                kept = {k: v for k, v in headers.items() if k.startswith("x-postage-")
                        and k != HEADER_DROPPED}
                kept[HEADER_DROPPED] = f"all of the message's own headers ({exc})"[:500]
                await self.transport.publish("", dlq, delivery.body,
                                             replace(props, headers=kept), mandatory=True)
        except PostageError as exc:
            log.error("cannot dead-letter a message of %r (%s); requeueing it", queue, exc)
            await asyncio.sleep(0.5)
            await delivery.nack(requeue=True)
            return False
        log.warning("message from queue %r moved to %r: %s %s", queue, dlq, reason, error)
        await delivery.ack()
        return True
