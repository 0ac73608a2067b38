"""The core every API is built on: one connection, one inbound and one outbound pipeline.

It sits on the transport interface and knows nothing of the three public APIs. What it
adds:

* ``publish``/``publish_envelope``: the outbound pipeline (:mod:`.outbound`): size limit,
  middleware, confirmed and mandatory publishing with a deadline;
* ``call``/``request``/``gather``: RPC over direct reply-to (:mod:`.rpc`);
* ``consume``: the inbound pipeline (:mod:`.inbound`): checks, decoding, middleware,
  handler, reply, then ack, retry or ``<queue>.dlq``; ``subscribe`` is the same for a
  handler of raw deliveries;
* ``run_sync``: blocking user code runs in worker threads (:mod:`.workers`), never on the
  event loop.
"""

from __future__ import annotations

__all__ = ["Core", "HandlingOptions", "RetryPolicy", "Subscription", "open_core"]

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from .._exceptions import (
    ChannelError,
    ConfigurationError,
    ConnectionError,
    DeliveryTimeout,
    NotFound,
    PostageError,
    at_call_site,
)
from .._settings import ConnectionSettings
from .._transport import Consumer, Delivery, Transport, transport_for
from .._wire.encoding import Encoder, check_encoder, default_encoder
from .._wire.envelope import DEFAULT_MAX_SIZE, decode_envelope
from .._wire.properties import (
    PERSISTENT,
    Binding,
    ExchangeSpec,
    Properties,
    QueueSpec,
    check_name,
)
from .inbound import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_EXCHANGE,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_REDELIVERIES,
    HEADER_ROUTING_KEY,
    HandlingOptions,
    RetryPolicy,
    Subscription,
)
from .middleware import IncomingMessage, Middleware, check_middleware, with_instrumentation
from .outbound import Outbound, reply_to_rule
from .rpc import RpcClient
from .workers import WorkerPool

T = TypeVar("T")

__all__ += ["HEADER_ATTEMPTS", "HEADER_ERROR", "HEADER_EXCHANGE", "HEADER_QUEUE",
            "HEADER_REASON", "HEADER_REDELIVERIES", "HEADER_ROUTING_KEY"]

DeliveryHandler = Callable[[Delivery], Awaitable[None]]
MessageHandler = Callable[[IncomingMessage], Awaitable[Any]]


class Core:
    """One broker connection shared by the API objects of a program.

    ``middleware``: :class:`~postage.Middleware` objects around every message sent and
    handled on this connection (the first one outermost). ``max_workers``: threads for
    blocking handlers, started on demand (default 512). ``error_details``: error replies
    carry the remote traceback and the server's fingerprint (off by default: they
    disclose file paths, pid, host and user to any caller). ``retry_policy``: the
    :class:`RetryPolicy` of subscriptions that name none. ``allowed_reply_to``: the
    queues replies may go to: None (any, as every AMQP RPC server), ``"direct"``
    (RabbitMQ's direct reply-to only) or a regular expression ``reply_to`` must match
    whole; a reply to another queue is not sent (logged).
    """

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        encoder: Encoder = default_encoder,
        max_message_size: int = DEFAULT_MAX_SIZE,
        max_pending_calls: int = 100_000,
        rpc_timeout: float = 30.0,
        accept_content_types: Collection[str] = frozenset(),
        max_workers: int | None = None,
        transport: Transport | None = None,
        middleware: Sequence[Middleware] = (),
        error_details: bool = False,
        retry_policy: RetryPolicy | None = None,
        allowed_reply_to: str | None = None,
    ) -> None:
        self.settings = settings or ConnectionSettings.from_url(None)
        # ``transport``: another transport (e.g. a MemoryTransport); memory:// URLs get one
        self.transport = transport if transport is not None else transport_for(self.settings)
        self.encoder = check_encoder(encoder)  # must declare its content type
        self.max_message_size = max_message_size
        self.max_pending_calls = max_pending_calls
        self.rpc_timeout = rpc_timeout
        self.accept_content_types = frozenset(accept_content_types)
        self.middleware = check_middleware(with_instrumentation(middleware))
        for mw in self.middleware:
            mw.attached(self)
        # error replies carry the traceback and the server's fingerprint (opt-in: they
        # show file paths, pid, host and user to any caller)
        self.error_details = error_details
        self.component = self.settings.name or (
            os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python")
        """What log records and metrics call this program: the connection's ``name``,
        else the program's file name."""
        self.retry_policy = retry_policy or RetryPolicy()
        """The policy of subscriptions that name none (a connection-wide default)."""
        self.outbound = Outbound(self.transport, self.middleware, max_message_size,
                                 allowed_reply_to=reply_to_rule(allowed_reply_to))
        self.rpc = RpcClient(self)
        if max_workers is not None and max_workers < 1:
            raise ConfigurationError("max_workers must be at least 1")
        self.workers = WorkerPool(max_workers or 512)
        self._subscriptions: set[Subscription] = set()
        # the messages being handled, by id(delivery): replies find their request here
        self._handling: dict[int, IncomingMessage] = {}
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self.transport.open()
        except PostageError as exc:
            raise at_call_site(exc) from exc.__cause__

        self.transport.add_reconnect_callback(self._on_reconnect)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop consuming, let handlers finish, wait for confirms, disconnect."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # all at once: every consumer stops first, then handlers finish in parallel, so
        # ``timeout`` bounds the whole close, not each subscription
        await asyncio.gather(*(sub.cancel(timeout) for sub in list(self._subscriptions)))
        self.rpc.fail_all(ConnectionError("the connection was closed"))
        await self.transport.close(max(0.5, deadline - loop.time()))
        self.workers.shutdown()

    async def abort(self) -> None:
        """Close now, without waiting for running handlers or confirms: the broker puts
        the messages they had not settled back in their queues. (A :meth:`close` that was
        interrupted may be followed by this.)"""
        self._closed = True
        self.rpc.fail_all(ConnectionError("the connection was closed"))
        await self.transport.close(0.0)
        self.workers.shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def handling(self) -> int:
        """How many received messages are being handled right now (readable from any
        thread)."""
        return sum(s.consumer.in_flight for s in list(self._subscriptions)
                   if s.consumer is not None)

    @property
    def url(self) -> str:
        """The URL of the broker connected to (passwords included: redact before showing)."""
        return self.transport.url or self.settings.urls[0]

    def _on_reconnect(self) -> None:
        # Replies to requests sent on the old channel cannot arrive any more.
        self.rpc.fail_all(ConnectionError(
            "the connection was lost while waiting for the reply; "
            "the request may or may not have been handled"), only_sent=True)

    # -- topology ---------------------------------------------------------------------

    async def declare_exchange(
        self, name: str, type: str = "direct", *, durable: bool = False,
        auto_delete: bool = False, passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        if passive:
            check_name("exchange name", name)
            await self.transport.check_exchange(name)
        else:
            await self.transport.declare_exchange(ExchangeSpec.make(
                name, type, durable=durable, auto_delete=auto_delete, arguments=arguments))

    async def declare_queue(
        self, name: str, *, durable: bool = False, exclusive: bool = False,
        auto_delete: bool = False, arguments: Mapping[str, Any] | None = None,
        quorum: bool = False, delivery_limit: int | None = None,
    ) -> tuple[int, int]:
        """Declare a queue; ``quorum=True`` makes it a replicated quorum queue (durable,
        with the broker's ``x-delivery-limit`` as a last line against poison messages)."""
        args = dict(arguments or {})
        if quorum:
            if exclusive or auto_delete:
                raise ConfigurationError("a quorum queue cannot be exclusive or auto-delete")
            durable = True
            args["x-queue-type"] = "quorum"
            if delivery_limit is not None:
                # at the limit the broker dead-letters the message to <name>.dlq rather
                # than dropping it (Postage's own redelivery count normally acts first)
                args["x-delivery-limit"] = delivery_limit
                args.setdefault("x-dead-letter-exchange", "")
                args.setdefault("x-dead-letter-routing-key", f"{name}.dlq")
        state = await self.transport.declare_queue(QueueSpec.make(
            name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            arguments=args or None))
        if quorum and delivery_limit is not None:
            await self.outbound.ensure_dlq(f"{name}.dlq")
        return state

    async def delete_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self.transport.delete_queue(name, timeout=timeout)

    async def purge_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self.transport.purge_queue(name, timeout=timeout)

    async def consume_raw(self, queue: str, callback: DeliveryHandler, *,
                          prefetch_count: int = 0, no_ack: bool = False) -> Consumer:
        """Consume ``queue`` outside the pipeline: ``callback`` settles each delivery
        itself (tools that move messages, such as a dead-letter replay), or with
        ``no_ack`` the broker forgets each one once sent (responses on a reply queue)."""
        return await self.transport.consume(queue, callback, prefetch_count=prefetch_count,
                                            no_ack=no_ack)

    async def get(self, queue: str, *, timeout: float = 30.0) -> Delivery | None:
        """Take the oldest ready message of ``queue`` (None if it has none), outside the
        pipeline: the caller settles it (pull consumption)."""
        return await self.transport.get(queue, timeout=timeout)

    async def resend(self, exchange: str, routing_key: str, body: bytes,
                     properties: Properties | None, *, timeout: float | None = None) -> None:
        """Publish a message again, confirmed and mandatory, not through the middleware
        (it is not a new message)."""
        await self.transport.publish(exchange, routing_key, body, properties, mandatory=True,
                                     timeout=timeout)

    async def queue_state(self, name: str, *, timeout: float = 30.0) -> tuple[int, int]:
        """(messages ready, consumers) of an existing queue; NotFound otherwise."""
        return await self.transport.queue_state(name, timeout=timeout)

    async def wait_for_consumer(self, queue: str, timeout: float, what: str, *,
                                exclusive_counts: bool = False) -> None:
        """Return once ``queue`` has a consumer; DeliveryTimeout after ``timeout`` s.

        With ``exclusive_counts``, a queue held exclusively by another connection counts
        as served (the broker tells no more of it: its owner declares, binds, then
        consumes it). Polls with a passive declare, 20 ms apart at first, then up to 0.5 s.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.02
        while True:
            try:
                _ready, consumers = await self.transport.queue_state(
                    queue, timeout=max(0.1, deadline - loop.time()))
                if consumers:
                    return
            except NotFound:
                pass
            except ChannelError as exc:
                if not (exclusive_counts and exc.reply_code == 405):  # RESOURCE_LOCKED
                    raise
                return
            if loop.time() + delay > deadline:
                raise DeliveryTimeout(f"no {what} within {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.transport.bind(Binding(queue, exchange, routing_key))

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.transport.unbind(Binding(queue, exchange, routing_key))

    # -- encoding ---------------------------------------------------------------------

    def encode(self, data: Any) -> bytes:
        body = self.encoder.encode(data)
        self.outbound.check_size(body)
        return body

    def decode_envelope(self, delivery: Delivery) -> dict[str, Any]:
        """The validated envelope of ``delivery``; DecodingError if it is not one."""
        return decode_envelope(
            delivery.body, delivery.content_type, self.encoder,
            max_size=self.max_message_size, accept=self.accept_content_types,
        )

    def properties(self, **values: Any) -> Properties:
        """Properties for an encoded body: the encoder's content type plus ``values``."""
        return Properties(content_type=self.encoder.content_type, **values)
    # -- publishing (the outbound pipeline) -------------------------------------------

    # The delegating methods below return their pipeline's coroutine instead of awaiting
    # it: no extra frame per message (10,000 pending calls are 10,000 coroutine chains).

    def publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, mandatory: bool = True,
        timeout: float | None = None, kind: str = "publish", delay: float | None = None,
        reply: asyncio.Future[Any] | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Publish through the outbound pipeline and wait for the broker's confirm; with
        ``delay`` (seconds), the message reaches ``exchange`` that much later (it is
        confirmed once stored on the broker, and persistent: see docs/failures.md)."""
        return self.outbound.publish(exchange, routing_key, body, properties,
                                     mandatory=mandatory, timeout=timeout, kind=kind,
                                     delay=delay, reply=reply)

    async def publish_envelope(
        self, exchange: str, routing_key: str, envelope: Mapping[str, Any], *,
        persistent: bool = False, mandatory: bool = True, timeout: float | None = None,
        delay: float | None = None, **properties: Any,
    ) -> None:
        props = self.properties(delivery_mode=PERSISTENT if persistent else None, **properties)
        await self.publish(exchange, routing_key, self.encode(envelope), props,
                           mandatory=mandatory, timeout=timeout, delay=delay)

    async def reply(
        self, request: Delivery, body: bytes, properties: Properties | None = None
    ) -> bool:
        """Send ``body`` to the request's ``reply_to`` through the default exchange,
        echoing its correlation id. False when the request wants no reply (or it could
        not be sent: logged)."""
        reply_to = request.reply_to
        if not reply_to:
            return False
        props = properties if properties is not None else self.properties()
        cid = request.correlation_id
        if cid is not None and props.correlation_id != cid:
            props = replace(props, correlation_id=cid)
        return await self.outbound.reply(reply_to, body, props,
                                         self._handling.get(id(request)))

    # -- RPC --------------------------------------------------------------------------

    def new_correlation_id(self) -> str:
        return self.rpc.new_correlation_id()

    @property
    def pending_calls(self) -> int:
        return self.rpc.pending_calls

    async def _start_replies(self) -> None:
        await self.rpc._start_replies()

    def call(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True, delay: float | None = None,
    ) -> Coroutine[Any, Any, Delivery]:
        """Send a request and return the reply's delivery (see :meth:`RpcClient.call`)."""
        return self.rpc.call(exchange, routing_key, body, properties,
                             timeout=timeout, mandatory=mandatory, delay=delay)

    def request(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True, transform: Callable[[Delivery], Any] | None = None,
        expire: bool = True, delay: float | None = None,
    ) -> Coroutine[Any, Any, asyncio.Future[Any]]:
        """Send a request; return a future of the reply (see :meth:`RpcClient.request`)."""
        return self.rpc.request(exchange, routing_key, body, properties,
                                timeout=timeout, mandatory=mandatory, transform=transform,
                                expire=expire, delay=delay)

    async def gather(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float,
        max_replies: int | None = None, mandatory: bool = True,
        on_reply: Callable[[Delivery], None] | None = None,
    ) -> list[Delivery]:
        """Scatter/gather (see :meth:`RpcClient.gather`)."""
        return await self.rpc.gather(exchange, routing_key, body, properties, timeout=timeout,
                                     max_replies=max_replies, mandatory=mandatory,
                                     on_reply=on_reply)

    # -- consuming (the inbound pipeline) ---------------------------------------------

    async def consume(
        self, queue: str, handler: MessageHandler, options: HandlingOptions | None = None,
        *, prefetch_count: int = 0, exclusive: bool = False, no_ack: bool = False,
    ) -> Subscription:
        """Consume ``queue`` through the inbound pipeline: ``handler`` gets each
        :class:`IncomingMessage` and returns the reply's value (see :mod:`.inbound`)."""
        sub = Subscription(self, queue, handler, options or HandlingOptions())
        if sub.dead_letter_queue is not None and sub.options.errors == "retry":
            # exists from the start, for operators to watch (others are declared when a
            # first message goes there: temporary queues leave no dead-letter queue behind)
            await self.outbound.ensure_dlq(sub.dead_letter_queue)
            if sub.policy.delay > 0:
                await self.outbound.delays.prepare(queue)
        sub.consumer = await self.transport.consume(
            queue, sub.on_delivery, prefetch_count=prefetch_count, exclusive=exclusive,
            no_ack=no_ack,
        )
        self._subscriptions.add(sub)
        return sub

    async def subscribe(
        self, queue: str, handler: DeliveryHandler, *, prefetch_count: int = 0,
        policy: RetryPolicy | None = None, exclusive: bool = False, no_ack: bool = False,
    ) -> Subscription:
        """Consume ``queue`` with a handler of raw deliveries: ack after ``handler``,
        retry then dead-letter on errors.

        With ``no_ack`` the broker forgets each message once sent (at most once); a failing
        handler's message is still retried and dead-lettered by republishing it.
        """
        async def on_message(message: IncomingMessage) -> None:
            await handler(message.delivery)

        return await self.consume(queue, on_message,
                                  HandlingOptions(policy),
                                  prefetch_count=prefetch_count, exclusive=exclusive,
                                  no_ack=no_ack)

    async def move_to_dead_letters(
        self, delivery: Delivery, queue: str, dlq: str, reason: str, error: str = "", *,
        exchange: str | None = None, routing_key: str | None = None,
        attempts: int | None = None,
    ) -> bool:
        """Move ``delivery`` to ``dlq`` with why in its headers, then ack it."""
        return await self.outbound.dead_letter(
            delivery, queue, dlq, reason, error,
            exchange=delivery.exchange if exchange is None else exchange,
            routing_key=delivery.routing_key if routing_key is None else routing_key,
            attempts=attempts)

    # -- blocking user code -----------------------------------------------------------

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
        """Run blocking ``fn`` in a worker thread so the loop keeps serving the connection."""
        return self.workers.run(fn, *args, **kwargs)


async def open_core(url: str | None = None, **options: Any) -> Core:
    """Open a Core for ``url`` (or the ``POSTAGE_*`` environment)."""
    settings_fields = set(ConnectionSettings.__dataclass_fields__)
    conn_opts = {k: v for k, v in options.items() if k in settings_fields}
    core_opts = {k: v for k, v in options.items() if k not in settings_fields}
    core = Core(ConnectionSettings.from_url(url, **conn_opts), **core_opts)
    try:
        await core.open()
    except BaseException:
        with contextlib.suppress(Exception):
            await core.close(1.0)
        raise
    return core
