"""The core every API is built on: envelopes on the wire, RPC, handler policy, dead letters.

It sits on the transport and knows nothing of the three public APIs. What it adds:

* ``publish``/``publish_envelope``: confirmed, mandatory publishing of raw bodies or
  Postage envelopes (encoded once, with the content type of the encoder);
* ``call``: request/reply over direct reply-to with correlation ids, a deadline per call
  and a bound on pending calls;
* ``subscribe``: a consumer whose handler's outcome decides the message's fate — acked
  after the handler, retried a bounded number of times (counted in a header by Postage
  itself), then moved to ``<queue>.dlq`` with the reason and error in headers;
  ``Reject`` and undecodable bodies go there at once;
* ``run_sync``: blocking user code runs in worker threads, never on the event loop.
"""

from __future__ import annotations

__all__ = ["Core", "RetryPolicy", "Subscription"]

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .._exceptions import (
    ConfigurationError,
    ConnectionError,
    DecodingError,
    PostageError,
    Reject,
    RpcBacklogFull,
    RpcTimeout,
)
from .._settings import ConnectionSettings
from .._transport import DIRECT_REPLY_TO, Consumer, Delivery, Transport, transport_for
from .._wire.encoding import Encoder, check_encoder, default_encoder
from .._wire.envelope import DEFAULT_MAX_SIZE, decode_envelope
from .._wire.properties import PERSISTENT, Binding, ExchangeSpec, Properties, QueueSpec

log = logging.getLogger("postage.core")
T = TypeVar("T")

HEADER_ATTEMPTS = "x-postage-attempts"
HEADER_REASON = "x-postage-reason"
HEADER_ERROR = "x-postage-error"
HEADER_QUEUE = "x-postage-queue"
HEADER_EXCHANGE = "x-postage-exchange"
HEADER_ROUTING_KEY = "x-postage-routing-key"

Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What happens to a message whose handler raises.

    It is delivered at most ``max_attempts`` times in all (the count travels in the
    ``x-postage-attempts`` header, so it survives restarts and reaches other consumers),
    then moved to ``<queue>.dlq``.
    """

    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")


class _PendingCall:
    # Small on purpose (10,000 pending calls must stay under 20 MB): no timer handle
    # per call, the core's one deadline heap expires them (see Core._sweep_deadlines).
    __slots__ = ("cid", "deadline", "exchange", "future", "on_reply", "pending",
                 "routing_key", "sent", "timeout", "transform")

    def __init__(self, future: asyncio.Future[Any],
                 on_reply: Callable[[Delivery], None] | None = None) -> None:
        self.future = future
        self.deadline: float | None = None
        self.exchange = ""
        self.routing_key = ""
        self.timeout = 0.0
        self.transform: Callable[[Delivery], Any] | None = None
        self.sent = False
        # Set for a scatter/gather call: every reply goes here and the entry stays
        # pending until ``future`` is done (by max_replies, the deadline or a cancel).
        self.on_reply = on_reply
        self.cid = ""
        self.pending: dict[str, _PendingCall] | None = None

    def __call__(self, _future: asyncio.Future[Any]) -> None:
        """Done callback of ``future``: leave the pending calls (the call object itself
        is the callback, so none is allocated per call)."""
        pending = self.pending
        if pending is not None and pending.get(self.cid) is self:
            del pending[self.cid]


class Subscription:
    """A queue consumed with the core's ack/retry/dead-letter policy."""

    def __init__(self, core: Core, queue: str, handler: Handler, policy: RetryPolicy) -> None:
        self.core = core
        self.queue = queue
        self.handler = handler
        self.policy = policy
        self.consumer: Consumer | None = None

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            await self.handler(delivery)
        except Reject as exc:
            await self.core.dead_letter(delivery, self.queue, "rejected", str(exc))
        except DecodingError as exc:
            await self.core.dead_letter(delivery, self.queue, "undecodable", str(exc))
        except asyncio.CancelledError:
            await delivery.nack(requeue=True)
            raise
        except Exception as exc:
            await self._failed(delivery, exc)
        else:
            if not delivery.settled:
                await delivery.ack()

    async def _failed(self, delivery: Delivery, exc: BaseException) -> None:
        try:
            attempts = int(delivery.headers.get(HEADER_ATTEMPTS, 0)) + 1
        except (TypeError, ValueError):
            attempts = 1
        error = f"{type(exc).__name__}: {exc}"
        if attempts >= self.policy.max_attempts:
            log.error("handler for queue %r failed %d times (%s); dead-lettering",
                      self.queue, attempts, error, exc_info=exc)
            await self.core.dead_letter(delivery, self.queue, "handler-failed", error, attempts)
            return
        log.warning("handler for queue %r failed (attempt %d of %d): %s; retrying",
                    self.queue, attempts, self.policy.max_attempts, error)
        props = delivery.properties
        headers = dict(props.headers or {})
        headers[HEADER_ATTEMPTS] = attempts
        headers[HEADER_ERROR] = error[:1000]
        try:
            await self.core.transport.publish(
                "", self.queue, delivery.body, replace(props, headers=headers), mandatory=True
            )
        except PostageError as perr:
            log.error("cannot requeue a failed message on %r (%s); the broker redelivers it",
                      self.queue, perr)
            await delivery.nack(requeue=True)
            return
        await delivery.ack()

    async def cancel(self, timeout: float = 10.0) -> None:
        """Stop consuming; wait for handlers in progress (up to ``timeout``)."""
        if self.consumer is not None:
            await self.consumer.cancel(timeout)
        self.core._subscriptions.discard(self)


class Core:
    """One broker connection shared by the API objects of a program."""

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
    ) -> None:
        self.settings = settings or ConnectionSettings.from_url(None)
        # ``transport``: another transport (e.g. a MemoryTransport); memory:// URLs get one
        self.transport = transport if transport is not None else transport_for(self.settings)
        self.encoder = check_encoder(encoder)  # must declare its content type
        self.max_message_size = max_message_size
        self.max_pending_calls = max_pending_calls
        self.rpc_timeout = rpc_timeout
        self.accept_content_types = frozenset(accept_content_types)
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers or min(64, (os.cpu_count() or 1) * 8),
            thread_name_prefix="postage-handler",
        )
        self._pending: dict[str, _PendingCall] = {}
        # (deadline, correlation id) of pending calls, swept by ONE timer armed for the
        # earliest; entries of answered calls are dropped lazily (and compacted).
        self._deadline_heap: list[tuple[float, str]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._cid_prefix = os.urandom(6).hex()
        self._cid_counter = itertools.count(1)
        self._replies_started = False
        self._reply_lock = asyncio.Lock()
        self._dlqs: set[str] = set()
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        await self.transport.open()
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
        for call in list(self._pending.values()):
            if not call.future.done():
                call.future.set_exception(ConnectionError("the connection was closed"))
        self._pending.clear()
        self._deadline_heap.clear()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        await self.transport.close(max(0.5, deadline - loop.time()))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_reconnect(self) -> None:
        # Replies to requests sent on the old channel cannot arrive any more.
        lost = [cid for cid, call in self._pending.items() if call.sent]
        for cid in lost:
            call = self._pending.pop(cid)
            if not call.future.done():
                call.future.set_exception(ConnectionError(
                    "the connection was lost while waiting for the reply; "
                    "the request may or may not have been handled"
                ))

    # -- topology ---------------------------------------------------------------------

    async def declare_exchange(
        self, name: str, type: str = "direct", *, durable: bool = False,
        auto_delete: bool = False, passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        if passive:
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
                args["x-delivery-limit"] = delivery_limit
        return await self.transport.declare_queue(QueueSpec.make(
            name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            arguments=args or None))

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.transport.bind(Binding(queue, exchange, routing_key))

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.transport.unbind(Binding(queue, exchange, routing_key))

    # -- encoding ---------------------------------------------------------------------

    def encode(self, data: Any) -> bytes:
        body = self.encoder.encode(data)
        if len(body) > self.max_message_size:
            from .._exceptions import EncodingError

            raise EncodingError(
                f"message of {len(body)} bytes is over the limit of {self.max_message_size}"
            )
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

    # -- publishing -------------------------------------------------------------------

    async def publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        if len(body) > self.max_message_size:
            from .._exceptions import EncodingError

            raise EncodingError(
                f"message of {len(body)} bytes is over the limit of {self.max_message_size}"
            )
        await self.transport.publish(
            exchange, routing_key, body, properties, mandatory=mandatory, timeout=timeout
        )

    async def publish_envelope(
        self, exchange: str, routing_key: str, envelope: Mapping[str, Any], *,
        persistent: bool = False, mandatory: bool = True, timeout: float | None = None,
        **properties: Any,
    ) -> None:
        props = self.properties(delivery_mode=PERSISTENT if persistent else None, **properties)
        await self.transport.publish(
            exchange, routing_key, self.encode(envelope), props,
            mandatory=mandatory, timeout=timeout,
        )

    # -- RPC --------------------------------------------------------------------------

    def new_correlation_id(self) -> str:
        return f"{self._cid_prefix}.{next(self._cid_counter)}"

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    async def _start_replies(self) -> None:
        async with self._reply_lock:
            if not self._replies_started:
                await self.transport.consume_replies(self._on_reply)
                self._replies_started = True

    async def _on_reply(self, delivery: Delivery) -> None:
        cid = delivery.correlation_id
        call = self._pending.get(cid) if cid is not None else None
        if cid is None or call is None:
            log.debug("reply with unknown correlation id %r dropped (late or foreign)", cid)
            return
        if call.on_reply is not None:  # a gather: many replies, the entry stays
            call.on_reply(delivery)
            return
        del self._pending[cid]
        future = call.future
        if future.done():
            return
        if call.transform is None:
            future.set_result(delivery)
            return
        try:
            value = call.transform(delivery)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)

    async def call(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True,
    ) -> Delivery:
        """Send a request and return the reply's delivery.

        Raises RpcTimeout (a TimeoutError) after ``timeout`` seconds (default
        ``rpc_timeout``), Unroutable at once when no queue receives the request,
        RpcBacklogFull when too many calls are pending.
        """
        cid, future = await self._request(
            exchange, routing_key, body, properties, timeout, mandatory, None, False
        )
        try:
            reply: Delivery = await future
        except asyncio.CancelledError:
            self._pending.pop(cid, None)  # the caller gave up: forget the call
            raise
        return reply

    async def request(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True, transform: Callable[[Delivery], Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Send a request; once the broker has confirmed it, return a future of the reply.

        Split from :meth:`call` for APIs that hand the caller a future (the communicator):
        publishing errors (Unroutable, ...) are raised here, at once; the future fails with
        RpcTimeout after ``timeout`` seconds (default ``rpc_timeout``). Cancelling the
        future forgets the call. The confirm itself is awaited for at most
        ``min(timeout, publish_timeout)``. With ``transform``, the future holds
        ``transform(reply)`` instead (or what it raised): an API decoding replies needs
        no second future chained to this one.
        """
        _cid, future = await self._request(
            exchange, routing_key, body, properties, timeout, mandatory, transform, True
        )
        return future

    async def _request(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties | None,
        timeout: float | None, mandatory: bool, transform: Callable[[Delivery], Any] | None,
        forget_on_cancel: bool,
    ) -> tuple[str, asyncio.Future[Any]]:
        if not self._replies_started:
            await self._start_replies()
        if len(self._pending) >= self.max_pending_calls:
            raise RpcBacklogFull(f"{len(self._pending)} RPC calls are already pending")
        loop = asyncio.get_running_loop()
        timeout = self.rpc_timeout if timeout is None else timeout
        props = properties if properties is not None else Properties()
        cid = props.correlation_id or self.new_correlation_id()
        props = replace(props, correlation_id=cid, reply_to=DIRECT_REPLY_TO)
        future: asyncio.Future[Any] = loop.create_future()
        call = _PendingCall(future)
        call.transform = transform
        call.exchange = exchange
        call.routing_key = routing_key
        call.timeout = timeout
        self._pending[cid] = call
        self._add_deadline(loop, cid, call, loop.time() + timeout)
        if forget_on_cancel:  # (call() forgets by itself: no callback at all)
            call.cid = cid
            call.pending = self._pending
            future.add_done_callback(call)
        try:
            await self.publish(exchange, routing_key, body, props, mandatory=mandatory,
                               timeout=min(timeout, self.settings.publish_timeout))
        except BaseException:
            self._forget(cid, call, future)
            future.cancel()
            raise
        call.sent = True
        return cid, future

    def _forget(self, cid: str, call: _PendingCall, _future: asyncio.Future[Any]) -> None:
        if self._pending.get(cid) is call:
            del self._pending[cid]

    def _add_deadline(self, loop: asyncio.AbstractEventLoop, cid: str, call: _PendingCall,
                      deadline: float) -> None:
        call.deadline = deadline
        heap = self._deadline_heap
        if len(heap) > 2 * len(self._pending) + 64:  # mostly answered calls: compact
            heap[:] = [(c.deadline, k) for k, c in self._pending.items()
                       if c.deadline is not None and k != cid]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, cid))
        if self._deadline_timer is None or deadline < self._deadline_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = deadline
            self._deadline_timer = loop.call_at(deadline, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # timers may fire a hair early
        heap = self._deadline_heap
        while heap and heap[0][0] <= now:
            deadline, cid = heapq.heappop(heap)
            call = self._pending.get(cid)
            if call is not None and call.deadline == deadline:
                del self._pending[cid]
                if not call.future.done():
                    call.future.set_exception(RpcTimeout(
                        f"no reply from {call.exchange!r}/{call.routing_key!r} "
                        f"within {call.timeout:g} s"
                    ))
        if heap and not self._closed:
            self._deadline_at = heap[0][0]
            self._deadline_timer = loop.call_at(self._deadline_at, self._sweep_deadlines)

    async def gather(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float,
        max_replies: int | None = None, mandatory: bool = True,
        on_reply: Callable[[Delivery], None] | None = None,
    ) -> list[Delivery]:
        """Scatter/gather: send one request, collect every reply to it.

        For a routing key that reaches several consumers (a fanout key): replies (same
        correlation id, direct reply-to) are collected until ``max_replies`` have arrived
        or ``timeout`` seconds have passed since the call, and returned in arrival order;
        never an RpcTimeout. ``on_reply`` (if given) is called on the loop as each one
        arrives. Raises Unroutable at once (with ``mandatory``) when no queue receives
        the request, ConnectionError when the connection is lost meanwhile (later replies
        could not arrive), RpcBacklogFull like :meth:`call`. Late replies are dropped.
        """
        if max_replies is not None and max_replies < 1:
            raise ConfigurationError("max_replies must be at least 1")
        if not self._replies_started:
            await self._start_replies()
        if len(self._pending) >= self.max_pending_calls:
            raise RpcBacklogFull(f"{len(self._pending)} RPC calls are already pending")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        props = properties if properties is not None else Properties()
        cid = props.correlation_id or self.new_correlation_id()
        props = replace(props, correlation_id=cid, reply_to=DIRECT_REPLY_TO)
        replies: list[Delivery] = []
        done: asyncio.Future[Delivery] = loop.create_future()

        def collect(delivery: Delivery) -> None:
            if done.done():
                return
            replies.append(delivery)
            if on_reply is not None:
                on_reply(delivery)
            if max_replies is not None and len(replies) >= max_replies:
                done.set_result(delivery)

        call = _PendingCall(done, collect)
        self._pending[cid] = call
        done.add_done_callback(functools.partial(self._forget, cid, call))
        try:
            await self.publish(exchange, routing_key, body, props, mandatory=mandatory,
                               timeout=max(0.001, min(timeout, self.settings.publish_timeout)))
            call.sent = True
            await asyncio.wait([done], timeout=max(0.0, deadline - loop.time()))
        finally:
            if not done.done():
                done.cancel()  # forgets the call
        error = None if done.cancelled() else done.exception()
        if error is not None:  # the connection was lost or the core closed
            raise error
        return replies

    async def reply(
        self, request: Delivery, body: bytes, properties: Properties | None = None
    ) -> bool:
        """Send ``body`` to the request's ``reply_to`` through the default exchange,
        echoing its correlation id. False when the request wants no reply."""
        reply_to = request.reply_to
        if not reply_to:
            return False
        props = properties if properties is not None else self.properties()
        cid = request.correlation_id
        if cid is not None and props.correlation_id != cid:
            props = replace(props, correlation_id=cid)
        if len(body) > self.max_message_size:
            log.warning("cannot send a reply to %r: %d bytes is over the limit", reply_to,
                        len(body))
            return False
        try:
            # No confirm awaited (a reply to direct reply-to is transient and not kept by
            # the broker anyway): the frame is queued before the request's ack, so a link
            # that drops loses both and the request is delivered again.
            await self.transport.publish_transient("", reply_to, body, props)
        except PostageError as exc:
            log.warning("cannot send a reply to %r: %s", reply_to, exc)
            return False
        return True

    # -- consuming --------------------------------------------------------------------

    async def subscribe(
        self, queue: str, handler: Handler, *, prefetch_count: int = 0,
        policy: RetryPolicy | None = None, exclusive: bool = False, no_ack: bool = False,
    ) -> Subscription:
        """Consume ``queue``: ack after ``handler``, retry then dead-letter on errors.

        With ``no_ack`` the broker forgets each message once sent (at most once); a failing
        handler's message is still retried and dead-lettered by republishing it.
        """
        sub = Subscription(self, queue, handler, policy or RetryPolicy())
        await self._ensure_dlq(f"{queue}.dlq")  # exists from the start, for operators to watch
        sub.consumer = await self.transport.consume(
            queue, sub._on_delivery, prefetch_count=prefetch_count, exclusive=exclusive,
            no_ack=no_ack,
        )
        self._subscriptions.add(sub)
        return sub

    async def _ensure_dlq(self, dlq: str) -> None:
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
        self, delivery: Delivery, queue: str, reason: str, error: str = "",
        attempts: int | None = None,
    ) -> None:
        """Move ``delivery`` to ``<queue>.dlq`` with why in its headers, then ack it."""
        dlq = f"{queue}.dlq"
        try:
            await self._ensure_dlq(dlq)
            props = delivery.properties
            headers = dict(props.headers or {})
            headers.update({
                HEADER_REASON: reason,
                HEADER_ERROR: error[:1000],
                HEADER_QUEUE: queue,
                HEADER_EXCHANGE: delivery.exchange,
                HEADER_ROUTING_KEY: delivery.routing_key,
            })
            if attempts is not None:
                headers[HEADER_ATTEMPTS] = attempts
            await self.transport.publish(
                "", dlq, delivery.body,
                replace(props, headers=headers, delivery_mode=PERSISTENT), mandatory=True,
            )
        except PostageError as exc:
            log.error("cannot dead-letter a message of %r (%s); requeueing it", queue, exc)
            await asyncio.sleep(0.5)
            await delivery.nack(requeue=True)
            return
        log.warning("message from queue %r moved to %r: %s %s", queue, dlq, reason, error)
        await delivery.ack()

    # -- blocking user code -----------------------------------------------------------

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread so the loop keeps serving the connection."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def work() -> None:
            # One hand-back to the loop per call (cheaper than run_in_executor's chained
            # concurrent/asyncio futures, which showed in profiles of RPC subscribers).
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                outcome: tuple[Any, Any] = (_fail_future, exc)
            else:
                outcome = (_resolve_future, result)
            try:
                loop.call_soon_threadsafe(outcome[0], future, outcome[1])
            except RuntimeError:  # the loop has closed meanwhile: nobody waits any more
                pass

        self._executor.submit(work)
        return await future


def _resolve_future(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


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
