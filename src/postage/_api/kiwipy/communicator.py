"""kiwiPy's asyncio communicator (``kiwipy.rmq.RmqCommunicator``) on a Postage core.

Same exchanges, queues, arguments and bodies as kiwiPy 0.9 (see :mod:`postage._wire.kiwipy`),
so that it talks with kiwiPy processes; the messages take Postage's one inbound and
outbound path (publisher confirms, ack after the subscriber, recovery, dead-letter queues).
"""

from __future__ import annotations

__all__ = ["RmqCommunicator", "RmqPublisher", "RmqSubscriber", "async_connect"]

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

from ..._core.core import Core, HandlingOptions, Subscription
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError, ConnectionClosed, ConnectionError, PostageError
from ..._settings import ConnectionSettings, redact_url
from ..._wire import kiwipy as wire
from ..._wire.properties import Properties
from .errors import DuplicateSubscriberIdentifier, UnroutableError, aio_pika_compatible
from .messages import (
    Cancelled,
    Codec,
    Decoder,
    Encoder,
    PublisherWithReplyQueue,
    YamlReplies,
    call_subscriber,
    settle,
    was_cancelled,
)
from .tasks import RmqTaskQueue, adopt

log = logging.getLogger("postage.kiwipy")


class RmqPublisher(PublisherWithReplyQueue):
    """Sends RPCs and broadcasts on the message exchange."""

    async def rpc_send(self, recipient_id: Any, msg: Any) -> asyncio.Future[Any]:
        return await self.publish_expect_response(
            self.codec.encode(msg), f"{wire.RPC_TOPIC}.{recipient_id}")

    async def broadcast_send(self, msg: Any, sender: Any = None, subject: Any = None,
                             correlation_id: Any = None) -> bool:
        body = self.codec.encode(wire.broadcast_body(msg, sender, subject, correlation_id))
        if not self.core.transport.is_ready:
            # as kiwiPy: a broadcast while the connection is down fails at once (with an
            # error that is also aio-pika's ConnectionClosed, which callers catch)
            raise aio_pika_compatible(ConnectionClosed(
                "the connection is down: the broadcast was not sent"))
        # not mandatory: a broadcast nobody listens to is not an error
        await self.publish(body, wire.BROADCAST_TOPIC, Properties(), mandatory=False)
        return True


class RmqSubscriber:
    """Receives RPCs (a queue per subscriber, bound to ``[rpc].<identifier>``) and
    broadcasts (one queue, bound to ``[broadcast]``) on the message exchange."""

    def __init__(self, comm: RmqCommunicator) -> None:
        self._comm = comm
        self._core = comm.core
        self._exchange = comm._message_exchange
        self._codec = comm._codec
        arguments: dict[str, Any] = {"x-message-ttl": wire.MESSAGE_TTL}
        if comm._queue_expires:
            arguments["x-expires"] = comm._queue_expires
        self._rpc_arguments = arguments
        self._rpc: dict[Any, tuple[str, Subscription]] = {}
        # the subscribers themselves, apart: a removed one is let go at once, while its
        # queue and consumer are retired in the background
        self._rpc_subscribers: dict[Any, Callable[..., Any]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # removed subscribers finishing
        self._broadcast_subscribers: dict[Any, Callable[..., Any]] = {}
        self._broadcast_queue = f"broadcast-{uuid.uuid4().hex}"
        self._broadcast_consumer: Subscription | None = None
        self._connected = False

    async def connect(self) -> None:
        if self._connected:
            return
        core = self._core
        await core.declare_exchange(self._exchange, "topic",
                                    auto_delete=self._comm._testing_mode)
        await core.declare_queue(self._broadcast_queue, exclusive=True,
                                 arguments={"x-message-ttl": wire.MESSAGE_TTL})
        await core.bind(self._broadcast_queue, self._exchange, wire.BROADCAST_TOPIC)
        self._connected = True

    async def add_rpc_subscriber(self, subscriber: Callable[..., Any],
                                 identifier: Any = None) -> Any:
        identifier = identifier or uuid.uuid4().hex
        if identifier in self._rpc:
            raise DuplicateSubscriberIdentifier(f"RPC identifier '{identifier}'")
        comm = self._comm
        core = self._core
        queue = f"rpc-{uuid.uuid4().hex}"
        codec = self._codec

        replies = YamlReplies(codec, host=False)
        subscribers = self._rpc_subscribers

        async def handle(message: IncomingMessage) -> Any:
            msg = await codec.decode_off_loop(message.body, core.workers)
            current = subscribers.get(identifier)
            if current is None:  # removed while this request waited: the caller is told
                raise UnroutableError(f"the RPC subscriber '{identifier}' was removed")
            result = await call_subscriber(current, (comm.callback_comm, msg), core,
                                           comm._in_threads)
            try:
                return await settle(result, replies.pending_sender(core, message.delivery))
            except asyncio.CancelledError as exc:
                if was_cancelled():
                    raise
                return Cancelled(str(exc) or None)  # the subscriber's future was

        await core.declare_queue(queue, exclusive=True, arguments=self._rpc_arguments)
        options = HandlingOptions(errors="answer", replies=replies)
        subscription = await core.consume(queue, handle, options)
        await core.bind(queue, self._exchange, f"{wire.RPC_TOPIC}.{identifier}")
        self._rpc[identifier] = (queue, subscription)
        self._rpc_subscribers[identifier] = subscriber
        return identifier

    async def remove_rpc_subscriber(self, identifier: Any) -> None:
        try:
            queue, subscription = self._rpc.pop(identifier)
        except KeyError:
            raise ValueError(f"Unknown subscriber '{identifier}'") from None
        del self._rpc_subscribers[identifier]  # not kept until its queue is retired
        await self._core.unbind(queue, self._exchange, f"{wire.RPC_TOPIC}.{identifier}")
        # As kiwiPy, without waiting for its handlers still running: one of them may be
        # waiting for this very call (plumpy removes a process's subscriber when a kill
        # RPC ends the process). They finish, answer and ack; then the queue goes. (A
        # context of its own: this call may come from inside such a handler.)
        task = asyncio.get_running_loop().create_task(
            self._retire(queue, subscription), context=contextvars.Context())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, queue: str, subscription: Subscription) -> None:
        try:
            await subscription.cancel(self._comm.close_timeout)
            await self._core.delete_queue(queue)
        except PostageError as exc:
            log.warning("removing the RPC queue %r: %s", queue, exc)

    async def add_broadcast_subscriber(self, subscriber: Callable[..., Any],
                                       identifier: Any = None) -> Any:
        identifier = identifier or uuid.uuid4().hex
        if identifier in self._broadcast_subscribers:
            raise DuplicateSubscriberIdentifier(f"Broadcast identifier '{identifier}'")
        self._broadcast_subscribers[identifier] = subscriber
        if self._broadcast_consumer is None:
            # broadcasts are news: a failing subscriber is logged, not retried; one that
            # cannot be read goes to one durable <message exchange>.dlq (a DLQ per
            # communicator would outlive its temporary queue), as the communicator's do
            options = HandlingOptions(errors="log", dead_letter_queue=f"{self._exchange}.dlq")
            self._broadcast_consumer = await self._core.consume(
                self._broadcast_queue, self._on_broadcast, options)
        return identifier

    async def remove_broadcast_subscriber(self, identifier: Any) -> None:
        try:
            del self._broadcast_subscribers[identifier]
        except KeyError:
            raise ValueError(f"Broadcast subscriber '{identifier}' unknown") from None
        if not self._broadcast_subscribers and self._broadcast_consumer is not None:
            consumer, self._broadcast_consumer = self._broadcast_consumer, None
            await consumer.cancel(self._comm.close_timeout)

    async def _on_broadcast(self, message: IncomingMessage) -> None:
        body, sender, subject, cid = wire.parse_broadcast(
            await self._codec.decode_off_loop(message.body, self._core.workers))
        comm = self._comm
        for subscriber in list(self._broadcast_subscribers.values()):
            try:
                await call_subscriber(subscriber, (comm.callback_comm, body, sender, subject,
                                                   cid), self._core, comm._in_threads)
            except Exception:
                log.exception("broadcast subscriber %r failed", subscriber)

    async def disconnect(self, timeout: float) -> None:
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=timeout)
        subscriptions = [sub for _, sub in self._rpc.values()]
        if self._broadcast_consumer is not None:
            subscriptions.append(self._broadcast_consumer)
        await asyncio.gather(*(s.cancel(timeout) for s in subscriptions),
                             return_exceptions=True)
        self._rpc.clear()
        self._rpc_subscribers.clear()
        self._broadcast_consumer = None


def connection_url(params: str | Mapping[str, Any] | None) -> str | None:
    """A URL for kiwiPy's ``connection_params``: a URL, or the keyword arguments kiwiPy
    hands to aio-pika's ``connect``: ``url``, or ``host``, ``port``, ``login`` (or
    ``username``), ``password``, ``virtualhost`` (or ``virtual_host``; empty means
    ``/``), ``ssl`` (or ``protocol="amqps"``), ``ssl_options`` (``cafile``, ``certfile``,
    ``keyfile``, ``no_verify_ssl``), ``heartbeat``, ``timeout``. Other keys are logged and
    left out (aio-pika puts them in the URL's query, where they mean nothing)."""
    if params is None or isinstance(params, str):
        return params or None
    if not isinstance(params, Mapping):
        raise ConfigurationError("connection_params must be a URL or a dict")
    if params.get("url"):
        return str(params["url"])
    ignored = sorted(set(params) - _KNOWN_PARAMS)
    if ignored:
        log.warning("connection_params: %s left out (not connection settings Postage uses)",
                    ", ".join(ignored))
    tls = bool(params.get("ssl")) or params.get("protocol") == "amqps"
    login = quote(str(params.get("login", params.get("username", "guest"))), safe="")
    password = quote(str(params.get("password", "guest")), safe="")
    host = params.get("host", "localhost")
    port = params.get("port", 5671 if tls else 5672)
    vhost = params.get("virtualhost", params.get("virtual_host", "/")) or "/"
    query: dict[str, Any] = {}
    if params.get("heartbeat") is not None:
        query["heartbeat"] = params["heartbeat"]
    if params.get("timeout") is not None:
        query["connection_timeout"] = params["timeout"]
    query.update({k: v for k, v in (params.get("ssl_options") or {}).items()
                  if k in ("cafile", "certfile", "keyfile", "no_verify_ssl")})
    url = f"{'amqps' if tls else 'amqp'}://{login}:{password}@{host}:{port}/" \
          f"{quote(str(vhost), safe='')}"
    return f"{url}?{urlencode(query)}" if query else url


_KNOWN_PARAMS = {"host", "port", "login", "username", "password", "virtualhost",
                 "virtual_host", "ssl", "protocol", "ssl_options", "heartbeat", "timeout"}


class RmqCommunicator:
    """kiwiPy's asyncio communicator: its verbs are coroutines; futures are asyncio ones.

    ``connection``: a :class:`postage.aio`-level Core (opened by :meth:`connect` if need
    be), a broker URL, or an aio-pika connection (Postage opens its own to the same URL).
    Sync subscribers run on the event loop, as in kiwiPy.
    """

    def __init__(
        self,
        connection: Core | str | Any,
        message_exchange: str = wire.MESSAGE_EXCHANGE,
        queue_expires: int = wire.QUEUE_EXPIRES,
        task_exchange: str = wire.TASK_EXCHANGE,
        task_queue: str = wire.TASK_QUEUE,
        task_prefetch_size: int = wire.TASK_PREFETCH_SIZE,
        task_prefetch_count: int = wire.TASK_PREFETCH_DEFAULT,
        encoder: Encoder | None = None,
        decoder: Decoder | None = None,
        testing_mode: bool = False,
    ) -> None:
        if isinstance(connection, str):
            connection = Core(ConnectionSettings.from_url(connection))
        elif not isinstance(connection, Core):
            adopted, _ = adopt(connection)  # an aio-pika connection: one to its URL
            if not isinstance(adopted, Core):
                raise ConfigurationError(
                    "connection must be a broker URL, a postage Core or an aio-pika "
                    "connection")
            connection = adopted
        self.core = connection
        self._message_exchange = message_exchange
        self._queue_expires = queue_expires
        self._task_exchange = task_exchange
        self._task_queue = task_queue
        self._task_prefetch_size = task_prefetch_size
        self._task_prefetch_count = task_prefetch_count
        self._codec = Codec(encoder, decoder)
        self._testing_mode = testing_mode
        self.close_timeout = 30.0
        # what subscribers receive as their communicator (the thread one sets itself)
        self.callback_comm: Any = self
        self._in_threads = False
        self._message_publisher: RmqPublisher | None = None
        self._message_subscriber: RmqSubscriber | None = None
        self._default_task_queue: RmqTaskQueue | None = None
        self._task_queues: list[RmqTaskQueue] = []
        self._close_callbacks: list[Callable[..., Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set by connect()
        self._opened = False
        self._closed = False
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> RmqCommunicator:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.disconnect()

    def __str__(self) -> str:
        return f"RMQCommunicator({redact_url(self.core.settings.urls[0])})"

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself when the connection opened."""
        return self.core.transport.server_properties if self.connected() else {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop driving this communicator."""
        return asyncio.get_running_loop() if self._loop is None else self._loop

    def add_close_callback(self, callback: Callable[..., Any], weak: bool = False) -> None:
        """``callback(communicator, exception)`` is called once the connection is closed
        (``weak`` is accepted for kiwiPy's signature; the callback is held strongly)."""
        self._close_callbacks.append(callback)

    def connected(self) -> bool:
        return self._opened and not self.core.closed

    async def connect(self) -> None:
        """Open the connection, if not already open."""
        if self.connected():
            return
        if self._closed:
            raise ConnectionError("the communicator was disconnected")
        await self.core.open()
        self.core.transport.add_reconnect_callback(self._on_reconnect)
        self._loop = asyncio.get_running_loop()
        self._opened = True

    def _on_reconnect(self) -> None:
        # Responses to RPCs sent before the connection was lost may never come (the
        # request may have been lost with its subscriber's exclusive queue). A task stays
        # in its durable queue, and its response waits in the reply queue, unless that
        # expired while the connection was down.
        if self._message_publisher is not None:
            self._message_publisher.fail_all(ConnectionError(
                "the connection was lost while waiting for the response; "
                "the call may or may not have been handled"))
        transport = self.core.transport
        outage = (transport.reconnected_at or 0.0) - (transport.lost_at or 0.0)
        for queue in self._task_queues:
            publisher = queue._publisher
            if not publisher.keeps_responses_through(outage):
                publisher.fail_all(ConnectionError(
                    f"the connection was lost for {outage:.0f} s, and the reply queue with "
                    "it: the task's response may have been lost (the task may or may not "
                    "have been handled)"))

    async def disconnect(self) -> None:
        """Stop the subscribers (letting running ones finish) and close the connection."""
        if not self.connected():
            return
        self._closed = True
        if self._message_subscriber is not None:
            await self._message_subscriber.disconnect(self.close_timeout)
        for queue in self._task_queues:
            await queue.disconnect()
        for publisher in self._publishers():
            publisher.fail_all(ConnectionError("the communicator was disconnected"))
        await self.core.close(self.close_timeout)
        for callback in self._close_callbacks:
            try:
                callback(self, None)
            except Exception:
                log.exception("close callback %r failed", callback)

    def _publishers(self) -> list[PublisherWithReplyQueue]:
        found: list[PublisherWithReplyQueue] = [q._publisher for q in self._task_queues]
        if self._message_publisher is not None:
            found.append(self._message_publisher)
        return found

    def _ensure_connected(self) -> None:
        if not self.connected():
            raise ConnectionError(
                "The communicator is not connected, call connect() or use in a context to "
                "establish a connection.")

    async def get_message_publisher(self) -> RmqPublisher:
        self._ensure_connected()
        async with self._lock:
            if self._message_publisher is None:
                publisher = RmqPublisher(self.core, self._message_exchange, self._codec,
                                         testing_mode=self._testing_mode)
                await publisher.connect()
                self._message_publisher = publisher
        return self._message_publisher

    async def get_message_subscriber(self) -> RmqSubscriber:
        self._ensure_connected()
        async with self._lock:
            if self._message_subscriber is None:
                subscriber = RmqSubscriber(self)
                await subscriber.connect()
                self._message_subscriber = subscriber
        return self._message_subscriber

    async def get_default_task_queue(self) -> RmqTaskQueue:
        self._ensure_connected()
        if self._default_task_queue is None:
            self._default_task_queue = await self.task_queue(
                self._task_queue, self._task_prefetch_size, self._task_prefetch_count)
        return self._default_task_queue

    async def task_queue(self, queue_name: str,
                         prefetch_size: int = wire.TASK_PREFETCH_SIZE,
                         prefetch_count: int = wire.TASK_PREFETCH_DEFAULT) -> RmqTaskQueue:
        """A task queue (declared if need be) of this communicator's task exchange."""
        self._ensure_connected()
        queue = RmqTaskQueue(self, exchange_name=self._task_exchange, queue_name=queue_name,
                             prefetch_size=prefetch_size, prefetch_count=prefetch_count)
        await queue.connect()
        self._task_queues.append(queue)
        return queue

    async def add_rpc_subscriber(self, subscriber: Callable[..., Any],
                                 identifier: Any = None) -> Any:
        return await (await self.get_message_subscriber()).add_rpc_subscriber(
            subscriber, identifier)

    async def remove_rpc_subscriber(self, identifier: Any) -> None:
        await (await self.get_message_subscriber()).remove_rpc_subscriber(identifier)

    async def add_task_subscriber(self, subscriber: Callable[..., Any],
                                  identifier: Any = None) -> Any:
        return await (await self.get_default_task_queue()).add_task_subscriber(
            subscriber, identifier)

    async def remove_task_subscriber(self, identifier: Any) -> None:
        await (await self.get_default_task_queue()).remove_task_subscriber(identifier)

    async def add_broadcast_subscriber(self, subscriber: Callable[..., Any],
                                       identifier: Any = None) -> Any:
        return await (await self.get_message_subscriber()).add_broadcast_subscriber(
            subscriber, identifier)

    async def remove_broadcast_subscriber(self, identifier: Any) -> None:
        await (await self.get_message_subscriber()).remove_broadcast_subscriber(identifier)

    async def rpc_send(self, recipient_id: Any, msg: Any) -> asyncio.Future[Any]:
        """Call RPC subscriber ``recipient_id``; once the broker has confirmed the
        request, return a future of the response. UnroutableError if nobody serves it."""
        return await (await self.get_message_publisher()).rpc_send(recipient_id, msg)

    async def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                             correlation_id: Any = None) -> bool:
        return await (await self.get_message_publisher()).broadcast_send(
            body, sender, subject, correlation_id)

    async def task_send(self, task: Any, no_reply: bool = False) -> asyncio.Future[Any] | None:
        """Queue ``task`` (persistent, mandatory); return a future of its result (None
        with ``no_reply``) once the broker has confirmed it."""
        return await (await self.get_default_task_queue()).task_send(task, no_reply)


async def async_connect(
    connection_params: str | Mapping[str, Any] | None = None,
    connection_factory: Any = None,
    message_exchange: str = wire.MESSAGE_EXCHANGE,
    queue_expires: int = wire.QUEUE_EXPIRES,
    task_exchange: str = wire.TASK_EXCHANGE,
    task_queue: str = wire.TASK_QUEUE,
    task_prefetch_size: int = wire.TASK_PREFETCH_SIZE,
    task_prefetch_count: int = wire.TASK_PREFETCH_DEFAULT,
    encoder: Encoder | None = None,
    decoder: Decoder | None = None,
    testing_mode: bool = False,
) -> RmqCommunicator:
    """A connected :class:`RmqCommunicator`. ``connection_factory`` is accepted for
    kiwiPy's signature: Postage always opens its own recovering connection."""
    url = connection_url(connection_params)
    comm = RmqCommunicator(
        Core(ConnectionSettings.from_url(url)), message_exchange=message_exchange,
        queue_expires=queue_expires, task_exchange=task_exchange, task_queue=task_queue,
        task_prefetch_size=task_prefetch_size, task_prefetch_count=task_prefetch_count,
        encoder=encoder, decoder=decoder, testing_mode=testing_mode)
    await comm.connect()
    return comm

