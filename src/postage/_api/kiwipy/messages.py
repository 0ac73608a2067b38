"""What the kiwiPy communicator's parts share: the codec, calling subscribers (and their
futures), the publisher with a reply queue, and the replies of subscriptions."""

from __future__ import annotations

__all__ = ["Cancelled", "Codec", "PublisherWithReplyQueue", "YamlReplies", "call_subscriber",
           "settle", "was_cancelled"]

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..._core.middleware import IncomingMessage
from ..._core.workers import is_async_callable
from ..._exceptions import (
    DecodingError,
    EncodingError,
    PostageError,
    PublishNacked,
    Reject,
    Unroutable,
)
from ..._transport import Delivery
from ..._wire import kiwipy as wire
from ..._wire.properties import PERSISTENT, Properties
from .errors import RemoteException, TaskRejected, UnroutableError, aio_pika_compatible

if TYPE_CHECKING:
    from ..._core.core import Core
    from ..._core.workers import WorkerPool

log = logging.getLogger("postage.kiwipy")

Encoder = Callable[[Any], Any]
Decoder = Callable[[bytes], Any]


INLINE_DECODE = 64 * 1024
"""Bodies up to this size are decoded on the event loop; larger ones in a worker thread
(YAML is slow to read: 16 MiB took a minute of CPU, during which the loop served nothing)."""
MAX_YAML = 8 * 1024 * 1024
"""The largest body the default (YAML) decoder reads: a DecodingError beyond."""


class Codec:
    """The user's ``encoder``/``decoder`` (kiwiPy's arguments), with Postage's errors."""

    def __init__(self, encoder: Encoder | None, decoder: Decoder | None) -> None:
        self._encode = encoder or wire.yaml_encode
        self._decode = decoder or wire.yaml_decode
        self._max_size = MAX_YAML if decoder is None else None

    async def decode_off_loop(self, body: bytes, workers: WorkerPool) -> Any:
        """:meth:`decode`, in a worker thread when ``body`` is large."""
        if len(body) <= INLINE_DECODE:
            return self.decode(body)
        return await workers.run(self.decode, body)

    def encode(self, value: Any) -> bytes:
        try:
            body = self._encode(value)
        except PostageError:
            raise
        except Exception as exc:
            raise EncodingError(f"the encoder failed: {type(exc).__name__}: {exc}") from None
        return body.encode() if isinstance(body, str) else bytes(body)

    def decode(self, body: bytes) -> Any:
        if self._max_size is not None and len(body) > self._max_size:
            raise DecodingError(f"a YAML body of {len(body)} bytes is over the limit of "
                                f"{self._max_size}")
        try:
            return self._decode(body)
        except PostageError:
            raise
        except Exception as exc:
            raise DecodingError(f"the decoder failed: {type(exc).__name__}: {exc}") from None


def is_future(value: Any) -> bool:
    return asyncio.isfuture(value) or isinstance(value, concurrent.futures.Future)


async def call_subscriber(subscriber: Callable[..., Any], args: tuple[Any, ...],
                          core: Core, in_thread: bool) -> Any:
    """Call ``subscriber(*args)``: ``async def`` on the loop; a plain function in a worker
    thread with ``in_thread`` (a blocking communicator's), else on the loop (kiwiPy's
    asyncio communicator does so). A returned coroutine is awaited; a future is returned
    as it is (see :func:`settle`)."""
    if in_thread and not is_async_callable(subscriber):
        result = await core.run_sync(subscriber, *args)
    else:
        result = subscriber(*args)
    if inspect.iscoroutine(result):
        result = await result
    return result


async def settle(result: Any, pending: Callable[[], Awaitable[None]] | None) -> Any:
    """The final value of a subscriber's result: while it is a future (asyncio or
    concurrent), tell the caller it is pending (``pending``) and wait for it."""
    while is_future(result):
        if pending is not None:
            await pending()
        awaited = result if asyncio.isfuture(result) else asyncio.wrap_future(result)
        result = await awaited
    return result


def was_cancelled() -> bool:
    """True if the running task itself is being cancelled (not a future it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def original(exc: BaseException) -> BaseException:
    """The subscriber's exception behind a ``Reject`` raised for it."""
    if isinstance(exc, Reject) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


class YamlReplies:
    """Responses of RPC and task subscribers, in kiwiPy's form (``host`` on tasks); none
    for a task sent with ``no_reply``."""

    content_type: str | None = None

    def __init__(self, codec: Codec, *, host: bool) -> None:
        self._codec = codec
        self._host = host

    def body(self, response: dict[str, Any]) -> bytes:
        if self._host:
            response = {**response, wire.HOST_KEY: wire.host_info()}
        return self._codec.encode(response)

    def result(self, message: IncomingMessage, value: Any) -> bytes | None:
        if message.state.get("no_reply"):
            return None
        if isinstance(value, Cancelled):
            return self.body(wire.cancelled_response(value.message))
        if isinstance(value, Failed):  # a task whose subscriber raised
            return self.body(wire.exception_response(value.error))
        return self.body(wire.result_response(value))

    def error(self, message: IncomingMessage, exc: BaseException) -> bytes | None:
        if message.state.get("no_reply"):
            return None
        return self.body(wire.exception_response(original(exc)))

    async def send(self, core: Core, request: Delivery, response: dict[str, Any]) -> None:
        """Send ``response`` to the request's ``reply_to`` outside the pipeline's one
        reply (a "pending" one, or a pulled task's outcome); the core echoes the
        correlation id. No content type, as kiwiPy."""
        await core.reply(request, self.body(response), Properties())

    def pending_sender(self, core: Core, request: Delivery) -> Callable[[], Awaitable[None]]:
        """What :func:`settle` calls to tell the caller a result is still to come."""
        return functools.partial(self.send, core, request, wire.pending_response())


class Failed:
    """A task's outcome when its subscriber raised: the exception is its answer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Cancelled:
    """What a subscriber whose future was cancelled answers (``{cancelled: message}``)."""

    def __init__(self, message: str | None) -> None:
        self.message = message


def translate_publish_error(exc: PostageError) -> PostageError:
    """kiwiPy's exception for a failed publish (also aio-pika's, where kiwiPy lets that
    through and aio-pika is imported)."""
    if isinstance(exc, Unroutable):
        return aio_pika_compatible(UnroutableError(str(exc)))
    if isinstance(exc, PublishNacked):
        return TaskRejected(str(exc))
    return aio_pika_compatible(exc)


_ABANDONED_KEPT = 10_000


class PublisherWithReplyQueue:
    """Publishes on one exchange and waits for responses on a reply queue of its own
    (``<exchange>-reply-<uuid>``, exclusive, bound to the exchange under its name).

    A response ``{pending: ...}`` resolves the caller's future to a new future, which the
    next response with that correlation id resolves (kiwiPy's nested futures). A future
    the caller cancels is forgotten.
    """

    def __init__(self, core: Core, exchange: str, codec: Codec, *, testing_mode: bool) -> None:
        self.core = core
        self.exchange = exchange
        self.codec = codec
        self.testing_mode = testing_mode
        self.reply_queue = ""
        self._awaiting: dict[str, asyncio.Future[Any]] = {}
        # correlation ids of calls their callers cancelled, newest last: a response still
        # comes for them (the request cannot be taken back) and is dropped without a warning
        self._abandoned: dict[str, None] = {}
        self._connected = False

    async def connect(self) -> None:
        if self._connected:
            return
        core = self.core
        await core.declare_exchange(self.exchange, "topic", auto_delete=self.testing_mode)
        name = f"{self.exchange}-reply-{uuid.uuid4()}"
        # Not exclusive: the queue outlives a lost connection for REPLY_QUEUE_EXPIRES, so
        # that a response sent meanwhile waits for its caller (testing mode: exclusive,
        # gone with the connection, as in kiwiPy).
        testing = self.testing_mode
        await core.declare_queue(name, durable=not testing, exclusive=testing,
                                 auto_delete=testing,
                                 arguments={"x-expires": wire.REPLY_QUEUE_EXPIRES})
        await core.bind(name, self.exchange, name)
        # acked once read: a response in flight when the connection drops comes again
        await core.consume_raw(name, self._on_response)
        self.reply_queue = name
        self._connected = True

    def keeps_responses_through(self, outage: float) -> bool:
        """Did responses sent during a loss of the connection of ``outage`` seconds wait
        in the reply queue? (Not if it expired meanwhile, or went with the connection.)"""
        return not self.testing_mode and outage < wire.REPLY_QUEUE_EXPIRES / 1000 - 5

    async def publish(self, body: bytes, routing_key: str, props: Properties, *,
                      mandatory: bool = True, reply: asyncio.Future[Any] | None = None,
                      ) -> None:
        """Publish (confirmed); with ``reply``, as a request whose response resolves it
        (what middleware such as tracing sees)."""
        try:
            await self.core.publish(self.exchange, routing_key, body, props,
                                    mandatory=mandatory,
                                    kind="publish" if reply is None else "request",
                                    reply=reply)
        except PostageError as exc:
            raise translate_publish_error(exc) from None

    def request_properties(self, *, persistent: bool = False) -> Properties:
        """Properties of a request: a new correlation id, this publisher's reply queue."""
        return Properties(correlation_id=self.core.new_correlation_id(),
                          reply_to=self.reply_queue,
                          delivery_mode=PERSISTENT if persistent else None)

    async def publish_expect_response(self, body: bytes, routing_key: str, *,
                                      persistent: bool = False) -> asyncio.Future[Any]:
        props = self.request_properties(persistent=persistent)
        cid = props.correlation_id
        assert cid is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._expect(cid, future)
        try:
            await self.publish(body, routing_key, props, reply=future)
        except BaseException:
            self._awaiting.pop(cid, None)
            future.cancel()
            raise
        return future

    def _expect(self, cid: str, future: asyncio.Future[Any]) -> None:
        self._awaiting[cid] = future
        future.add_done_callback(functools.partial(self._forget, cid))

    def _forget(self, cid: str, done: asyncio.Future[Any]) -> None:
        """A future the caller cancelled waits for nothing any more."""
        if done.cancelled() and self._awaiting.get(cid) is done:
            del self._awaiting[cid]
            self._abandoned[cid] = None
            if len(self._abandoned) > _ABANDONED_KEPT:
                del self._abandoned[next(iter(self._abandoned))]

    def fail_all(self, error: Exception) -> None:
        """Fail every future still waiting for a response."""
        awaiting, self._awaiting = self._awaiting, {}
        for future in awaiting.values():
            if not future.done():
                future.set_exception(error)

    async def _on_response(self, delivery: Delivery) -> None:
        # Resolved before awaiting anything: each delivery runs in a task of its own,
        # and a "pending" response must be seen before the result that follows it.
        self._resolve(delivery)
        await delivery.ack()

    def _resolve(self, delivery: Delivery) -> None:
        cid = delivery.correlation_id
        future = self._awaiting.pop(cid, None) if cid is not None else None
        if future is None or future.done():
            if cid in self._abandoned or delivery.redelivered:
                log.debug("response to cancelled call (or seen before) %r dropped", cid)
            else:
                log.warning("response with unknown correlation id %r dropped", cid)
            return
        try:
            response = wire.parse_response(self.codec.decode(delivery.body))
        except PostageError as exc:
            future.set_exception(exc)
            return
        if response.kind == wire.CANCELLED_KEY:
            future.cancel()
        elif response.kind == wire.EXCEPTION_KEY:
            future.set_exception(RemoteException(response.value))
        elif response.kind == wire.RESULT_KEY:
            future.set_result(response.value)
        else:  # pending: another response for this correlation id follows
            following: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            assert cid is not None
            self._expect(cid, following)
            future.set_result(following)
