"""OpenTelemetry for Postage: traces and metrics of every message, on every API.

One :class:`TelemetryMiddleware`, installed first on every connection opened after
:meth:`PostageInstrumentor.instrument` (see :func:`postage._core.middleware.instrument`):

* **traces** (messaging semantic conventions, ``messaging.system = rabbitmq``): a PRODUCER
  span per publish, whose context travels in the message's ``traceparent``/``tracestate``
  headers (W3C, as aio-pika's instrumentation does); a CONSUMER span per message handled,
  child of the sender's, kept open until the message is settled, with an event for a retry,
  a dead letter or the reply sent; a CLIENT span per RPC, from the request to its reply,
  whose context the request carries (the request's publish is part of it, not a span of
  its own, and neither is the reply: two spans per RPC, the fewest that link caller and
  server);
* **metrics** through the OpenTelemetry metrics API: messages sent, received, acked,
  retried, dead-lettered and unroutable; publish-confirm latency, handler duration and RPC
  round trip; RPCs in flight; reconnections. Attributes: ``messaging.system``,
  ``messaging.destination.name`` (random parts of names folded into ``{id}``, so that
  reply and private queues do not multiply the series) and ``postage.component``.

Nothing here is imported unless instrumentation is asked for.
"""

from __future__ import annotations

__all__ = ["PostageInstrumentor", "TelemetryMiddleware", "bounded_name"]

import asyncio
import collections
import functools
import os
import re
import sys
import time
import weakref
from collections.abc import Collection, Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from postage import __version__
from postage._core.middleware import (
    HandleNext,
    IncomingMessage,
    Middleware,
    OutgoingMessage,
    PublishNext,
    instrument,
    uninstrument,
)
from postage._exceptions import Unroutable

SYSTEM = "rabbitmq"
_COUNTERS = (
    ("messaging.client.sent.messages", "Messages sent (confirmed)"),
    ("messaging.client.consumed.messages", "Messages received"),
    ("postage.messages.acked", "Messages handled and acked"),
    ("postage.messages.retried", "Messages sent back for another attempt"),
    ("postage.messages.dead_lettered", "Messages moved to <queue>.dlq"),
    ("postage.messages.unroutable", "Mandatory messages no queue took"),
)
_ATTRIBUTE_NAMES = ("messaging.system", "messaging.operation.name",
                    "messaging.destination.name", "postage.component", "error.type")
_SPAN_KEY = "postage.otel.span"
_STARTED_KEY = "postage.otel.started"
_RANDOM_WORD = re.compile(r"^(?=.*\d)[0-9a-fA-F_-]{12,}$|^[0-9a-fA-F]{32}$|^\d+$")
_PID_AT = re.compile(r"^\d+@")


@functools.lru_cache(maxsize=4096)
def bounded_name(name: str) -> str:
    """``name`` with its random words (hex ids, uuids, pids) folded into ``{id}``: the
    metric attribute of a destination, so that private queues do not make new series."""
    if name.startswith("amq.rabbitmq.reply-to"):
        return "amq.rabbitmq.reply-to"
    if not name:
        return "(default)"
    return ".".join("{id}" if _RANDOM_WORD.match(word) else _PID_AT.sub("{id}@", word)
                    for word in name.split("."))


def _component() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


class TelemetryMiddleware(Middleware):
    """Traces and metrics of one process's Postage connections (see the module doc)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None,
                 component: str | None = None) -> None:
        self.tracer = trace.get_tracer("postage", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("postage", __version__, meter_provider=meter_provider)
        self.component = component or _component()
        self._cores: weakref.WeakSet[Any] = weakref.WeakSet()
        self._handled = 0  # totals for the presence status (postage monitor)
        self._handler_seconds = 0.0
        # Counts are tallied here (a dict increment per message) and read by the SDK when
        # it collects: recording each one through the SDK costs more than the publish.
        self._tallies: dict[str, collections.Counter[tuple[str, ...]]] = {}
        for name, description in _COUNTERS:
            tally: collections.Counter[tuple[str, ...]] = collections.Counter()
            self._tallies[name] = tally
            meter.create_observable_counter(name, [self._observer(tally)], "{message}",
                                            description)
        histogram = meter.create_histogram
        self.publish_duration = histogram("messaging.client.operation.duration", "s",
                                          "Publish until the broker confirmed")
        self.process_duration = histogram("messaging.process.duration", "s",
                                          "Handler duration")
        self.rpc_duration = histogram("postage.rpc.duration", "s",
                                      "RPC round trip, request to reply")
        self._in_flight: collections.Counter[tuple[str, ...]] = collections.Counter()
        meter.create_observable_up_down_counter(
            "postage.rpc.in_flight", [self._observer(self._in_flight)], "{call}",
            "RPCs waiting for their reply")
        meter.create_observable_counter(
            "postage.connection.reconnections", [self._reconnections], "{reconnection}",
            "Reconnections of this process's connections")

    # -- connections ------------------------------------------------------------------

    def attached(self, core: Any) -> None:
        self._cores.add(core)

    def presence_info(self) -> dict[str, Any]:
        """Messages handled and the time spent on them, so far (``postage monitor``
        turns two of these into a rate and a mean handler time)."""
        return {"messages_handled": self._handled,
                "handler_seconds": round(self._handler_seconds, 6)}

    def _reconnections(self, _options: CallbackOptions) -> Iterable[Observation]:
        total = sum(getattr(c.transport, "reconnections", 0) for c in list(self._cores))
        yield Observation(total, {"messaging.system": SYSTEM,
                                  "postage.component": self.component})

    # -- attributes -------------------------------------------------------------------

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one middleware per instrumentation
    def _attributes(self, destination: str, operation: str, error: str) -> dict[str, str]:
        """The (cached, shared: never change it) attributes of a metric point."""
        attributes = {"messaging.system": SYSTEM, "messaging.operation.name": operation,
                      "messaging.destination.name": bounded_name(destination),
                      "postage.component": self.component}
        if error:
            attributes["error.type"] = error
        return attributes

    def _count(self, name: str, destination: str, operation: str, error: str = "") -> None:
        self._tallies[name][(destination, operation, error)] += 1

    def _observer(self, tally: collections.Counter[tuple[str, ...]]) -> Any:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for (destination, operation, error), count in list(tally.items()):
                yield Observation(count, self._attributes(destination, operation, error))
        return observe

    @staticmethod
    def _span_attributes(destination: str, routing_key: str, operation: str,
                         operation_type: str, properties: Any, size: int) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.operation.name": operation,
            "messaging.operation.type": operation_type,
            "messaging.message.body.size": size,
        }
        if properties.message_id:
            attributes["messaging.message.id"] = properties.message_id
        if properties.correlation_id:
            attributes["messaging.message.conversation_id"] = properties.correlation_id
        return attributes

    # -- sending ----------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage, call_next: PublishNext) -> None:
        if message.kind == "request" and message.reply is not None:
            await self._request(message, call_next)
            return
        span, destination, started = await self._send(message, call_next, "publish",
                                                      SpanKind.PRODUCER)
        span.end()
        self.publish_duration.record(time.perf_counter() - started,
                                     self._attributes(destination, "publish", ""))

    async def _send(self, message: OutgoingMessage, call_next: PublishNext, operation: str,
                    kind: SpanKind) -> tuple[Any, str, float]:
        """Start the message's span, put its context in the headers, publish; the span
        (open), the destination and when it started. A failure ends the span."""
        # the exchange; through the default exchange, the queue (the routing key)
        destination = message.exchange or message.routing_key
        span = self.tracer.start_span(
            f"{operation} {bounded_name(destination)}", kind=kind,
            attributes=self._span_attributes(destination, message.routing_key, operation,
                                             "send", message.properties, len(message.body)))
        # not made current: nothing runs under it but the publish, and attaching a
        # context costs as much as the span
        propagate.inject(message.headers, context=trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            await call_next(message)
        except BaseException as exc:
            if isinstance(exc, Unroutable):
                self._count("postage.messages.unroutable", destination, "publish")
                span.set_status(Status(StatusCode.ERROR, "unroutable"))
            else:
                self._count("messaging.client.sent.messages", destination, "publish",
                            type(exc).__name__)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        self._count("messaging.client.sent.messages", destination, "publish")
        return span, destination, started

    async def _request(self, message: OutgoingMessage, call_next: PublishNext) -> None:
        """One CLIENT span from the request to its reply (ended when the reply future is),
        whose context the request carries: the server's processing span is its child.
        The request's confirm is inside it; its latency counts in the round trip."""
        span, destination, started = await self._send(message, call_next, "send",
                                                      SpanKind.CLIENT)
        in_flight = self._in_flight
        key = (destination, "rpc", "")
        in_flight[key] += 1
        reply = message.reply
        assert reply is not None

        def done(future: asyncio.Future[Any]) -> None:
            in_flight[key] -= 1
            if future.cancelled():
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
            elif future.exception() is not None:
                error = future.exception()
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            else:
                span.add_event("reply")
                self.rpc_duration.record(time.perf_counter() - started,
                                         self._attributes(destination, "rpc", ""))
            span.end()

        reply.add_done_callback(done)

    async def reply(self, message: OutgoingMessage, request: IncomingMessage | None,
                    call_next: PublishNext) -> None:
        """A reply is an event of the request's processing span (still open: it ends when
        the request is settled), and carries that span's context."""
        destination = message.exchange or message.routing_key
        span = request.state.get(_SPAN_KEY) if request is not None else None
        if span is not None:
            propagate.inject(message.headers, context=trace.set_span_in_context(span))
        try:
            await call_next(message)
        except BaseException as exc:
            self._count("messaging.client.sent.messages", destination, "reply",
                        type(exc).__name__)
            if span is not None:
                span.add_event("reply failed", {"error.type": type(exc).__name__})
            raise
        self._count("messaging.client.sent.messages", destination, "reply")
        if span is not None:
            span.add_event("reply")

    # -- receiving --------------------------------------------------------------------

    async def handle(self, message: IncomingMessage, call_next: HandleNext) -> Any:
        delivery = message.delivery
        parent = propagate.extract(_carrier(message.headers))
        span = self.tracer.start_span(
            f"process {bounded_name(message.queue)}", context=parent, kind=SpanKind.CONSUMER,
            attributes={**self._span_attributes(
                message.queue, message.routing_key, "process", "process",
                delivery.properties, len(delivery.body)),
                "messaging.rabbitmq.message.attempt": message.attempt})
        state = message.state
        state[_SPAN_KEY] = span
        state[_STARTED_KEY] = time.perf_counter()
        self._count("messaging.client.consumed.messages", message.queue, "process")
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await call_next(message)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)

    async def retried(self, message: IncomingMessage, error: str) -> None:
        span = message.state.get(_SPAN_KEY)
        if span is not None:
            span.add_event("retry", {"postage.error": error,
                                     "messaging.rabbitmq.message.attempt": message.attempt})
        self._count("postage.messages.retried", message.queue, "process")

    async def dead_lettered(self, message: IncomingMessage, reason: str, error: str) -> None:
        span = message.state.get(_SPAN_KEY)
        if span is not None:
            span.add_event("dead-lettered", {"postage.reason": reason, "postage.error": error})
        self._count("postage.messages.dead_lettered", message.queue, "process")

    def settled(self, message: IncomingMessage, outcome: str) -> None:
        state = message.state
        span = state.pop(_SPAN_KEY, None)
        started = state.pop(_STARTED_KEY, None)
        if outcome == "acked":
            self._count("postage.messages.acked", message.queue, "process")
        if started is not None:
            took = time.perf_counter() - started
            self.process_duration.record(took, self._attributes(message.queue, "process", ""))
            self._handled += 1
            self._handler_seconds += took
        if span is not None:
            span.set_attribute("postage.outcome", outcome)
            span.end()


class PostageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The OpenTelemetry instrumentation of Postage: ``PostageInstrumentor().instrument()``
    (or ``opentelemetry-instrument python app.py``, through the entry point). Connections
    opened afterwards are traced and measured; ``uninstrument()`` stops it for new ones.

    Keywords of ``instrument``: ``tracer_provider``, ``meter_provider`` (default: the
    global ones) and ``component`` (the ``postage.component`` attribute of the metrics;
    default: the program's file name)."""

    _middleware: TelemetryMiddleware | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        middleware = TelemetryMiddleware(kwargs.get("tracer_provider"),
                                         kwargs.get("meter_provider"), kwargs.get("component"))
        PostageInstrumentor._middleware = middleware
        instrument(middleware)

    def _uninstrument(self, **kwargs: Any) -> None:
        middleware = PostageInstrumentor._middleware
        if middleware is not None:
            uninstrument(middleware)
            PostageInstrumentor._middleware = None


def _carrier(headers: dict[str, Any] | None) -> dict[str, str]:
    """The headers a propagator may read: only string values (a sender may put anything
    in ``traceparent`` or ``baggage``; a value of another type is ignored, not an error
    that fails a valid message)."""
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
