"""Middleware: code that runs around every message a connection sends or handles.

A middleware is installed per connection (``postage.connect(url, middleware=[...])``,
``AsyncClient(url, middleware=[...])``, ``Core(middleware=[...])``, or
``postage.messaging.set_middleware([...])`` for the classic API) and sees the messages of
every API on it. Subclass :class:`Middleware` and override the hooks you need:

* :meth:`Middleware.publish` runs around each publish (messages, tasks, RPC requests and
  broadcasts); it may change the exchange, routing key, body and properties (headers
  included) before calling ``call_next``, or raise to refuse the message.
* :meth:`Middleware.handle` runs around the handler of each received message, after the
  size and content-type checks and the decoding; what it returns is the handler's result
  (the reply's value), what it raises is the handler's error (retry, dead-letter).
* :meth:`Middleware.reply` runs around the sending of each reply.
* :meth:`Middleware.retried` and :meth:`Middleware.dead_lettered` are told when a failed
  message is sent back for another attempt, and when one is moved to ``<queue>.dlq``;
  :meth:`Middleware.settled` when a received message is done with, whatever happened.

Order: the first middleware of the list is the outermost. For a publish, the first one
sees the message first; for a handled message, the first one is entered first and left
last. Hooks run on the connection's event loop; a hook must not block it.
"""

from __future__ import annotations

__all__ = [
    "HandleNext",
    "IncomingMessage",
    "Middleware",
    "OutgoingMessage",
    "PublishNext",
]

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import ConfigurationError
from .._wire.properties import Properties

if TYPE_CHECKING:
    from .._transport import Delivery


@dataclass(slots=True)
class OutgoingMessage:
    """A message on its way to the broker; middleware may change any field.

    ``kind`` says what it is: ``"publish"`` (a message, task or broadcast), ``"request"``
    (an RPC request; ``properties.correlation_id`` is set), or ``"reply"``.
    ``headers`` is the message's headers table (a copy: change it freely).
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    kind: str = "publish"
    mandatory: bool = True
    timeout: float | None = None
    delay: float | None = None
    """Seconds to wait before it reaches ``exchange`` (None: now)."""
    reply: asyncio.Future[Any] | None = None
    """For a request (``kind == "request"``): the future of its reply, done when the reply
    came, or with the call's error (timeout, lost connection...), or cancelled."""

    @property
    def headers(self) -> dict[str, Any]:
        if self.properties.headers is None:
            self.properties.headers = {}
        return self.properties.headers


@dataclass(slots=True)
class IncomingMessage:
    """A received message on its way through the inbound pipeline.

    ``queue``: the queue it came from; ``exchange``/``routing_key``: where it was first
    sent (kept across retries); ``attempt``: 1 for the first delivery, 2 for the first
    retry...; ``envelope``: the decoded Postage envelope (None for raw bodies);
    ``state``: a dict middleware may use to carry values from one hook to the next.
    """

    delivery: Delivery
    queue: str
    exchange: str
    routing_key: str
    attempt: int
    envelope: dict[str, Any] | None = None
    _state: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:  # made on first use: most messages never need one
            self._state = {}
        return self._state

    @property
    def body(self) -> bytes:
        return self.delivery.body

    @property
    def properties(self) -> Properties:
        return self.delivery.properties

    @property
    def headers(self) -> dict[str, Any]:
        return self.delivery.headers


PublishNext = Callable[[OutgoingMessage], Awaitable[None]]
HandleNext = Callable[[IncomingMessage], Awaitable[Any]]


class Middleware:
    """Base class of middleware: every hook passes the message on unchanged."""

    async def publish(self, message: OutgoingMessage, call_next: PublishNext) -> None:
        """Around each publish (not replies)."""
        await call_next(message)

    async def handle(self, message: IncomingMessage, call_next: HandleNext) -> Any:
        """Around the handler of each received message; returns the handler's result."""
        return await call_next(message)

    async def reply(self, message: OutgoingMessage, request: IncomingMessage | None,
                    call_next: PublishNext) -> None:
        """Around each reply (``request`` is None for a reply sent outside a handler)."""
        await call_next(message)

    async def retried(self, message: IncomingMessage, error: str) -> None:
        """``message`` failed with ``error`` and was sent back for another attempt."""

    async def dead_lettered(self, message: IncomingMessage, reason: str, error: str) -> None:
        """``message`` was moved to ``<queue>.dlq`` for ``reason``."""

    def attached(self, core: Any) -> None:
        """Told of each connection (a ``Core``) this middleware is installed on."""

    def presence_info(self) -> dict[str, Any]:
        """Values added to the component's presence status messages (what ``postage
        monitor`` shows of it), JSON-ready."""
        return {}

    def settled(self, message: IncomingMessage, outcome: str) -> None:
        """``message`` is done with: ``outcome`` is ``"acked"``, ``"retried"``,
        ``"dead-lettered"``, ``"requeued"`` (given back to the broker) or ``"failed"``
        (the handler raised and the error was answered or logged)."""


_instrumentation: list[Middleware] = []


def instrument(middleware: Middleware) -> None:
    """Put ``middleware`` first on every connection opened from now on (what an
    instrumentation such as OpenTelemetry's does; connections already open keep theirs)."""
    if middleware not in _instrumentation:
        _instrumentation.append(middleware)


def uninstrument(middleware: Middleware) -> None:
    if middleware in _instrumentation:
        _instrumentation.remove(middleware)


def with_instrumentation(middleware: Sequence[Any]) -> Sequence[Any]:
    """The middleware of a new connection: the installed instrumentation, then its own."""
    return [*_instrumentation, *middleware] if _instrumentation else middleware


def overrides(middleware: Middleware, hook: str) -> bool:
    """True if ``middleware`` has its own ``hook`` (the base's do nothing)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


Next = TypeVar("Next", PublishNext, HandleNext)


def _wrap(middleware: Sequence[Middleware], hook: str, last: Next,
          bind: Callable[[Middleware, Next], Next]) -> Next:
    """``last`` wrapped by the ``hook`` of each middleware that has one, first outermost."""
    call = last
    for mw in reversed([m for m in middleware if overrides(m, hook)]):
        call = bind(mw, call)
    return call


def chain_publish(middleware: Sequence[Middleware], last: PublishNext) -> PublishNext:
    """``last`` wrapped by the ``publish`` hook of each middleware, first outermost."""
    def bind(mw: Middleware, call_next: PublishNext) -> PublishNext:
        async def step(message: OutgoingMessage) -> None:
            await mw.publish(message, call_next)
        return step

    return _wrap(middleware, "publish", last, bind)


def chain_reply(middleware: Sequence[Middleware], request: IncomingMessage | None,
                last: PublishNext) -> PublishNext:
    """``last`` wrapped by the ``reply`` hook of each middleware, first outermost."""
    def bind(mw: Middleware, call_next: PublishNext) -> PublishNext:
        async def step(message: OutgoingMessage) -> None:
            await mw.reply(message, request, call_next)
        return step

    return _wrap(middleware, "reply", last, bind)


def chain_handle(middleware: Sequence[Middleware], last: HandleNext) -> HandleNext:
    """``last`` (the handler) wrapped by each middleware's ``handle``, first outermost."""
    def bind(mw: Middleware, call_next: HandleNext) -> HandleNext:
        async def step(message: IncomingMessage) -> Any:
            return await mw.handle(message, call_next)
        return step

    return _wrap(middleware, "handle", last, bind)


def check_middleware(middleware: Sequence[Any]) -> tuple[Middleware, ...]:
    """The middleware list, checked: each one a :class:`Middleware`."""
    items = tuple(middleware)
    for mw in items:
        if not isinstance(mw, Middleware):
            raise ConfigurationError(
                f"middleware must be postage.Middleware instances, not {type(mw).__name__}")
    return items
