"""The transport: the only module that speaks to the AMQP client library (aiormq).

It owns one long-lived connection with a few reused channels:

* a *control* channel for declarations (reopened after the broker refuses something);
* a *publisher* channel in confirm mode; many publishes are in flight at once and each
  waits only for its own confirm (the broker acks in batches with ``multiple``). The same
  channel consumes direct reply-to (``amq.rabbitmq.reply-to``) for RPC replies;
* one channel per consumer, so that prefetch and failures stay per consumer.

Everything declared through it (exchanges, queues, bindings, consumers) is kept, with strong
references, in a registry. When the connection drops, a supervisor reconnects with backoff
(trying every broker URL in turn), declares the registry again, restarts the consumers and
lets waiting publishers go on; publishes whose confirm never came are sent again.
AMQP client errors are translated into Postage errors here and nowhere else.
"""

from __future__ import annotations

__all__ = ["AmqpTransport"]

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiormq import exceptions as amqp_errors
from pamqp import commands as spec

from ..._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionError,
    DeliveryTimeout,
    PostageError,
    VhostNotFound,
)
from ..._settings import ConnectionSettings, redact_url
from ..._wire.properties import Binding, ExchangeSpec, QueueSpec
from ..base import Consumer, Delivery, DeliveryCallback
from .connect import close_socket, open_connection
from .consumer import AmqpConsumer, AmqpDelivery
from .errors import is_link_failure, refusal_of, translate_error
from .flow import watch_flow
from .headers import install as install_headers_guard
from .publisher import AmqpPublisher

log = logging.getLogger("postage.transport")
T = TypeVar("T")

_FATAL_CONNECT = (AuthenticationError, VhostNotFound, ConfigurationError)


async def _bind_on(channel: Any, binding: Binding, verb: str = "bind") -> Any:
    """``queue_bind`` (or ``exchange_bind`` for an exchange binding; ``verb="unbind"``
    for the reverse) of ``binding`` on ``channel``."""
    method = getattr(channel, f"{'exchange' if binding.to_exchange else 'queue'}_{verb}")
    return await method(binding.queue, binding.exchange, routing_key=binding.routing_key,
                        arguments=dict(binding.arguments) or None)


def _fail_unconfirmed(channel: Any) -> None:
    """Fail the confirms still awaited on a dead publisher channel (they are retried)."""
    if channel is None:
        return
    for confirmation in list(channel.confirmations.values()):
        if isinstance(confirmation, asyncio.Future) and not confirmation.done():
            confirmation.set_exception(
                amqp_errors.ChannelInvalidStateError("connection lost before the confirm")
            )


class AmqpTransport(AmqpPublisher):
    """A recovering AMQP connection with reused channels and a topology registry."""

    RESTORE_STEP_TIMEOUT = 5.0  # seconds for one declaration while restoring the topology

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        self._control: Any = None
        self._getter: Any = None  # the channel of basic.get deliveries
        self._supervisor: asyncio.Task[None] | None = None
        self._control_lock = asyncio.Lock()
        self._getter_lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the first broker that answers; raise a Postage error if none does."""
        install_headers_guard()  # a header table nested too deep must not kill the link
        if self._connection is not None:
            return
        await self._connect_any()
        try:
            await asyncio.wait_for(self._restore(), self.settings.connect_timeout * 3)
        except BaseException:
            connection: Any = self._connection  # set by _connect_any()
            self._connection = None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise
        self._ready.set()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self, timeout: float = 10.0) -> None:
        """Cancel consumers (letting their handlers finish), wait for confirms, disconnect."""
        if self._closed:
            return
        deadline = await self._cancel_consumers(timeout)
        loop = asyncio.get_running_loop()
        publisher = self._publisher
        if publisher is not None and publisher.confirmations:
            pending = [f for f in publisher.confirmations.values() if isinstance(f, asyncio.Future)]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        self._closed = True
        self._ready.set()  # wake waiters: they see the closed flag
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        connection = self._connection
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), max(0.5, deadline - loop.time()))
        if connection is not None:
            close_socket(connection)

    async def _connect_any(self) -> None:
        errors: list[str] = []
        last: PostageError | None = None
        for url in self.settings.urls:
            try:
                connection = await asyncio.wait_for(
                    open_connection(self.settings, url), self.settings.connect_timeout
                )
            except _FATAL_CONNECT:
                raise
            except PostageError as exc:
                last = exc
                errors.append(f"{redact_url(url)}: {exc}")
                continue
            except TimeoutError:
                last = ConnectionError(f"{redact_url(url)}: no answer within "
                                       f"{self.settings.connect_timeout:g} s")
                errors.append(str(last))
                continue
            self._connection = connection
            self.url = url
            self._set_blocked(None)
            watch_flow(connection, self._on_flow)
            return
        if len(errors) == 1 and last is not None:
            raise last
        raise ConnectionError("no broker could be reached: " + "; ".join(errors))

    def _on_flow(self, reason: str | None) -> None:
        if reason is None:
            log.warning("the broker unblocked the connection")
        else:
            log.warning("the broker blocked the connection: %s (sends wait until it lifts "
                        "or their deadline passes)", reason)
        self._set_blocked(reason)

    async def _restore(self) -> None:
        """(Re)open channels and declare everything in the registry."""
        connection = self._connection
        self._control = await connection.channel(publisher_confirms=False)
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=False)
        # One object the broker refuses (e.g. a classic queue whose home node is down)
        # must not keep everything else from working: it is retried in the background.
        unavailable: set[str] = set()
        for exchange in list(self._exchanges.values()):
            await self._restore_step(self._declare_exchange_on, exchange)
        for queue in list(self._queues.values()):
            if not await self._restore_step(self._declare_queue_on, queue):
                unavailable.add(queue.name)
        for binding in list(self._bindings):
            if binding.to_exchange or binding.queue not in unavailable:
                await self._restore_step(_bind_on, binding)
        if self._reply_callback is not None:
            await self._consume_replies(self._reply_callback)
        for consumer in list(self._consumers.values()):
            if not consumer.active:
                continue
            if consumer.queue in unavailable:
                self._spawn(self._restart_consumer(consumer, declare=True))
            else:
                await consumer._start(connection)

    async def _restore_step(self, declare: Callable[[Any, Any], Awaitable[Any]], item: Any) -> bool:
        """Declare ``item`` again; False if the broker refuses it or does not answer within
        RESTORE_STEP_TIMEOUT (RabbitMQ 4 never answers a declaration of a durable classic
        queue whose node is down, where RabbitMQ 3 says NOT_FOUND at once)."""
        try:
            await asyncio.wait_for(declare(self._control, item), self.RESTORE_STEP_TIMEOUT)
        except amqp_errors.ChannelClosed as exc:
            log.warning("cannot restore %s after reconnecting: %s", item, translate_error(exc))
        except TimeoutError:
            log.warning("cannot restore %s after reconnecting: no answer within %g s (its "
                        "node may be down); skipped (a consumer of it starts again in the "
                        "background)", item, self.RESTORE_STEP_TIMEOUT)
        else:
            return True
        self._control = await self._connection.channel(publisher_confirms=False)
        return False

    async def _until_lost(self, connection: Any) -> None:
        """Wait until ``connection`` closes (or close() runs)."""
        # asyncio.wait: cancelling this task (close()) must not cancel the connection's
        # own closing future (aiormq 6.9 logs an error for each one cancelled)
        try:
            await asyncio.wait([connection.closing])
        except asyncio.CancelledError:
            if self.closed:  # close() ran while we waited
                return
            # cancelled without close(): the event loop is shutting down (a program that
            # never closed its connection); stop for good, or it could not exit
            self._closed = True
            self._failure = ConnectionClosed("the event loop stopped the connection")
            self._ready.set()
            close_socket(connection)
            raise

    async def _supervise(self) -> None:
        while not self._closed:
            connection = self._connection
            await self._until_lost(connection)
            if self.closed:  # close() ran while we waited
                return
            reason = None
            if connection.closing.done() and not connection.closing.cancelled():
                reason = connection.closing.exception()
            self._lost()
            close_socket(connection)
            lost_publisher = self._publisher
            _fail_unconfirmed(lost_publisher)
            self._waits.interrupt(connection)
            if not self.settings.reconnect:
                self._failure = ConnectionClosed(f"connection lost: {reason}")
                self._closed = True
                self._ready.set()
                return
            log.warning("connection to %s lost (%s); reconnecting", redact_url(self.url or ""),
                        reason)
            delay = self.settings.reconnect_delay
            while not self._closed:
                try:
                    await self._connect_any()
                    await asyncio.wait_for(self._restore(), self.settings.recovery_timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("reconnection failed (%s); next try in %.1f s", exc, delay)
                    if self._connection is not None and not self._connection.is_closed:
                        with contextlib.suppress(Exception):
                            await self._connection.close()
                    if self._connection is not None:
                        close_socket(self._connection)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
                    continue
                break
            # A publish that raced the loss may have registered its confirm on the dead
            # channel after the client library failed the others: fail it too, it is sent
            # again; so may a wait that entered the client as the connection died.
            _fail_unconfirmed(lost_publisher)
            self._waits.interrupt(connection)
            log.warning("reconnected to %s; topology and consumers restored",
                        redact_url(self.url or ""))
            self._reconnected()

    # -- declarations -----------------------------------------------------------------

    async def _control_call(self, op: Callable[[Any], Awaitable[T]], timeout: float | None) -> T:
        """``op(channel)`` on the control channel (declarations, deletions, bindings)."""
        return await self._channel_call("_control", self._control_lock, op, timeout)

    async def _channel_call(self, slot: str, lock: asyncio.Lock,
                            op: Callable[[Any], Awaitable[T]], timeout: float | None) -> T:
        """``op(channel)`` on the kept channel ``slot`` (opened when missing), under
        ``lock``, within ``timeout``; through a lost link, again once recovered. A channel
        the broker closes (NOT_FOUND, say) is forgotten, and only that one."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            await self._wait_ready(deadline)
            async with lock:
                channel = getattr(self, slot)
                try:
                    if channel is None or channel.is_closed:
                        channel = await self._connection.channel(publisher_confirms=False)
                        setattr(self, slot, channel)
                    remaining = None if deadline is None else max(0.01, deadline - loop.time())
                    return await asyncio.wait_for(op(channel), remaining)
                except TimeoutError:
                    raise DeliveryTimeout("the broker did not answer in time") from None
                except amqp_errors.ChannelClosed as exc:
                    if self._connection is not None and self._connection.is_closed:
                        pass  # the link failed: wait for recovery and try again
                    else:
                        setattr(self, slot, None)
                        raise translate_error(exc) from None
                except Exception as exc:
                    refusal = refusal_of(exc)  # (the connection closed for this operation)
                    if refusal is not None:
                        raise refusal from None
                    if not is_link_failure(exc):
                        raise translate_error(exc) from None
            if self._closed:
                raise self._failure or ConnectionClosed("the connection is closed")
            await asyncio.sleep(0.05)  # the supervisor notices the drop and reconnects

    @staticmethod
    async def _declare_exchange_on(channel: Any, ex: ExchangeSpec, passive: bool = False) -> None:
        await channel.exchange_declare(
            exchange=ex.name,
            exchange_type=ex.type,
            passive=passive,
            durable=ex.durable,
            auto_delete=ex.auto_delete,
            internal=ex.internal,
            arguments=dict(ex.arguments) or None,
        )

    async def _declare_queue_on(self, channel: Any, q: QueueSpec, passive: bool = False) -> Any:
        """Every declaration of a queue (first and after reconnecting). RabbitMQ 4
        deprecates transient non-exclusive queues (4.3 refuses them by default): on
        RabbitMQ 4 and later such a queue is declared durable, as RabbitMQ recommends (an
        auto-delete one still goes with its last consumer). Older brokers get it as asked,
        as Postage 1.2 and kiwiPy 0.9 declare it, so that components declaring the same
        queue agree on its flags."""
        durable = q.durable or (not q.exclusive and self.broker_major >= 4)
        return await channel.queue_declare(
            q.name,
            passive=passive,
            durable=durable,
            exclusive=q.exclusive,
            auto_delete=q.auto_delete,
            arguments=dict(q.arguments) or None,
        )

    async def declare_exchange(self, exchange: ExchangeSpec, *, timeout: float = 30.0) -> None:
        """Declare ``exchange`` once per connection; it is declared again after reconnecting."""
        if self._exchanges.get(exchange.name) == exchange or exchange.name == "":
            return
        await self._control_call(lambda ch: self._declare_exchange_on(ch, exchange), timeout)
        self._exchanges[exchange.name] = exchange
        self._known_exchanges.add(exchange.name)

    async def check_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        """Raise NotFound unless exchange ``name`` exists (the answer is cached)."""
        if name in self._known_exchanges:
            return
        probe = ExchangeSpec(name)
        await self._control_call(lambda ch: self._declare_exchange_on(ch, probe, True), timeout)
        self._known_exchanges.add(name)

    async def declare_queue(self, queue: QueueSpec, *, timeout: float = 30.0) -> tuple[int, int]:
        """Declare ``queue``; return (messages ready, consumers). Redeclared after reconnecting
        (durable on RabbitMQ 4 when asked for as transient and shared: see
        ``_declare_queue_on``)."""
        ok = await self._control_call(lambda ch: self._declare_queue_on(ch, queue), timeout)
        self._queues[queue.name] = queue
        return ok.message_count, ok.consumer_count

    async def queue_state(self, name: str, *, timeout: float = 30.0) -> tuple[int, int]:
        """(messages ready, consumers) of an existing queue; NotFound if there is none."""
        ok = await self._control_call(
            lambda ch: self._declare_queue_on(ch, QueueSpec(name), True), timeout
        )
        return ok.message_count, ok.consumer_count

    async def delete_queue(self, name: str, *, timeout: float = 30.0) -> None:
        self._forget_queue(name)
        await self._control_call(lambda ch: ch.queue_delete(name), timeout)

    async def delete_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        self._exchanges.pop(name, None)
        self._known_exchanges.discard(name)
        await self._control_call(lambda ch: ch.exchange_delete(name), timeout)

    async def purge_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self._control_call(lambda ch: ch.queue_purge(name), timeout)

    async def bind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        """Bind a queue to an exchange; the binding is restored after reconnecting."""
        if binding in self._bindings:
            return
        await self._control_call(lambda ch: _bind_on(ch, binding), timeout)
        self._bindings[binding] = None

    async def unbind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        self._bindings.pop(binding, None)
        await self._control_call(lambda ch: _bind_on(ch, binding, "unbind"), timeout)

    # -- consuming --------------------------------------------------------------------

    async def consume(
        self, queue: str, callback: DeliveryCallback, *, prefetch_count: int = 0,
        no_ack: bool = False, exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None, timeout: float = 30.0,
    ) -> Consumer:
        """Start consuming ``queue`` on a channel of its own; restored after reconnecting.

        ``callback`` is awaited for each message (in its own task); unless ``no_ack``,
        it must settle the delivery.
        """
        if prefetch_count < 0:
            raise ConfigurationError("prefetch_count must be 0 (no limit) or more")
        consumer = AmqpConsumer(
            self, queue, callback, prefetch_count=prefetch_count, no_ack=no_ack,
            exclusive=exclusive, arguments=arguments,
        )
        await self._wait_ready(asyncio.get_running_loop().time() + timeout)
        try:
            await asyncio.wait_for(consumer._start(self._connection), timeout)
        except TimeoutError:
            raise DeliveryTimeout("the broker did not start the consumer in time") from None
        except Exception as exc:
            if consumer.channel is not None and not consumer.channel.is_closed:
                with contextlib.suppress(Exception):
                    await consumer.channel.close()
            raise (refusal_of(exc) or translate_error(exc)) from None
        self._consumers[consumer.tag] = consumer
        return consumer

    async def get(self, queue: str, *, timeout: float = 30.0) -> Delivery | None:
        """basic.get on a channel kept for it (its deliveries are settled there), with its
        own lock: gets do not wait behind declarations, and a refused one (NOT_FOUND)
        closes only that channel. (Deliveries taken on it and not yet settled go back to
        their queues then, as with any closed channel; settling them later fails.)"""
        async def take(channel: Any) -> Delivery | None:
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetEmpty):
                return None
            return AmqpDelivery(message, channel, False, self._waits)

        return await self._channel_call("_getter", self._getter_lock, take, timeout)

    @property
    def broker_major(self) -> int:
        """The major version of the broker connected to (0 when it does not say)."""
        version = str(self.server_properties.get("version", ""))
        major = version.split(".", 1)[0]
        return int(major) if major.isdigit() else 0

    @property
    def server_properties(self) -> dict[str, Any]:
        connection = self._connection
        props = getattr(connection, "server_properties", None) if connection else None
        return dict(props or {})

    async def _declare_again(self, queue: str) -> None:
        await self._control_call(
            functools.partial(self._declare_queue_on, q=self._queues[queue]), 30)
        for binding in [b for b in self._bindings if b.queue == queue and not b.to_exchange]:
            await self._control_call(functools.partial(_bind_on, binding=binding), 30)

    async def _start_again(self, consumer: Consumer) -> None:
        assert isinstance(consumer, AmqpConsumer)
        old = consumer.channel
        if old is not None and not old.is_closed:
            with contextlib.suppress(Exception):
                await old.close()
        await consumer._start(self._connection)
