"""The async client (seed 002): raw bodies on any exchange, for programs that want AMQP control.

``AsyncClient`` publishes, receives and calls with bodies that are bytes (``str`` is sent as
UTF-8) and are never wrapped in the Postage envelope, so programs that do not use Postage
interoperate both ways. It keeps what the seed wanted (one long-lived connection, RPC with
correlation ids and many calls in flight) and fixes what was wrong for production:

* one connection with reused channels (the core's), not a channel per publish;
* publishes are confirmed and ``mandatory``: a message nobody receives raises ``Unroutable``;
* a closed channel or connection is recovered by the core instead of ``sys.exit``;
* every RPC has a deadline (``RpcTimeout``, also a ``TimeoutError``); replies use direct
  reply-to, so there is no reply queue to declare per exchange;
* a handler that raises does not lose the message: it is retried a bounded number of times,
  then moved to ``<queue>.dlq`` with the error in a header (the seed acked and forgot it).
"""

from __future__ import annotations

__all__ = ["AsyncClient", "Receiver"]

import asyncio
import datetime
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

from .._core.core import Core, HandlingOptions, RetryPolicy, Subscription, open_core
from .._core.middleware import IncomingMessage
from .._core.workers import is_async_callable
from .._exceptions import (
    ConfigurationError,
    ConnectionClosed,
    EncodingError,
    PreconditionFailed,
)
from .._wire.delays import resolve_delay
from .._wire.properties import Properties

log = logging.getLogger("postage.client")

Body: TypeAlias = bytes | bytearray | memoryview | str
HandlerResult: TypeAlias = Body | None
ReceiveHandler: TypeAlias = Callable[[bytes], Awaitable[HandlerResult] | HandlerResult]

# Messages a receiver holds at once when ``prefetch_count`` is not given: enough to keep a
# fast handler busy, bounded so that a long backlog does not fill the consumer's memory.
DEFAULT_PREFETCH = 256


def to_bytes(body: Body) -> bytes:
    """``body`` as bytes: ``str`` is encoded as UTF-8, bytes-like values are copied."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise EncodingError(f"a body must be bytes or str, not {type(body).__name__}")


class _RawReplies:
    """A receive handler's result is the reply body itself (bytes or str); errors are
    not answered (the sender of a raw request times out or reads the dead-letter queue)."""

    content_type: str | None = None

    def result(self, message: IncomingMessage, value: Any) -> bytes | None:
        return None if value is None else to_bytes(value)

    def error(self, message: IncomingMessage, exc: BaseException) -> bytes | None:
        return None


_RAW_REPLIES = _RawReplies()


class Receiver:
    """A running ``receive``: the queue it consumes and a way to stop it."""

    def __init__(self, client: AsyncClient, queue: str, subscription: Subscription) -> None:
        self.client = client
        self.queue = queue
        self._subscription = subscription

    @property
    def active(self) -> bool:
        consumer = self._subscription.consumer
        return consumer is not None and consumer.active

    async def cancel(self, timeout: float = 10.0) -> None:
        """Stop consuming; wait (up to ``timeout``) for handlers in progress."""
        await self._subscription.cancel(timeout)
        self.client._receivers.discard(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<Receiver queue={self.queue!r} {state}>"


class AsyncClient:
    """Publish, receive and call with raw bodies over one recovering connection.

    Use it as an async context manager::

        async with postage.AsyncClient("amqp://guest:guest@localhost/") as client:
            await client.publish("events", "dog.black", b"woof")

    ``url`` is an AMQP URL (``None``: the ``POSTAGE_*`` environment); ``options`` are
    connection settings (``heartbeat``, ``tls``, ...) and core options (``rpc_timeout``,
    ``max_message_size``, ``max_workers``, ...). ``core`` shares an open core with other
    APIs of the program instead of opening a connection of its own.
    """

    def __init__(self, url: str | None = None, *, core: Core | None = None,
                 **options: Any) -> None:
        if core is not None and (url is not None or options):
            raise TypeError("give either an open core or a URL and options, not both")
        self._url = url
        self._options = options
        self._core: Core | None = core
        self._owns_core = core is None
        self._receivers: set[Receiver] = set()
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> AsyncClient:
        """Connect (done by ``async with``); raises a Postage ConnectionError on failure."""
        if self._closed:
            raise ConnectionClosed("this client is closed")
        if self._core is None:
            self._core = await open_core(self._url, **self._options)
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Stop receivers (letting handlers finish), wait for confirms, disconnect."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # all receivers stop at once: ``timeout`` bounds the whole close
        await asyncio.gather(*(r.cancel(timeout) for r in list(self._receivers)),
                             return_exceptions=True)
        if self._core is not None and self._owns_core:
            await self._core.close(max(0.5, deadline - loop.time()))

    async def __aenter__(self) -> AsyncClient:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def core(self) -> Core:
        """The open core (for advanced use: declarations, other APIs on one connection)."""
        if self._core is None or self._closed or self._core.closed:
            raise ConnectionClosed("the client is not open (use 'async with AsyncClient(...)')")
        return self._core

    # -- verbs ------------------------------------------------------------------------

    async def publish(
        self, exchange: str, routing_key: str, body: Body,
        properties: Properties | Mapping[str, Any] | None = None, *,
        mandatory: bool = True, timeout: float | None = None,
        delay: float | None = None, not_before: datetime.datetime | None = None,
    ) -> None:
        """Publish ``body`` and wait for the broker's confirm.

        The exchange must exist (``NotFound`` otherwise) or be ``""`` (the default
        exchange). With ``mandatory`` (the default) a message that reaches no queue raises
        ``Unroutable``. ``properties`` is a :class:`~postage.Properties` or a dict of them.
        ``delay`` (seconds) or ``not_before`` (a datetime): the message reaches the
        exchange that much later; it is persistent and confirmed once stored on the
        broker, and ``Unroutable`` cannot be known then (a message nobody receives when
        its time comes goes to the queue ``postage.delay.<user>.unrouted``).
        """
        await self.core.publish(
            exchange, routing_key, to_bytes(body), Properties.coerce(properties),
            mandatory=mandatory, timeout=timeout, delay=resolve_delay(delay, not_before),
        )

    async def receive(
        self, exchange: str, routing_key: str, queue_name: str, handler: ReceiveHandler,
        no_ack: bool = False, prefetch_count: int | None = None,
        exchange_type: str = "topic", *,
        durable: bool = False, auto_delete: bool | None = None,
        policy: RetryPolicy | None = None, quorum: bool = False,
    ) -> Receiver:
        """Declare ``exchange`` and ``queue_name``, bind them with ``routing_key``, consume.

        ``handler(body)`` (``async def`` or a plain function, which runs in a worker
        thread) gets each body as bytes. What it returns (bytes or str; ``None`` for
        nothing) is sent to the message's ``reply_to`` with its ``correlation_id``. The
        message is acked after the handler; if the handler raises, it is retried per
        ``policy`` (default: 3 deliveries in all) and then moved to ``<queue_name>.dlq``.
        ``prefetch_count``: messages held at once (default 256; ``0`` for no limit).

        The queue is ``auto_delete`` unless ``durable`` (as in the seed). ``quorum=True``
        declares a replicated quorum queue (durable, never auto-delete; its ``.dlq`` is a
        quorum queue too). The exchange of a durable or quorum queue is durable, so that
        the binding, and delayed messages sent through it, survive a broker restart; one
        that exists already as a transient exchange is used as it is, with a warning. With
        ``exchange`` ``""`` the queue is consumed without declaring or binding an exchange.
        """
        core = self.core
        if exchange:
            await _declare_exchange(core, exchange, exchange_type, durable or quorum)
        if quorum:
            if auto_delete:
                raise ConfigurationError("a quorum queue cannot be auto-delete")
            await core.declare_queue(queue_name, quorum=True)
        else:
            await core.declare_queue(
                queue_name, durable=durable,
                auto_delete=(not durable) if auto_delete is None else auto_delete,
            )
        if exchange:
            await core.bind(queue_name, exchange, routing_key)
        is_async = is_async_callable(handler)

        async def run(message: IncomingMessage) -> Any:
            if is_async:
                return await handler(message.body)  # type: ignore[misc]
            result = await core.run_sync(handler, message.body)
            if inspect.isawaitable(result):
                result = await result
            return result

        options = HandlingOptions(policy, replies=_RAW_REPLIES)
        subscription = await core.consume(
            queue_name, run, options, no_ack=no_ack,
            prefetch_count=DEFAULT_PREFETCH if prefetch_count is None else prefetch_count,
        )
        receiver = Receiver(self, queue_name, subscription)
        self._receivers.add(receiver)
        return receiver

    async def rpc(
        self, exchange: str, routing_key: str, body: Body, timeout: float | None = None,
        properties: Properties | Mapping[str, Any] | None = None,
    ) -> bytes:
        """Send ``body`` as a request and return the reply's body.

        Raises ``RpcTimeout`` (a ``TimeoutError``) after ``timeout`` seconds (default: the
        core's ``rpc_timeout``, 30 s), ``Unroutable`` at once when no queue receives the
        request and ``NotFound`` when the exchange does not exist. Any number of calls may
        be in flight at once; each gets its own reply (by correlation id).
        """
        reply = await self.core.call(
            exchange, routing_key, to_bytes(body), Properties.coerce(properties),
            timeout=timeout,
        )
        return reply.body

    def __repr__(self) -> str:
        core = self._core
        if self._closed:
            state = "closed"
        elif core is None:
            state = "not open"
        else:
            state = f"open on {core.settings!r}"
        return f"<AsyncClient {state}>"


async def _declare_exchange(core: Core, name: str, type: str, durable: bool) -> None:
    """Declare ``name``, durable for a queue that outlives a restart; an exchange that
    exists already as a transient one (declared so by an earlier version) is kept."""
    try:
        await core.declare_exchange(name, type, durable=durable)
    except PreconditionFailed:
        if not durable:
            raise
        # the same, transient: PreconditionFailed again for any other difference (its type)
        await core.declare_exchange(name, type, durable=False)
        log.warning("exchange %r exists and is not durable: its bindings, and delayed "
                    "messages on their way through it, do not survive a broker restart "
                    "(delete it to have it declared durable)", name)
