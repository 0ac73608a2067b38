"""Task queues of the communicator: ``task_send`` and task subscribers, and how results and
errors of subscribers travel back (Postage result envelopes)."""

from __future__ import annotations

__all__ = ["AsyncTaskQueue", "EnvelopeReplies", "Subscriber", "find_subscriber"]

import asyncio
import datetime
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..._core.core import HandlingOptions, Subscription
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError, EncodingError
from ..._wire.delays import resolve_delay
from ..._wire.fingerprint import PRIVATE_FINGERPRINT
from . import wire as _wire

if TYPE_CHECKING:
    from .aio import AsyncCommunicator

Subscriber = Callable[..., Any]


class EnvelopeReplies:
    """Results and errors of a subscriber as Postage result envelopes (``name``: the RPC
    identifier or the task queue)."""

    def __init__(self, comm: AsyncCommunicator, name: str) -> None:
        self._core = comm.core
        self._name = name
        # who answered, without where it runs (pid, host, user) unless error_details
        # asks for server internals
        self._fingerprint = (comm._fingerprint if comm.core.error_details else
                             {k: v for k, v in comm._fingerprint.items()
                              if k not in PRIVATE_FINGERPRINT})
        self.content_type: str | None = comm.core.encoder.content_type

    def result(self, message: IncomingMessage, value: Any) -> bytes:
        return self._core.encode(_wire.success_envelope(self._name, value, self._fingerprint))

    def error(self, message: IncomingMessage, exc: BaseException) -> bytes:
        envelope = _wire.exception_envelope(self._name, exc, self._fingerprint,
                                            details=self._core.error_details)
        try:
            return self._core.encode(envelope)
        except EncodingError:  # a message that cannot be encoded: send its repr
            envelope["content"]["message"] = repr(str(exc))[:10_000]
            envelope["_reserved"] = {}
            return self._core.encode(envelope)


class AsyncTaskQueue:
    """A durable task queue: ``task_send`` and task subscribers. Make one with
    :meth:`AsyncCommunicator.task_queue`."""

    def __init__(self, comm: AsyncCommunicator, name: str, prefetch_count: int) -> None:
        self._comm = comm
        self.name = name
        self.prefetch_count = prefetch_count
        self._subscribers: dict[str, tuple[Subscriber, Subscription]] = {}

    async def _declare(self) -> None:
        core = self._comm.core
        opts = self._comm.options
        if opts.task_quorum:
            await core.declare_queue(self.name, quorum=True,
                                     delivery_limit=opts.task_delivery_limit)
        else:
            await core.declare_queue(self.name, durable=True)
        await core.bind(self.name, opts.task_exchange, self.name)

    async def task_send(self, task: Any, no_reply: bool = False, delay: float | None = None,
                        not_before: datetime.datetime | None = None,
                        ) -> asyncio.Future[Any] | None:
        """Queue ``task`` (persistent, mandatory) and return a future of its result once
        the broker has confirmed it; with ``no_reply``, return None after the confirm.
        ``delay`` (seconds) or ``not_before`` (a datetime): the task reaches the queue
        that much later (confirmed now, once stored on the broker)."""
        return await self._comm._send_task(self.name, task, no_reply,
                                           resolve_delay(delay, not_before))

    async def wait_for_subscriber(self, timeout: float = 30.0) -> None:
        """Return once a task subscriber (in any process) consumes this queue;
        DeliveryTimeout after ``timeout`` s."""
        await self._comm.core.wait_for_consumer(
            self.name, timeout, f"task subscriber on queue {self.name!r}")

    async def add_task_subscriber(self, subscriber: Subscriber,
                                  identifier: str | None = None) -> str:
        """Consume the queue with ``subscriber(comm, body)``; return its identifier.

        Its return value (or the result of a returned awaitable) is the task's result.
        If it raises, the task is retried; after ``task_max_attempts`` it goes to
        ``<queue>.dlq`` and the sender's future fails with RemoteError.
        Raising ``postage.Reject`` dead-letters the task at once.
        """
        if not callable(subscriber):
            raise TypeError("a task subscriber must be callable")
        identifier = identifier or uuid.uuid4().hex
        if identifier in self._subscribers:
            raise ConfigurationError(f"task subscriber {identifier!r} already exists")
        comm = self._comm
        comm._check_open()

        async def handler(message: IncomingMessage) -> Any:
            assert message.envelope is not None
            return await comm._invoke(subscriber, comm.callback_comm,
                                      _wire.request_body(message.envelope))

        # counts from the communicator's options, back-off from the connection's policy
        policy = replace(comm.core.retry_policy, max_attempts=comm.options.task_max_attempts,
                         max_redeliveries=comm.options.task_max_redeliveries)
        options = HandlingOptions(policy, envelope=True,
                                  replies=EnvelopeReplies(comm, self.name))
        subscription = await comm.core.consume(
            self.name, handler, options, prefetch_count=self.prefetch_count)
        self._subscribers[identifier] = (subscriber, subscription)
        return identifier

    async def remove_task_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop a subscriber (by identifier or the callback itself); tasks it is working on
        are finished first."""
        key = find_subscriber(self._subscribers, identifier, lambda entry: entry[0])
        _, subscription = self._subscribers.pop(key)
        await subscription.cancel(self._comm.options.close_timeout)

    async def _cancel_all(self) -> None:
        for key in list(self._subscribers):
            await self.remove_task_subscriber(key)


def find_subscriber(table: Mapping[str, Any], key: Any, callback_of: Callable[[Any], Any]) -> str:
    if isinstance(key, str) and key in table:
        return key
    for identifier, entry in table.items():
        if callback_of(entry) is key:
            return identifier
    raise ValueError(f"no subscriber {key!r}")
