"""kiwiPy's blocking communicator (``kiwipy.rmq.RmqThreadCommunicator``): the asyncio
communicator run on Postage's blocking portal, its verbs declared from their asyncio twins
(:mod:`postage._blocking.facade`), with ``concurrent.futures`` futures. No messaging logic
lives here.

Plain-function subscribers run in worker threads (kiwiPy runs them on its loop thread):
they may block, and may call this communicator, without starving the connection.
"""

from __future__ import annotations

__all__ = ["RmqThreadCommunicator", "RmqThreadIncomingTask", "RmqThreadTaskQueue", "connect"]

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar

from ..._blocking.facade import Facade, blocking, blocking_future
from ..._blocking.futures import ReplyFuture
from ..._blocking.portal import BlockingPortal, default_portal
from ..._wire import kiwipy as wire
from .communicator import RmqCommunicator, async_connect
from .errors import CommunicatorClosed
from .local import Communicator
from .messages import Decoder, Encoder
from .tasks import RmqIncomingTask, RmqTaskQueue

T = TypeVar("T")

OPERATION_TIMEOUT = 60.0  # seconds a blocking call may take (declarations, confirms)


class ThreadFuture(ReplyFuture[Any]):
    """A concurrent future following an asyncio future of the portal's loop (light, see
    ``ReplyFuture``); an asyncio future it resolves to becomes one too (kiwiPy's nested
    futures). Cancelling it cancels the asyncio one."""

    def __call__(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None and asyncio.isfuture(
                done.result()):
            inner = done.result()
            nested = ThreadFuture(inner, self._portal)
            inner.add_done_callback(nested)
            if not self.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    self.set_result(nested)
            return
        super().__call__(done)


def to_thread_future(source: asyncio.Future[Any], portal: BlockingPortal
                     ) -> concurrent.futures.Future[Any]:
    """A :class:`ThreadFuture` of ``source`` (call on the loop thread)."""
    out = ThreadFuture(source, portal)
    source.add_done_callback(out)
    return out


def to_aio_future(source: concurrent.futures.Future[Any], target: asyncio.Future[Any],
                  loop: asyncio.AbstractEventLoop) -> None:
    """Copy ``source``'s outcome to ``target`` (on ``loop``) once it has one."""
    def copy(done: concurrent.futures.Future[Any]) -> None:
        def apply() -> None:
            if target.done():
                return
            if done.cancelled():
                target.cancel()
            elif done.exception() is not None:
                target.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                target.set_result(done.result())
        if not loop.is_closed():
            loop.call_soon_threadsafe(apply)

    source.add_done_callback(copy)


class _OnPortal(Facade):
    """The blocking verbs of this module: the communicator's facade (calls with a
    deadline, futures made on the loop), with nested futures, plain functions run on the
    loop, and async context managers and iterators driven from the caller's thread."""

    _timeout = OPERATION_TIMEOUT
    _follow = staticmethod(to_thread_future)

    def _now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn`` on the loop thread."""
        async def run() -> T:
            return fn(*args)
        return self._call(run)

    @contextlib.contextmanager
    def _context(self, manager: contextlib.AbstractAsyncContextManager[T]) -> Iterator[T]:
        value = self._call(manager.__aenter__)
        try:
            yield value
        except BaseException as exc:
            if not self._call(manager.__aexit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            self._call(manager.__aexit__, None, None, None)

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(iterator.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                self._call(aclose)


class RmqThreadCommunicator(Communicator, _OnPortal):
    """A RabbitMQ communicator whose connection lives on an event loop thread, so that
    heartbeats are never missed and the program may block as long as it wants."""

    TASK_TIMEOUT = 5.0
    _twin_name = "_communicator"

    @classmethod
    def connect(
        cls,
        connection_params: str | Mapping[str, Any] | None = None,
        connection_factory: Any = None,
        message_exchange: str = wire.MESSAGE_EXCHANGE,
        task_exchange: str = wire.TASK_EXCHANGE,
        task_queue: str = wire.TASK_QUEUE,
        task_prefetch_size: int = wire.TASK_PREFETCH_SIZE,
        task_prefetch_count: int = wire.TASK_PREFETCH_DEFAULT,
        encoder: Encoder | None = None,
        decoder: Decoder | None = None,
        testing_mode: bool = False,
        async_task_timeout: float = TASK_TIMEOUT,
    ) -> RmqThreadCommunicator:
        return cls(connection_params, connection_factory, message_exchange=message_exchange,
                   task_exchange=task_exchange, task_queue=task_queue,
                   task_prefetch_size=task_prefetch_size,
                   task_prefetch_count=task_prefetch_count, encoder=encoder, decoder=decoder,
                   testing_mode=testing_mode, async_task_timeout=async_task_timeout)

    def __init__(
        self,
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
        async_task_timeout: float = TASK_TIMEOUT,
    ) -> None:
        self._portal = default_portal()
        self._closed = False
        self._communicator: RmqCommunicator = self._call(
            async_connect, connection_params, connection_factory, message_exchange,
            queue_expires, task_exchange, task_queue, task_prefetch_size,
            task_prefetch_count, encoder, decoder, testing_mode)
        self._communicator.callback_comm = self
        self._communicator._in_threads = True

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._communicator.server_properties

    def loop(self) -> asyncio.AbstractEventLoop:
        return self._portal.loop

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The event loop of the communicator's thread, under kiwiPy's attribute name
        (plumpy's tests and AiiDA plugins reach for it: ``communicator._loop``)."""
        return self._portal.loop

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the communicator and free its resources; it cannot be used again."""
        if self._closed:
            return
        self._closed = True
        self._call(self._communicator.disconnect, bound=self._communicator.close_timeout + 5.0)

    def _guard(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the communicator is closed")

    _ensure_open = _guard

    def add_close_callback(self, callback: Callable[..., Any], weak: bool = False) -> None:
        self._ensure_open()
        self._communicator.add_close_callback(callback, weak)

    add_rpc_subscriber = blocking(RmqCommunicator.add_rpc_subscriber)
    remove_rpc_subscriber = blocking(RmqCommunicator.remove_rpc_subscriber)
    add_task_subscriber = blocking(RmqCommunicator.add_task_subscriber)
    remove_task_subscriber = blocking(RmqCommunicator.remove_task_subscriber)
    add_broadcast_subscriber = blocking(RmqCommunicator.add_broadcast_subscriber)
    remove_broadcast_subscriber = blocking(RmqCommunicator.remove_broadcast_subscriber)
    task_send = blocking_future(RmqCommunicator.task_send)
    rpc_send = blocking_future(RmqCommunicator.rpc_send)
    broadcast_send = blocking(RmqCommunicator.broadcast_send)

    def task_queue(self, queue_name: str, prefetch_size: int = wire.TASK_PREFETCH_SIZE,
                   prefetch_count: int = wire.TASK_PREFETCH_DEFAULT) -> RmqThreadTaskQueue:
        self._ensure_open()
        queue = self._call(self._communicator.task_queue, queue_name, prefetch_size,
                           prefetch_count)
        return RmqThreadTaskQueue(queue, self._portal)


class RmqThreadTaskQueue(_OnPortal):
    """A task queue of a :class:`RmqThreadCommunicator`."""

    _twin_name = "_task_queue"

    def __init__(self, task_queue: RmqTaskQueue, portal: BlockingPortal) -> None:
        self._task_queue = task_queue
        self._portal = portal

    def __iter__(self) -> Iterator[RmqThreadIncomingTask]:
        for task in self._iterate(self._task_queue.__aiter__()):
            yield RmqThreadIncomingTask(task, self._portal)

    task_send = blocking_future(RmqTaskQueue.task_send)
    add_task_subscriber = blocking(RmqTaskQueue.add_task_subscriber)

    def remove_task_subscriber(self, subscriber: Any) -> None:
        """Remove a subscriber, by its identifier or the callback itself (kiwiPy names
        this parameter differently from the asyncio queue's)."""
        self._call(self._task_queue.remove_task_subscriber, subscriber)

    @contextlib.contextmanager
    def next_task(self, timeout: float = 5.0, fail: bool = True, no_ack: bool = False
                  ) -> Iterator[RmqThreadIncomingTask | None]:
        with self._context(self._task_queue.next_task(no_ack=no_ack, fail=fail,
                                                      timeout=timeout)) as task:
            yield None if task is None else RmqThreadIncomingTask(task, self._portal)


class RmqThreadIncomingTask(_OnPortal):
    """A task taken from a queue by a blocking communicator."""

    def __init__(self, task: RmqIncomingTask, portal: BlockingPortal) -> None:
        self._task = task
        self._portal = portal

    @property
    def body(self) -> Any:
        return self._task.body

    @property
    def no_reply(self) -> bool:
        return self._task.no_reply

    @property
    def state(self) -> str:
        return self._task.state

    def process(self) -> concurrent.futures.Future[Any]:
        """A future whose outcome (set by you) is the task's."""
        return self._thread_outcome(self._now(self._task.process))

    def _thread_outcome(self, outcome: asyncio.Future[Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        to_aio_future(future, outcome, self._portal.loop)
        return future

    def requeue(self) -> None:
        """Put the task back in its queue (done when this returns)."""
        self._call(self._task.requeue)

    @contextlib.contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[Any]]:
        with self._context(self._task.processing()) as outcome:
            yield self._thread_outcome(outcome)


def connect(
    connection_params: str | Mapping[str, Any] | None = None,
    connection_factory: Any = None,
    message_exchange: str = wire.MESSAGE_EXCHANGE,
    task_exchange: str = wire.TASK_EXCHANGE,
    task_queue: str = wire.TASK_QUEUE,
    task_prefetch_size: int = wire.TASK_PREFETCH_SIZE,
    task_prefetch_count: int = wire.TASK_PREFETCH_DEFAULT,
    encoder: Encoder | None = None,
    decoder: Decoder | None = None,
    testing_mode: bool = False,
) -> RmqThreadCommunicator:
    """A connected :class:`RmqThreadCommunicator`."""
    return RmqThreadCommunicator.connect(
        connection_params=connection_params, connection_factory=connection_factory,
        message_exchange=message_exchange, task_exchange=task_exchange, task_queue=task_queue,
        task_prefetch_size=task_prefetch_size, task_prefetch_count=task_prefetch_count,
        encoder=encoder, decoder=decoder, testing_mode=testing_mode)
