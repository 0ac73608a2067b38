"""The memory transport: the transport interface on a :class:`MemoryBroker`, for tests.

A sibling of the AMQP transport with the same behaviour where the core can tell: confirms
(a publish returns once routed), Unroutable, NotFound, consumers restored after
:meth:`MemoryBroker.drop_connections`, direct reply-to with an address per connection.
"""

from __future__ import annotations

__all__ = ["MemoryConsumer", "MemoryDelivery", "MemoryTransport"]

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..._exceptions import (
    ChannelError,
    ConfigurationError,
    ConnectionClosed,
    NotFound,
    PreconditionFailed,
)
from ..._settings import ConnectionSettings
from ..._wire.properties import Binding, ExchangeSpec, Properties, QueueSpec
from ..base import DIRECT_REPLY_TO, Consumer, Delivery, DeliveryCallback, Transport
from .broker import MemoryBroker
from .model import _copy_properties, _Message, _Queue
from .names import broker_name, named_broker

log = logging.getLogger("postage.memory")

# ---------------------------------------------------------------------------------------
# deliveries and consumers


class _Channel:
    """A consumer's channel: closing it returns its unsettled messages to their queues."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


class MemoryDelivery(Delivery):
    """A message received from the memory broker; the attributes of a real Delivery."""

    __slots__ = ("_channel", "_consumer", "_message", "_properties", "_queue")

    def __init__(self, message: _Message, queue: _Queue | None,
                 consumer: MemoryConsumer | None, delivery_tag: int, consumer_tag: str,
                 no_ack: bool) -> None:
        self.body = message.body
        self._properties = _copy_properties(message.properties)
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.redelivered = message.redelivered
        self.delivery_tag = delivery_tag
        self.consumer_tag = consumer_tag
        self._channel = consumer.channel if consumer is not None else None
        self._settled = no_ack
        self._message = message
        self._queue = queue
        self._consumer = consumer

    @property
    def properties(self) -> Properties:
        return self._properties

    @property
    def channel_lost(self) -> bool:
        return self._consumer is not None and (self._channel is None or self._channel.closed)

    async def _settle(self, what: str, requeue: bool) -> bool:
        if self._settled:
            return True
        self._settled = True
        consumer, channel = self._consumer, self._channel
        if consumer is None or channel is None or channel.closed:
            log.warning(
                "cannot %s delivery %s: its channel closed meanwhile; the broker will "
                "deliver it again (a duplicate)", what, self.delivery_tag,
            )
            return False
        consumer._transport._broker.settle(self, what, requeue)
        return True


async def _no_callback(_delivery: Delivery) -> None:  # the getter receives nothing
    return None


class MemoryConsumer(Consumer):
    """A consumer of a memory queue (the interface of the real Consumer)."""

    _transport: MemoryTransport

    def __init__(self, transport: MemoryTransport, queue: str, callback: DeliveryCallback,
                 *, prefetch_count: int, no_ack: bool, exclusive: bool,
                 arguments: Mapping[str, Any] | None) -> None:
        super().__init__(queue, callback, prefetch_count=prefetch_count,
                         no_ack=no_ack, exclusive=exclusive, arguments=arguments)
        self._transport = transport
        priority = self.arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) else 0
        """The consumer's ``x-priority``: consumers of higher priority are served first."""
        self._queue_obj: _Queue | None = None
        self._unacked: dict[int, MemoryDelivery] = {}
        self._tags = itertools.count(1)
        self.channel: _Channel | None = None

    def _has_room(self) -> bool:
        return self.active and (not self.prefetch_count
                                or len(self._unacked) < self.prefetch_count)

    def _hold(self, q: _Queue, message: _Message) -> MemoryDelivery:
        """A delivery of ``message`` on this consumer's channel (unacked until settled)."""
        delivery = MemoryDelivery(message, q, self, next(self._tags), self.tag, self.no_ack)
        if not self.no_ack:
            self._unacked[delivery.delivery_tag] = delivery
        return delivery

    def _deliver(self, q: _Queue, message: _Message) -> None:
        """Called by the broker (under its lock): schedule the callback for ``message``."""
        self._transport._schedule(functools.partial(self._run, self._hold(q, message)))

    def _run(self, delivery: MemoryDelivery) -> None:
        if delivery._channel is None or delivery._channel.closed:
            return  # requeued when the channel closed
        task = asyncio.get_running_loop().create_task(self._on_message(delivery))
        self._begin(task)
        task.add_done_callback(self._end)

    async def _on_message(self, message: Any) -> None:
        try:
            await self.callback(message)
        except Exception:
            log.exception("consumer callback for queue %r failed", self.queue)

    def _close_channel(self) -> None:
        channel = self.channel
        if channel is not None and not channel.closed:
            channel.closed = True
            self._transport._broker.release(self)

    async def _start(self, connection: Any) -> None:
        self._close_channel()
        self.channel = _Channel()
        self._transport._broker.add_consumer(self)

    async def cancel(self, timeout: float | None = 10.0) -> None:
        """Stop receiving; wait (up to ``timeout``) for deliveries being handled."""
        if not self._deactivate():
            return
        self._transport._broker.remove_consumer(self)
        if self._cancelled_by_own_handler():  # that handler waits for this call
            self._transport._spawn(self._close_when_idle(timeout))
            return
        await self._close_when_idle(timeout)

    async def _close_when_idle(self, timeout: float | None) -> None:
        await self._wait_idle(timeout)
        self._close_channel()


# ---------------------------------------------------------------------------------------
# the transport


class MemoryTransport(Transport):
    """A connection to a :class:`MemoryBroker`: the transport interface, in memory."""

    def __init__(self, broker: MemoryBroker | None = None,
                 settings: ConnectionSettings | None = None) -> None:
        broker = broker if broker is not None else named_broker("")
        super().__init__(settings or ConnectionSettings(urls=(broker.url,)))
        self._broker = broker
        self._connection_id = 0
        self._reply_address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the channel of basic.get deliveries (``get``), opened on first use
        self._getter: MemoryConsumer | None = None

    @classmethod
    def for_settings(cls, settings: ConnectionSettings) -> MemoryTransport:
        """A transport on the named broker of ``settings.urls[0]`` (``memory://NAME``)."""
        return cls(named_broker(broker_name(settings.urls[0])), settings)

    @property
    def broker(self) -> MemoryBroker:
        return self._broker

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._loop is not None:
            return
        if self._closed:
            raise ConnectionClosed("the connection is closed")
        self._loop = asyncio.get_running_loop()
        self._connection_id = self._broker._connect(self)
        self.url = self._broker.url
        self._ready.set()

    async def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        await self._cancel_consumers(timeout)
        self._closed = True
        self._ready.set()
        for task in list(self._tasks):
            task.cancel()
        self._broker._disconnect(self)

    def _schedule(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` soon on this transport's loop (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.call_soon(fn)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn)

    def _recover(self) -> None:
        if not self._closed:
            self._lost()
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        """Like the real transport after a lost connection: declare the registry again,
        restart the consumers, then tell the reconnect callbacks."""
        self._connection_id = self._broker._connect(self)
        for exchange in list(self._exchanges.values()):
            self._quietly(self._broker.declare_exchange, exchange)
        unavailable = {q.name for q in list(self._queues.values())
                       if not self._quietly(self._broker.declare_queue, q, self)}
        for binding in list(self._bindings):
            if binding.to_exchange or binding.queue not in unavailable:
                self._quietly(self._broker.bind, binding, self)
        if self._reply_callback is not None:
            self._reply_address = self._broker.register_replies(self)
        for consumer in list(self._consumers.values()):
            if consumer.active:
                try:
                    await consumer._start(None)
                except NotFound:
                    self._spawn(self._restart_consumer(consumer, declare=True))
        self._reconnected()

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
        except ChannelError as exc:
            log.warning("cannot restore %s after reconnecting: %s", args[0], exc)
            return False
        return True

    async def _ready_or_raise(self) -> None:
        if self._closed:
            raise self._failure or ConnectionClosed("the connection is closed")
        if self._loop is None:
            raise ConnectionClosed("the connection is not open")
        if not self._ready.is_set():
            await self._wait_ready(None)

    # -- declarations -------------------------------------------------------------------

    async def declare_exchange(self, exchange: ExchangeSpec, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        if exchange.name == "":
            return
        self._broker.declare_exchange(exchange)
        self._exchanges[exchange.name] = exchange
        self._known_exchanges.add(exchange.name)

    async def check_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._broker.check_exchange(name)

    async def declare_queue(self, queue: QueueSpec, *, timeout: float = 30.0) -> tuple[int, int]:
        await self._ready_or_raise()
        state = self._broker.declare_queue(queue, self)
        self._queues[queue.name] = queue
        return state

    async def queue_state(self, name: str, *, timeout: float = 30.0) -> tuple[int, int]:
        await self._ready_or_raise()
        return self._broker.queue_state(name, self)

    async def delete_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._queues.pop(name, None)
        for binding in [b for b in self._bindings if b.queue == name and not b.to_exchange]:
            del self._bindings[binding]
        self._broker.delete_queue(name, self)

    async def delete_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._exchanges.pop(name, None)
        self._known_exchanges.discard(name)
        self._broker.delete_exchange(name)

    async def purge_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._broker.purge_queue(name, self)

    async def bind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._broker.bind(binding, self)
        self._bindings[binding] = None

    async def unbind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        await self._ready_or_raise()
        self._bindings.pop(binding, None)
        self._broker.unbind(binding, self)

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Route the message at once; Unroutable, NotFound as the real broker would."""
        await self._ready_or_raise()
        props = properties if properties is not None else Properties()
        if props.reply_to == DIRECT_REPLY_TO:
            if self._reply_address is None:
                raise PreconditionFailed(
                    "PRECONDITION_FAILED - fast reply consumer does not exist", 406
                )
            props = replace(props, reply_to=self._reply_address)
        self._broker.publish(self, exchange, routing_key, body, props, mandatory)
        await asyncio.sleep(0)  # the confirm's round trip: let consumers run

    async def publish_transient(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties | None = None,
        *, timeout: float | None = None,
    ) -> None:
        """Like the real transport's (no confirm): routed at once, never mandatory."""
        await self.publish(exchange, routing_key, body, properties, mandatory=False,
                           timeout=timeout)

    # -- consuming ----------------------------------------------------------------------

    async def consume(
        self, queue: str, callback: DeliveryCallback, *, prefetch_count: int = 0,
        no_ack: bool = False, exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None, timeout: float = 30.0,
    ) -> Consumer:
        """Start consuming ``queue``; each message is handled in a task of its own."""
        if prefetch_count < 0:
            raise ConfigurationError("prefetch_count must be 0 (no limit) or more")
        await self._ready_or_raise()
        consumer = MemoryConsumer(
            self, queue, callback, prefetch_count=prefetch_count, no_ack=no_ack,
            exclusive=exclusive, arguments=arguments,
        )
        self._consumers[consumer.tag] = consumer
        try:
            await consumer._start(None)
        except BaseException:
            self._consumers.pop(consumer.tag, None)
            raise
        return consumer

    RESTORE_ERRORS = (ChannelError,)

    async def _declare_again(self, queue: str) -> None:
        self._broker.declare_queue(self._queues[queue], self)
        for binding in [b for b in self._bindings if b.queue == queue and not b.to_exchange]:
            self._broker.bind(binding, self)

    async def _start_again(self, consumer: Consumer) -> None:
        await consumer._start(None)

    async def get(self, queue: str, *, timeout: float = 30.0) -> Delivery | None:
        await self._ready_or_raise()
        getter = self._getter
        if getter is None:
            getter = self._getter = MemoryConsumer(
                self, "", _no_callback, prefetch_count=0, no_ack=False, exclusive=False,
                arguments=None)
            getter.channel = _Channel()
        try:
            return self._broker.take(queue, getter)
        except ChannelError:
            # as RabbitMQ: the refusal closes the channel of gets, whose unsettled
            # deliveries go back to their queues (settling them reports the closed channel)
            self._getter = None
            if getter.channel is not None:
                getter.channel.closed = True
            self._broker.release(getter)
            raise

    @property
    def server_properties(self) -> dict[str, Any]:
        return {"product": "Postage memory broker", "version": "", "platform": "Python",
                "capabilities": {"publisher_confirms": True}}

    async def consume_replies(self, callback: DeliveryCallback) -> None:
        """Receive direct reply-to replies (``reply_to = amq.rabbitmq.reply-to``)."""
        await self._ready_or_raise()
        self._reply_callback = callback
        if self._reply_address is None:
            self._reply_address = self._broker.register_replies(self)

    def _deliver_reply(self, message: _Message) -> None:
        callback = self._reply_callback
        if callback is None:
            return
        delivery = MemoryDelivery(message, None, None, 0, "", True)

        async def on_reply() -> None:
            try:
                await callback(delivery)
            except Exception:
                log.exception("reply callback failed")

        self._schedule(lambda: self._spawn(on_reply()))
