"""kiwiPy's task queues on a Postage core: push (subscribers) and pull (``next_task``).

A task is ``(task, no_reply)`` on the task exchange, routed to the queue of its name. A
subscriber's result (or exception) is the response; a subscriber raising ``TaskRejected``
passes the task to the next subscriber, and a task every subscriber rejects is sent back to
the end of its queue for other processes, at most ``TASK_MAX_REJECTIONS`` times, then to
``<queue>.dlq``. A task whose subscriber raised is answered with the exception, as in
kiwiPy's protocol (its sender gets ``RemoteException``), logged and acked: the exception is
its outcome, and it is not retried (kiwiPy does not retry either). With
``RmqTaskSubscriber.failed_tasks = "dead-letter"`` it also goes to ``<queue>.dlq``. A task
the broker redelivers because its consumer died is counted and dead-lettered like any
other, and so is one that cannot be decoded.
"""

from __future__ import annotations

__all__ = [
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqIncomingTask",
    "RmqTaskPublisher",
    "RmqTaskQueue",
    "RmqTaskSubscriber",
]

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..._core.core import Core, HandlingOptions, Subscription
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError, DecodingError, PostageError
from ..._exceptions import ConnectionError as PostageConnectionError
from ..._settings import ConnectionSettings
from ..._transport import Delivery
from ..._wire import kiwipy as wire
from .errors import DuplicateSubscriberIdentifier, InvalidStateError, QueueEmpty, TaskRejected
from .messages import (
    Codec,
    Failed,
    PublisherWithReplyQueue,
    YamlReplies,
    call_subscriber,
    settle,
    was_cancelled,
)

if TYPE_CHECKING:
    from .communicator import RmqCommunicator

log = logging.getLogger("postage.kiwipy")

TASK_PENDING = "pending"
TASK_FINISHED = "finished"
TASK_PROCESSING = "processing"
TASK_REQUEUED = "requeued"
TASK_MAX_REJECTIONS = 10
FAILED_TASKS = ("answer", "dead-letter")  # what RmqTaskSubscriber.failed_tasks may be


class SubscriberFailed(PostageError):
    """A task subscriber raised (the task is answered with it, not retried)."""


class Adopted:
    """The lifetime of a core made here from an aio-pika connection: opened once by the
    first part that needs it, closed by its owner. Nothing to do for a communicator or a
    Core the caller passed (its caller opens and closes it)."""

    def __init__(self, core: Core | None = None) -> None:
        self._core = core
        self._opened = False

    async def open(self) -> None:
        if self._core is not None and not self._opened:
            self._opened = True
            await self._core.open()

    async def close(self, timeout: float) -> None:
        if self._core is not None and self._opened:
            self._opened = False
            await self._core.close(timeout)


def adopt(connection: Any) -> tuple[Any, Adopted]:
    """``connection`` as a communicator or a Core, and the lifetime of one made here:
    kiwiPy's users pass an aio-pika connection, for which Postage opens a connection of
    its own to the same URL (credentials, host, virtual host and the URL's query; not an
    ``ssl_context`` object)."""
    from .communicator import RmqCommunicator  # (the communicator imports this module)

    if isinstance(connection, RmqCommunicator | Core):
        return connection, Adopted()
    url = getattr(connection, "url", None)
    if url is not None and callable(getattr(connection, "channel", None)):
        core = Core(ConnectionSettings.from_url(str(url)))
        return core, Adopted(core)
    raise ConfigurationError(
        f"connection must be a postage.kiwipy communicator, a Core or an aio-pika "
        f"connection, not {type(connection).__name__}")


class _Context:
    """What the parts of a task queue share: the core, the codec, how subscribers run,
    and the core's lifetime when it is this part's own (made from an aio-pika connection)."""

    def __init__(self, connection: Any, encoder: Any, decoder: Any,
                 testing_mode: bool) -> None:
        from .communicator import RmqCommunicator  # (the communicator imports this module)

        connection, self.adopted = adopt(connection)
        if isinstance(connection, RmqCommunicator):
            self.core = connection.core
            self.codec = connection._codec if encoder is decoder is None else Codec(
                encoder, decoder)
            self.comm: Any = connection
            self.testing_mode = connection._testing_mode or testing_mode
        else:
            self.core = connection
            self.codec = Codec(encoder, decoder)
            self.comm = None
            self.testing_mode = testing_mode

    @property
    def callback_comm(self) -> Any:
        return None if self.comm is None else self.comm.callback_comm

    @property
    def in_threads(self) -> bool:
        return self.comm is not None and self.comm._in_threads

    @property
    def close_timeout(self) -> float:
        return 30.0 if self.comm is None else float(self.comm.close_timeout)

    async def open(self) -> None:
        """Open the core if it is this part's own (once)."""
        await self.adopted.open()

    async def close(self) -> None:
        await self.adopted.close(self.close_timeout)


class RmqTaskPublisher(PublisherWithReplyQueue):
    """Sends tasks to one queue and waits for their results."""

    def __init__(self, connection: RmqCommunicator | Core, queue_name: str = wire.TASK_QUEUE,
                 exchange_name: str = wire.MESSAGE_EXCHANGE, exchange_params: Any = None,
                 encoder: Any = None, decoder: Any = None, confirm_deliveries: bool = True,
                 testing_mode: bool = False) -> None:
        context = _Context(connection, encoder, decoder, testing_mode)
        super().__init__(context.core, exchange_name, context.codec,
                         testing_mode=context.testing_mode)
        self._ctx = context
        self._task_queue_name = queue_name

    async def connect(self) -> None:
        await self._ctx.open()
        await super().connect()

    async def disconnect(self) -> None:
        """Fail the futures still waiting; close the connection if it is this one's own."""
        self.fail_all(PostageConnectionError("the task publisher was disconnected"))
        await self._ctx.close()

    async def task_send(self, task: Any, no_reply: bool = False) -> asyncio.Future[Any] | None:
        """Send ``task`` (persistent, mandatory); a future of its result once confirmed,
        or None with ``no_reply``."""
        body = self.codec.encode((task, no_reply))
        if no_reply:
            await self.publish(body, self._task_queue_name,
                               self.request_properties(persistent=True))
            return None
        return await self.publish_expect_response(body, self._task_queue_name,
                                                  persistent=True)


class RmqTaskSubscriber:
    """Consumes one task queue: push subscribers, or pull with :meth:`next_task`."""

    failed_tasks = "answer"
    """What becomes of a task whose subscriber raised (for every task queue of the process
    when set on this class). ``"answer"`` (kiwiPy's protocol): the exception is the task's
    outcome; its sender gets it (unless it sent the task with ``no_reply``), it is logged
    with its traceback, and the task is acked. So a long-running program whose tasks end
    in an exception by design (a killed AiiDA process, say) keeps no queue of them.
    ``"dead-letter"``: the task also goes to ``<queue>.dlq`` with the error in its headers,
    for ``postage dlq``."""

    def __init__(self, connection: RmqCommunicator | Core,
                 exchange_name: str = wire.MESSAGE_EXCHANGE,
                 queue_name: str = wire.TASK_QUEUE, testing_mode: bool = False,
                 decoder: Any = None, encoder: Any = None, exchange_params: Any = None,
                 prefetch_size: int = wire.TASK_PREFETCH_SIZE,
                 prefetch_count: int = wire.TASK_PREFETCH_DEFAULT) -> None:
        self._ctx = _Context(connection, encoder, decoder, testing_mode)
        self._core = self._ctx.core
        self._exchange = exchange_name
        self._queue = queue_name
        self._prefetch_count = prefetch_count
        self._replies = YamlReplies(self._ctx.codec, host=True)
        self._subscribers: dict[Any, Callable[..., Any]] = {}
        self._subscription: Subscription | None = None
        self._connected = False

    @property
    def queue_name(self) -> str:
        return self._queue

    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def connect(self) -> None:
        if self._connected:
            return
        await self._ctx.open()
        testing = self._ctx.testing_mode
        arguments: dict[str, Any] = {"x-message-ttl": wire.TASK_MESSAGE_TTL}
        if testing:
            arguments["x-expires"] = wire.TEST_QUEUE_EXPIRES
        await self._core.declare_exchange(self._exchange, "topic", auto_delete=testing)
        await self._core.declare_queue(self._queue, durable=not testing, arguments=arguments)
        await self._core.bind(self._queue, self._exchange, self._queue)
        self._connected = True

    async def disconnect(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.cancel(self._ctx.close_timeout)
        await self._ctx.close()

    # -- push -------------------------------------------------------------------------

    async def add_task_subscriber(self, subscriber: Callable[..., Any],
                                  identifier: Any = None) -> Any:
        identifier = identifier or uuid.uuid4().hex
        self._dead_letters_failures()  # a wrong setting fails here, not at the first failure
        if identifier in self._subscribers:
            raise DuplicateSubscriberIdentifier(f"Task identifier '{identifier}'")
        self._subscribers[identifier] = subscriber
        if self._subscription is None:
            policy = replace(self._core.retry_policy, max_attempts=TASK_MAX_REJECTIONS,
                             no_retry=(SubscriberFailed,))
            options = HandlingOptions(policy, replies=self._replies)
            self._subscription = await self._core.consume(
                self._queue, self._on_task, options, prefetch_count=self._prefetch_count)
        return identifier

    async def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a subscriber, by its identifier (or the callback itself)."""
        if identifier not in self._subscribers:
            identifier = next((key for key, callback in self._subscribers.items()
                               if callback is identifier), identifier)
        try:
            del self._subscribers[identifier]
        except KeyError:
            raise ValueError(f"Unknown task subscriber '{identifier}'") from None
        if not self._subscribers:
            await self.disconnect()

    async def _on_task(self, message: IncomingMessage) -> Any:
        task, no_reply = await self._decode(message.body)
        message.state["no_reply"] = no_reply
        pending = None if no_reply else self._replies.pending_sender(self._core,
                                                                     message.delivery)
        for subscriber in list(self._subscribers.values()):
            try:
                result = await call_subscriber(subscriber, (self._ctx.callback_comm, task),
                                               self._core, self._ctx.in_threads)
                return await settle(result, pending)
            except TaskRejected:
                continue
            except asyncio.CancelledError:
                if was_cancelled():
                    raise
                continue  # the subscriber cancelled its future: it declines the task
            except Exception as exc:
                failure = SubscriberFailed(f"{type(exc).__name__}: {exc}")
                if self._dead_letters_failures():
                    raise failure from exc
                self._log_failure(exc)
                return Failed(failure)
        raise TaskRejected("every task subscriber of this process rejected the task")

    def _dead_letters_failures(self) -> bool:
        if self.failed_tasks not in FAILED_TASKS:
            raise ConfigurationError(
                f"failed_tasks must be one of {', '.join(FAILED_TASKS)}: "
                f"{self.failed_tasks!r}")
        return self.failed_tasks == "dead-letter"

    def _log_failure(self, exc: BaseException) -> None:
        log.error("a subscriber of task queue %r raised; the exception is the task's "
                  "answer (failed_tasks=%r)", self._queue, self.failed_tasks,
                  exc_info=(type(exc), exc, exc.__traceback__))

    async def _decode(self, body: bytes) -> tuple[Any, bool]:
        """(task, no_reply) of a task body; DecodingError if it is not one."""
        return wire.parse_task(
            await self._ctx.codec.decode_off_loop(body, self._core.workers))

    # -- pull -------------------------------------------------------------------------

    async def _take(self, timeout: float) -> RmqIncomingTask | None:
        delivery = await self._core.get(self._queue, timeout=max(timeout, 0.1))
        if delivery is None:
            return None
        try:
            task, no_reply = await self._decode(delivery.body)
        except DecodingError as exc:
            await self._core.move_to_dead_letters(delivery, self._queue, f"{self._queue}.dlq",
                                                  "undecodable", str(exc))
            raise
        return RmqIncomingTask(self, delivery, task, no_reply)

    @contextlib.asynccontextmanager
    async def next_task(self, no_ack: bool = False, fail: bool = True,
                        timeout: float = wire.TASK_FETCH_TIMEOUT,
                        ) -> AsyncIterator[RmqIncomingTask | None]:
        """The next task of the queue (QueueEmpty if there is none, or None with
        ``fail=False``). Leaving the block without processing it puts it back."""
        self._dead_letters_failures()  # a wrong setting fails here, not at the first failure
        await asyncio.sleep(0)  # let pending requeues run first
        task = await self._take(timeout)
        if task is None:
            if fail:
                raise QueueEmpty(f"no task in queue '{self._queue}'")
            yield None
            return
        if no_ack:
            await task._delivery.ack()
        try:
            yield task
        finally:
            if task.state == TASK_PENDING:
                await task.requeue()

    async def __aiter__(self) -> AsyncIterator[RmqIncomingTask]:
        taken: list[RmqIncomingTask] = []
        try:
            while True:
                task = await self._take(1.0)
                if task is None:
                    return
                taken.append(task)
                yield task
        finally:
            for task in taken:
                if task.state == TASK_PENDING:
                    await task.requeue()

    async def _finish(self, task: RmqIncomingTask, outcome: asyncio.Future[Any]) -> None:
        delivery = task._delivery
        try:
            value = outcome.result()
        except Exception as exc:
            if self._dead_letters_failures():
                await self._core.move_to_dead_letters(
                    delivery, self._queue, f"{self._queue}.dlq", "handler-failed",
                    f"{type(exc).__name__}: {exc}")
            else:
                self._log_failure(exc)
                await delivery.ack()
            response = wire.exception_response(exc)
        else:
            await delivery.ack()
            response = wire.result_response(value)
        if not task.no_reply and delivery.reply_to:
            await self._replies.send(self._core, delivery, response)


class RmqIncomingTask:
    """A task taken from a queue: :meth:`process` it, or :meth:`requeue` it."""

    def __init__(self, subscriber: RmqTaskSubscriber, delivery: Delivery, body: Any,
                 no_reply: bool) -> None:
        self._subscriber = subscriber
        self._delivery = delivery
        self._body = body
        self._no_reply = no_reply
        self._state = TASK_PENDING
        self._outcome_ref: weakref.ref[asyncio.Future[Any]] | None = None
        self._loop = asyncio.get_running_loop()
        self._finishing: asyncio.Task[None] | None = None

    @property
    def body(self) -> Any:
        return self._body

    @property
    def no_reply(self) -> bool:
        return self._no_reply

    @property
    def state(self) -> str:
        return self._state

    def _check(self, *allowed: str) -> None:
        if self._state not in allowed:
            raise InvalidStateError(f"The task is {self._state}")

    def process(self) -> asyncio.Future[Any]:
        """Start processing: the task is done when the returned future is (its result or
        exception is the response). A future dropped unresolved puts the task back."""
        self._check(TASK_PENDING)
        self._state = TASK_PROCESSING
        outcome: asyncio.Future[Any] = self._loop.create_future()
        outcome.add_done_callback(self._on_outcome)
        self._outcome_ref = weakref.ref(outcome, self._outcome_dropped)
        return outcome

    async def requeue(self) -> None:
        """Put the task back at the head of its queue."""
        self._check(TASK_PENDING, TASK_PROCESSING)
        self._state = TASK_REQUEUED
        self._outcome_ref = None
        await self._delivery.nack(requeue=True)

    @contextlib.asynccontextmanager
    async def processing(self) -> AsyncIterator[asyncio.Future[Any]]:
        """Process within a block: set the outcome's result (or raise) inside it; a block
        left with the outcome unset puts the task back."""
        self._check(TASK_PENDING)
        self._state = TASK_PROCESSING
        outcome: asyncio.Future[Any] = self._loop.create_future()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise
        finally:
            if outcome.done() and not outcome.cancelled():
                await self._done(outcome)
            else:
                await self.requeue()

    def _on_outcome(self, outcome: asyncio.Future[Any]) -> None:
        self._finishing = self._loop.create_task(self._done(outcome))

    async def _done(self, outcome: asyncio.Future[Any]) -> None:
        self._outcome_ref = None
        if outcome.cancelled():
            self._state = TASK_PENDING  # whoever took it chose not to process it
            return
        self._state = TASK_FINISHED
        await self._subscriber._finish(self, outcome)

    def _outcome_dropped(self, _ref: Any) -> None:
        if self._outcome_ref is None or self._state != TASK_PROCESSING:
            return
        self._outcome_ref = None
        self._state = TASK_REQUEUED
        with contextlib.suppress(RuntimeError):  # the loop is closed: the broker requeues
            self._loop.call_soon_threadsafe(
                lambda: self._loop.create_task(self._delivery.nack(requeue=True)))


class RmqTaskQueue:
    """A work queue you can both send to and take from: a publisher and a subscriber."""

    def __init__(self, connection: RmqCommunicator | Core,
                 exchange_name: str = wire.MESSAGE_EXCHANGE,
                 queue_name: str = wire.TASK_QUEUE, decoder: Any = None, encoder: Any = None,
                 exchange_params: Any = None, prefetch_size: int = wire.TASK_PREFETCH_SIZE,
                 prefetch_count: int = wire.TASK_PREFETCH_DEFAULT,
                 testing_mode: bool = False) -> None:
        # one connection for both parts (made here for an aio-pika connection)
        connection, self._adopted = adopt(connection)
        self._publisher = RmqTaskPublisher(
            connection, queue_name=queue_name, exchange_name=exchange_name, encoder=encoder,
            decoder=decoder, testing_mode=testing_mode)
        self._subscriber = RmqTaskSubscriber(
            connection, exchange_name=exchange_name, queue_name=queue_name,
            testing_mode=testing_mode, decoder=decoder, encoder=encoder,
            prefetch_size=prefetch_size, prefetch_count=prefetch_count)

    @property
    def queue_name(self) -> str:
        return self._subscriber.queue_name

    async def __aiter__(self) -> AsyncIterator[RmqIncomingTask]:
        async for task in self._subscriber:
            yield task

    async def task_send(self, task: Any, no_reply: bool = False) -> asyncio.Future[Any] | None:
        return await self._publisher.task_send(task, no_reply)

    async def add_task_subscriber(self, subscriber: Callable[..., Any],
                                  identifier: Any = None) -> Any:
        return await self._subscriber.add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: Any) -> None:
        await self._subscriber.remove_task_subscriber(identifier)

    @contextlib.asynccontextmanager
    async def next_task(self, no_ack: bool = False, fail: bool = True,
                        timeout: float = wire.TASK_FETCH_TIMEOUT,
                        ) -> AsyncIterator[RmqIncomingTask | None]:
        async with self._subscriber.next_task(no_ack=no_ack, fail=fail,
                                              timeout=timeout) as task:
            yield task

    async def connect(self) -> None:
        await self._adopted.open()
        await self._subscriber.connect()
        await self._publisher.connect()

    async def disconnect(self) -> None:
        await self._subscriber.disconnect()
        await self._adopted.close(30.0)
