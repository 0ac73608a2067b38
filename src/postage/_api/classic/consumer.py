"""GenericConsumer: the queues of an ``eqk`` declared, bound and consumed on the shared Core.

Each queue is consumed through the core's inbound pipeline with the consumer's decoding
rules (:meth:`GenericConsumer.handling_options`); queues can be bound and left at runtime.
"""

from __future__ import annotations

__all__ = ["GenericConsumer", "queue_spec"]

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from ..._blocking.facade import outer_deadline
from ..._core.core import Core, HandlingOptions, RetryPolicy, Subscription
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError
from ..._wire.encoding import Encoder, JsonEncoder, check_encoder
from ..._wire.properties import QueueSpec
from . import runtime as _runtime
from .messages import Exchange
from .producer import declare_exchange

log = logging.getLogger("postage.classic.processor")

QUEUE_FLAGS = frozenset({"durable", "exclusive", "auto_delete", "arguments"})
MessageCallback = Callable[[IncomingMessage], Awaitable[None]]


def queue_spec(queue: str | dict[str, Any]) -> QueueSpec:
    """The queue of an eqk: a queue name or ``{'name': ..., 'flags': {...}}``."""
    if isinstance(queue, str):
        return QueueSpec(queue)
    if isinstance(queue, dict) and isinstance(queue.get("name"), str):
        flags = dict(queue.get("flags") or {})
        unknown = set(flags) - QUEUE_FLAGS
        if unknown:
            raise ConfigurationError(f"unknown queue flags: {', '.join(sorted(unknown))}")
        return QueueSpec(
            queue["name"], bool(flags.get("durable", False)),
            bool(flags.get("exclusive", False)), bool(flags.get("auto_delete", False)),
            tuple(sorted(dict(flags.get("arguments") or {}).items())),
        )
    raise ConfigurationError(f"a queue is a name or {{'name', 'flags'}}, not {queue!r}")


def _pairs(eqk: Sequence[Any]) -> list[tuple[type[Exchange], Sequence[Any]]]:
    """``[(Exchange, [(queue, key), ...]), ...]``; the flat form of the README is accepted."""
    items = list(eqk)
    if items and isinstance(items[0], type):
        return [(items[i], items[i + 1]) for i in range(0, len(items), 2)]
    return [(exchange, qks) for exchange, qks in items]


class GenericConsumer:
    """Declares and binds the queues of ``eqk``; consumes them on the shared Core."""

    encoder_class: ClassVar[type] = JsonEncoder
    vhost: str | None = None
    hup: Any = None
    eqk: Sequence[Any] = []
    prefetch_count: ClassVar[int] = 1
    retry_policy: RetryPolicy = RetryPolicy(max_attempts=1)
    operation_timeout: ClassVar[float] = 30.0
    # Safe decoding: content types read besides the encoder's own (none by default),
    # and the body size limit (None: the connection's ``max_message_size``).
    accept_content_types: ClassVar[frozenset[str]] = frozenset()
    max_message_size: ClassVar[int | None] = None

    def __init__(self, eqk: Sequence[Any] | None = None, hup: Any = None,
                 vhost: str | None = None) -> None:
        if hup is not None:
            self.hup = hup
        if vhost:
            self.vhost = vhost
        self.core: Core = _runtime.shared_core(self.hup, self.vhost)
        self.encoder: Encoder = check_encoder(self.encoder_class())
        if eqk:
            self.eqk = eqk
        self.qk_list: list[tuple[str, str]] = []
        self._queues: dict[str, QueueSpec] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._active: set[str] = set()
        self._callback: MessageCallback | None = None
        self.add_eqk(self.eqk)

    def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return _runtime.portal().call(fn, timeout=outer_deadline(None, self.operation_timeout))

    def add_eqk(self, eqk: Sequence[Any]) -> None:
        for exchange, qk_list in _pairs(eqk):
            for queue, key in qk_list:
                self.queue_bind(exchange, queue, key)

    async def _declare_queue(self, decl: QueueSpec) -> None:
        if self._queues.get(decl.name) != decl:
            await self.core.declare_queue(
                decl.name, durable=decl.durable, exclusive=decl.exclusive,
                auto_delete=decl.auto_delete, arguments=dict(decl.arguments) or None)
            self._queues[decl.name] = decl

    async def _subscribe(self, name: str) -> None:
        callback = self._callback
        if callback is None or name in self._active:
            return
        self._active.add(name)

        async def on_message(message: IncomingMessage) -> None:
            # A queue left (or consuming stopped) while deliveries were on their way:
            # give them back to the broker for the other consumers.
            if name not in self._active or self._callback is None:
                await message.delivery.nack(requeue=True)
                return
            await callback(message)

        log.debug("consumer %s: consuming queue %s", type(self).__name__, name)
        try:
            self._subscriptions[name] = await self.core.consume(
                name, on_message, self.handling_options(), prefetch_count=self.prefetch_count)
        except BaseException:
            self._active.discard(name)
            raise

    def queue_bind(self, exchange_class: type[Exchange], queue: str | dict[str, Any],
                   key: str) -> None:
        """Declare ``exchange_class`` and ``queue``, bind them with ``key``; if consuming
        already, start consuming the queue too (works at runtime, from handlers)."""
        decl = queue_spec(queue)

        async def bind() -> None:
            log.debug("consumer %s: binding queue %s to %s with key %s",
                      type(self).__name__, decl.name, exchange_class.name, key)
            await declare_exchange(self.core, exchange_class)
            await self._declare_queue(decl)
            await self.core.bind(decl.name, exchange_class.name, key)
            await self._subscribe(decl.name)

        self._call(bind)
        if (decl.name, key) not in self.qk_list:
            self.qk_list.append((decl.name, key))

    def queue_unbind(self, exchange_class: type[Exchange], queue: str | dict[str, Any],
                     key: str) -> None:
        """Remove the binding of ``queue`` to ``exchange_class`` with ``key``."""
        name = queue_spec(queue).name

        async def unbind() -> None:
            await self.core.unbind(name, exchange_class.name, key)

        self._call(unbind)
        if (name, key) in self.qk_list:
            self.qk_list.remove((name, key))

    def queue_unsubscribe(self, queue: str | dict[str, Any]) -> None:
        """Stop consuming ``queue`` (without waiting: safe from a handler of that queue)."""
        name = queue_spec(queue).name
        self.qk_list = [(q, k) for q, k in self.qk_list if q != name]
        self._queues.pop(name, None)
        self._active.discard(name)
        sub = self._subscriptions.pop(name, None)
        if sub is not None:
            _runtime.portal().submit(sub.cancel())

    def handling_options(self) -> HandlingOptions:
        """The inbound pipeline's rules for this consumer: Postage envelopes decoded with
        its encoder and limits, then its ``retry_policy``."""
        return HandlingOptions(
            self.retry_policy, envelope=True, encoder=self.encoder,
            max_message_size=self.max_message_size,
            accept_content_types=frozenset(self.accept_content_types))

    def start_consuming(self, callback: MessageCallback) -> None:
        """Consume every bound queue, calling ``callback`` (a coroutine) per message
        (its envelope decoded: ``message.envelope``)."""
        self._callback = callback

        async def start() -> None:
            for name in list(self._queues):
                await self._subscribe(name)

        self._call(start)

    def stop_consuming(self, timeout: float = 10.0) -> None:
        """Cancel the consumers, letting handlers in progress finish (up to ``timeout``)."""
        self._callback = None
        subs = list(self._subscriptions.values())
        self._subscriptions.clear()
        self._active.clear()

        async def stop() -> None:
            await asyncio.gather(*(sub.cancel(timeout) for sub in subs))

        _runtime.portal().call(stop, timeout=outer_deadline(timeout, self.operation_timeout))

    @property
    def consuming(self) -> bool:
        return bool(self._subscriptions)
