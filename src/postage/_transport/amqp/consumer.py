"""Deliveries and consumers of the AMQP transport, and properties to and from frames."""

from __future__ import annotations

__all__ = ["AmqpConsumer", "AmqpDelivery", "from_amqp", "to_amqp"]

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from pamqp import commands as spec

from ..._wire.properties import Properties
from ..base import Consumer, Delivery, DeliveryCallback

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .transport import AmqpTransport
    from .waits import ClientWaits

log = logging.getLogger("postage.transport")


def to_amqp(props: Properties | None, message_id: str | None = None) -> spec.Basic.Properties:
    """AMQP properties for ``props``; ``message_id`` fills a missing message id (aiormq
    would otherwise draw a UUID4 per message: it matches returns to publishes by it)."""
    if props is None:
        return spec.Basic.Properties(message_id=message_id)
    return spec.Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=props.headers,
        delivery_mode=props.delivery_mode,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=props.expiration,
        message_id=props.message_id or message_id,
        timestamp=props.timestamp,
        message_type=props.type,
        user_id=props.user_id,
        app_id=props.app_id,
    )


def from_amqp(p: spec.Basic.Properties) -> Properties:
    return Properties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=p.headers,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=p.expiration,
        message_id=p.message_id,
        timestamp=p.timestamp,
        type=p.message_type,
        user_id=p.user_id,
        app_id=p.app_id,
    )


class AmqpDelivery(Delivery):
    """A message received through aiormq (properties decoded only when asked for)."""

    __slots__ = ("_channel", "_properties", "_raw_properties", "_waits")

    def __init__(self, message: aiormq.abc.DeliveredMessage, channel: Any, no_ack: bool,
                 waits: ClientWaits) -> None:
        frame = message.delivery
        self.body = message.body
        self._raw_properties: spec.Basic.Properties = message.header.properties
        self._properties: Properties | None = None
        self.exchange = getattr(frame, "exchange", "") or ""
        self.routing_key = getattr(frame, "routing_key", "") or ""
        self.redelivered = bool(getattr(frame, "redelivered", False))
        self.delivery_tag = getattr(frame, "delivery_tag", 0) or 0
        self.consumer_tag = getattr(frame, "consumer_tag", "") or ""
        self._channel = channel
        self._settled = no_ack
        self._waits = waits

    @property
    def properties(self) -> Properties:
        if self._properties is None:
            self._properties = from_amqp(self._raw_properties)
        return self._properties

    def _get(self, name: str) -> Any:
        return getattr(self._raw_properties, name)

    @property
    def channel_lost(self) -> bool:
        return bool(self._channel.is_closed)

    async def _settle(self, what: str, requeue: bool) -> bool:
        if self._settled:
            return True
        self._settled = True
        channel = self._channel
        if channel.is_closed:
            log.warning(
                "cannot %s delivery %s: its channel closed meanwhile; the broker will "
                "deliver it again (a duplicate)", what, self.delivery_tag,
            )
            return False
        task = asyncio.current_task()
        assert task is not None
        # wait=False: the frame joins the connection's (bounded) write queue, behind
        # anything sent before it (a reply, say); no ping-pong with the writer per
        # message. A link that drops before it is written loses it and the broker
        # delivers the message again, as when the ack itself is lost on the wire; one
        # that drops while the frame waits for room there interrupts the wait.
        self._waits.enter(task, channel)
        try:
            if what == "ack":
                await channel.basic_ack(self.delivery_tag, wait=False)
            elif what == "nack":
                await channel.basic_nack(self.delivery_tag, requeue=requeue, wait=False)
            else:
                await channel.basic_reject(self.delivery_tag, requeue=requeue, wait=False)
        except asyncio.CancelledError:
            if not self._waits.interrupted(task):
                raise
            log.warning("cannot %s delivery %s: the connection was lost meanwhile; the "
                        "broker will deliver it again (a duplicate)", what, self.delivery_tag)
            return False
        except Exception as exc:
            log.warning(
                "cannot %s delivery %s (%s); the broker will deliver it again",
                what, self.delivery_tag, exc,
            )
            return False
        finally:
            self._waits.leave(task)
        return True


class AmqpConsumer(Consumer):
    """A consumer on a channel of its own (prefetch and failures stay per consumer)."""

    _transport: AmqpTransport

    def __init__(
        self,
        transport: AmqpTransport,
        queue: str,
        callback: DeliveryCallback,
        *,
        prefetch_count: int,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        super().__init__(queue, callback, prefetch_count=prefetch_count, no_ack=no_ack,
                         exclusive=exclusive, arguments=arguments)
        self._transport = transport
        self.channel: Any = None

    async def _start(self, connection: Any) -> None:
        channel = await connection.channel(publisher_confirms=False)
        if self.prefetch_count:
            await channel.basic_qos(prefetch_count=self.prefetch_count)
        cancel_callbacks = getattr(channel, "on_consumer_cancel_callbacks", None)
        if cancel_callbacks is not None:
            cancel_callbacks.add(self._on_broker_cancel)
        self.channel = channel
        await channel.basic_consume(
            self.queue,
            self._on_message,
            no_ack=self.no_ack,
            exclusive=self.exclusive,
            arguments=self.arguments or None,
            consumer_tag=self.tag,
        )
        channel.closing.add_done_callback(
            lambda future: self._on_channel_closed(channel, future)
        )
        if cancel_callbacks is None:
            # older aiormq (6.9, as aio-pika 9.5 installs) drops the broker's basic.cancel:
            # notice it by the consumer tag leaving the channel's consumers
            self._transport._spawn(self._watch_broker_cancel(channel))

    async def _watch_broker_cancel(self, channel: Any, every: float = 0.5) -> None:
        while self.active and channel is self.channel and not channel.is_closed:
            if self.tag not in channel.consumers:
                self._on_broker_cancel(None)
                return
            await asyncio.sleep(every)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._begin(task)
        try:
            await self.callback(AmqpDelivery(message, message.channel, self.no_ack,
                                             self._transport._waits))
        except Exception:
            log.exception("consumer callback for queue %r failed", self.queue)
        finally:
            self._end(task)

    def _on_broker_cancel(self, _frame: Any) -> None:
        self._cancelled_by_broker()

    def _on_channel_closed(self, channel: Any, future: asyncio.Future[Any]) -> None:
        transport = self._transport
        if not self.active or transport.closed or future.cancelled():
            return
        if channel is not self.channel:
            return  # an old channel of a previous connection: already replaced
        if transport._connection is None or transport._connection.is_closed:
            return  # the supervisor restores everything after a reconnection
        exc = future.exception()
        log.warning("the channel of the consumer of %r closed (%s); reopening", self.queue, exc)
        transport._spawn(transport._restart_consumer(self, declare=False))

    async def cancel(self, timeout: float | None = 10.0) -> None:
        """Stop receiving; wait (up to ``timeout``) for deliveries being handled."""
        if not self._deactivate():
            return
        transport = self._transport
        spec = transport.queue_spec(self.queue)
        if spec is not None and spec.auto_delete and not any(
            c.queue == self.queue for c in transport._consumers.values()
        ):
            # The broker deletes an auto-delete queue with its last consumer: do not
            # declare it again after a reconnection.
            transport._forget_queue(self.queue)
        channel = self.channel
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(self.tag, timeout=5)
        if self._cancelled_by_own_handler():
            # that handler waits for this call: its reply and ack still need the channel,
            # which closes once the handlers are done
            transport._spawn(self._close_when_idle(channel, timeout))
            return
        await self._close_when_idle(channel, timeout)

    async def _close_when_idle(self, channel: Any, timeout: float | None) -> None:
        await self._wait_idle(timeout)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)
