"""The broadcast subscribers of a communicator: one exclusive queue bound to the broadcast
exchange while there are any, and each broadcast handed to every subscriber whose filter
lets it through, one broadcast at a time (so they are seen in order)."""

from __future__ import annotations

__all__ = ["BroadcastReceiver"]

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from ..._core.core import HandlingOptions, Subscription
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError, PostageError
from . import wire as _wire
from .filters import BroadcastFilter
from .tasks import Subscriber, find_subscriber

if TYPE_CHECKING:
    from .aio import AsyncCommunicator

log = logging.getLogger("postage.communicator")


class BroadcastReceiver:
    """The broadcast side of one :class:`~.aio.AsyncCommunicator`."""

    def __init__(self, comm: AsyncCommunicator) -> None:
        self._comm = comm
        self.subscribers: dict[str, Subscriber | BroadcastFilter] = {}
        self.queue: str | None = None
        self.consumer: Subscription | None = None
        self._lock = asyncio.Lock()
        self._order = asyncio.Lock()

    async def add(self, subscriber: Subscriber | BroadcastFilter,
                  identifier: str | None = None) -> str:
        if not callable(subscriber):
            raise TypeError("a broadcast subscriber must be callable")
        identifier = identifier or uuid.uuid4().hex
        async with self._lock:
            if identifier in self.subscribers:
                raise ConfigurationError(f"broadcast subscriber {identifier!r} already exists")
            if self.consumer is None:
                await self._start()
            self.subscribers[identifier] = subscriber
        return identifier

    async def remove(self, identifier: str | Subscriber) -> None:
        async with self._lock:
            key = find_subscriber(self.subscribers, identifier, lambda entry: entry)
            del self.subscribers[key]
            if not self.subscribers:
                await self._stop()

    async def _start(self) -> None:
        comm = self._comm
        await comm._declare_exchanges()
        queue = f"{comm.options.broadcast_exchange}.{uuid.uuid4().hex}"
        core = comm.core
        await core.declare_queue(queue, exclusive=True, auto_delete=True)
        await core.bind(queue, comm.options.broadcast_exchange, "#")
        # Broadcasts are not retried: the queue is this communicator's own and temporary;
        # a failing subscriber is logged and the others still get it. An undecodable one
        # goes to one durable ``<broadcast exchange>.dlq`` (a DLQ per communicator would
        # outlive its queue forever) and reaches no subscriber.
        options = HandlingOptions(errors="log", envelope=True,
                                  dead_letter_queue=f"{comm.options.broadcast_exchange}.dlq")
        self.consumer = await core.consume(
            queue, self._handle, options,
            prefetch_count=comm.options.broadcast_prefetch_count)
        self.queue = queue

    async def _stop(self) -> None:
        consumer, queue = self.consumer, self.queue
        self.consumer = self.queue = None
        if consumer is not None:
            await consumer.cancel(self._comm.options.close_timeout)
        if queue is not None:
            with contextlib.suppress(PostageError):
                await self._comm.core.delete_queue(queue)

    async def _handle(self, message: IncomingMessage) -> None:
        # One broadcast at a time (the lock is fair), so subscribers see them in order.
        assert message.envelope is not None
        body, sender, subject, msg_id = _wire.parse_broadcast(
            message.envelope, message.delivery.correlation_id)
        async with self._order:
            calls = []
            for identifier, subscriber in list(self.subscribers.items()):
                target = subscriber
                if isinstance(subscriber, BroadcastFilter):
                    try:
                        if subscriber.is_filtered(sender, subject):
                            continue
                    except Exception:  # a filter value whose == fails on odd input
                        log.exception("broadcast filter of %r failed; skipped", identifier)
                        continue
                    target = subscriber.subscriber
                calls.append(self._run(identifier, target, body, sender, subject, msg_id))
            if calls:
                await asyncio.gather(*calls)

    async def _run(self, identifier: str, subscriber: Subscriber, *args: Any) -> None:
        try:
            await self._comm._invoke(subscriber, self._comm.callback_comm, *args)
        except Exception:
            log.exception("broadcast subscriber %r raised", identifier)
