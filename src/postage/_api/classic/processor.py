"""GenericConsumer and MessageProcessor: queues bound by ``eqk``, messages routed to handlers.

A processor consumes its queues through the shared Core's inbound pipeline, which decodes
each envelope with the consumer's encoder and limits (anything that is not a valid v2
envelope goes to ``<queue>.dlq`` with the reason, and the processor goes on). For each
message an async dispatcher on the event loop picks the handlers registered for its
``(category, type, name)`` and runs them, one after the other, in a worker thread
(``Core.run_sync``) while the loop keeps serving heartbeats. Deliveries of one processor
are handled one at a time, as in the original (prefetch 1 per queue and a lock).

Handler outcome: the message is acked when the handlers return. When one raises, the
others still run, the error is logged, an RPC request that got no reply yet is answered
with ``MessageResultException(type name, str(exc))`` (the traceback in
``_reserved["traceback"]`` and the processor's fingerprint only when ``error_details``),
then the processor's ``retry_policy`` applies; the classic default is
``RetryPolicy(max_attempts=1)``: straight to ``<queue>.dlq``, never requeued forever (the
original rejected such messages, losing them).

Filters (``@MessageFilter(f)``) see a deep copy of the full body; ``f`` may change it in
place or return a new body, which the handler then receives; if ``f`` raises, that
handler skips the message (other handlers are not affected).
"""

from __future__ import annotations

__all__ = [
    "GenericConsumer",
    "Handler",
    "MessageFilter",
    "MessageHandler",
    "MessageHandlerFullBody",
    "MessageProcessor",
    "RpcHandler",
]

import asyncio
import copy
import functools
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..._blocking.facade import outer_deadline
from ..._core.inbound import RetryPolicy
from ..._core.middleware import IncomingMessage
from ..._exceptions import ConfigurationError
from ..._transport import Delivery
from ..._wire.properties import Properties
from ...microthreads import MicroThread
from . import runtime as _runtime
from .consumer import GenericConsumer
from .messages import Message, MessageResult, MessageResultException

log = logging.getLogger("postage.classic.processor")

# ---------------------------------------------------------------------------------------
# handler registration


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What a decorated handler processes: category, type, name (None: any), body key."""

    category: str
    type: str
    name: str | None
    full_body: bool


class MessageHandler:
    """``@MessageHandler(type, name)``: the method gets the message ``content``."""

    category: ClassVar[str] = "message"
    full_body: ClassVar[bool] = False

    def __init__(self, message_type: str, message_name: str | None = None) -> None:
        self.spec = HandlerSpec(self.category, message_type, message_name, self.full_body)

    def __call__(self, obj: Any) -> Any:
        specs = list(vars(obj).get("_postage_handlers", ()))
        specs.append(self.spec)
        obj._postage_handlers = specs
        return obj


class RpcHandler(MessageHandler):
    """``@RpcHandler(type, name)``: the method gets ``content`` and a ``reply_func``."""

    category = "rpc"


class MessageHandlerFullBody(MessageHandler):
    """``@MessageHandlerFullBody(type, name)``: the method gets the full message body."""

    full_body = True


class MessageFilter:
    """``@MessageFilter(f)``: ``f`` sees a copy of each body first; raising discards it."""

    def __init__(self, filter_callable: Callable[[dict[str, Any]], Any]) -> None:
        self.filter = filter_callable

    def __call__(self, obj: Any) -> Any:
        obj._postage_filters = [self.filter, *vars(obj).get("_postage_filters", ())]
        return obj


class Handler:
    """Base of class handlers: ``call()`` uses ``data``, ``reply_func`` and ``processor``."""

    def __init__(self, processor: MessageProcessor, data: Any,
                 reply_func: Callable[[Any], None] | None = None) -> None:
        self.processor = processor
        self.data = data
        self.reply_func = reply_func

    def call(self) -> None:
        raise NotImplementedError("a Handler subclass defines call()")


HandlerKey = tuple[str, str, str | None]
HandlerTable = dict[HandlerKey, list[tuple[Any, HandlerSpec]]]


def _collect(cls: type, inherited: HandlerTable) -> HandlerTable:
    table = {key: list(value) for key, value in inherited.items()}
    for obj in vars(cls).values():
        for spec in vars(obj).get("_postage_handlers", ()) if hasattr(obj, "__dict__") else ():
            table.setdefault((spec.category, spec.type, spec.name), []).append((obj, spec))
    return table


class _Reply:
    """The ``reply_func`` of an RPC: callable once, from any thread but the loop's."""

    def __init__(self, processor: MessageProcessor, delivery: Delivery) -> None:
        self._processor = processor
        self._delivery = delivery
        self._lock = threading.Lock()
        self.sent = False

    def __call__(self, message: Any, *, stamp: bool = True) -> None:
        """Send ``message`` (a value is sent as a MessageResult) with the processor's
        fingerprint unless it has one (``stamp=False``: without)."""
        with self._lock:
            if self.sent:
                log.warning("reply_func called again; only the first reply is sent")
                return
            self.sent = True
        if not isinstance(message, Message):
            message = MessageResult(message)
        if stamp and not message.body.get("fingerprint"):
            message.fingerprint(**self._processor.fingerprint)
        consumer = self._processor.consumer
        body = consumer.encoder.encode(message.body)
        props = Properties(content_type=consumer.encoder.content_type)
        _runtime.portal().call(
            functools.partial(consumer.core.reply, self._delivery, body, props),
            timeout=outer_deadline(None, consumer.operation_timeout))


class MessageProcessor(MicroThread):
    """A microthread that consumes ``eqk`` and routes messages to its handlers."""

    consumer_class: ClassVar[type[GenericConsumer]] = GenericConsumer
    _message_handlers: ClassVar[HandlerTable] = {}
    step_wait: ClassVar[float] = 0.05
    # On stop (quit, Ctrl-C, SIGTERM): how long the handler in progress may still run
    # before the connection closes (the broker then requeues its message).
    shutdown_timeout: ClassVar[float] = 30.0
    # How the default ``restart`` command starts the new run: "exec" (in place, same pid)
    # or "spawn" (a new process with a new pid; this one exits). See restart().
    restart_mode: ClassVar[str] = "exec"
    # The exception reply of a failed RPC handler carries the traceback and the
    # processor's fingerprint (opt-in: they disclose paths, pid, host and user).
    error_details: ClassVar[bool] = False
    # What happens to a message whose handler raised (see RetryPolicy); None: the
    # consumer class's (one attempt, then <queue>.dlq).
    retry_policy: ClassVar[RetryPolicy | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._message_handlers = _collect(cls, cls._message_handlers)

    def __init__(self, fingerprint: dict[str, Any], eqk: Sequence[Any], hup: Any,
                 vhost: str | None) -> None:
        super().__init__()
        self.fingerprint = fingerprint
        self.consumer = self.consumer_class(eqk, hup, vhost)
        if self.retry_policy is not None:
            self.consumer.retry_policy = self.retry_policy
        self._stop_event = threading.Event()
        self._stop_reason: str | None = None
        self._lock: asyncio.Lock | None = None

    # -- life cycle (runs in the scheduler's thread) ---------------------------------------

    def add_eqk(self, eqk: Sequence[Any]) -> None:
        self.consumer.add_eqk(eqk)

    def start_consuming(self) -> None:
        self.consumer.start_consuming(self._dispatch)

    def stop_consuming(self) -> None:
        self.consumer.stop_consuming(self.shutdown_timeout)

    def stop(self, reason: str = "quit") -> None:
        """Ask the processor to stop (thread-safe); its microthread then ends."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def main(self) -> Iterator[None]:
        self.start_consuming()
        log.debug("%s consuming %s", type(self).__name__, sorted(self.consumer._queues))
        try:
            while not self._stop_event.wait(self.step_wait):
                yield
        finally:
            self.stop_consuming()
        if self._stop_reason == "restart":
            self.restart()

    def restart(self) -> None:
        """Start a new run of the same command line, as ``restart_mode`` says.

        ``"exec"`` (the default) replaces this process in place (``os.execv``): same pid, so
        a supervisor, a shell or a test harness keeps its handle on the component.
        ``"spawn"`` starts a new process (a new pid) with the same command line, environment,
        working directory and standard streams, then this one exits with status 0.
        """
        if self.restart_mode not in ("exec", "spawn"):
            raise ConfigurationError(
                f"restart_mode must be 'exec' or 'spawn', not {self.restart_mode!r}"
            )
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("restarting (%s): %s", self.restart_mode, " ".join(sys.orig_argv))
        _runtime.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.restart_mode == "spawn":
            subprocess.Popen(argv)
            raise SystemExit(0)
        os.execv(sys.executable, argv)

    # -- default handlers ------------------------------------------------------------------

    @MessageHandler("command", "quit")
    def msg_quit(self, content: Any) -> None:
        self.stop("quit")

    @MessageHandler("command", "restart")
    def msg_restart(self, content: Any) -> None:
        self.stop("restart")

    # -- dispatch (on the event loop) ------------------------------------------------------

    def handlers_for(self, category: str, type_: str, name: str) -> list[tuple[Any, HandlerSpec]]:
        table = self._message_handlers
        return [*table.get((category, type_, name), ()), *table.get((category, type_, None), ())]

    async def _dispatch(self, message: IncomingMessage) -> None:
        delivery = message.delivery
        if self.stopping:
            await delivery.nack(requeue=True)  # for another consumer, or our next run
            return
        consumer = self.consumer
        body = message.envelope  # decoded by the pipeline (undecodable: <queue>.dlq)
        assert body is not None
        category, type_, name = body["category"], body["type"], body["name"]
        handlers = self.handlers_for(category, type_, name)
        log.debug("<-- %s: %s %s %r (%d handlers)", type(self).__name__, category, type_,
                  name, len(handlers))
        if not handlers:
            return
        reply = _Reply(self, delivery) if category == "rpc" else None
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            error = await consumer.core.run_sync(self._run_handlers, body, handlers, reply)
        if error is not None:
            raise error

    def _run_handlers(self, body: dict[str, Any], handlers: list[tuple[Any, HandlerSpec]],
                      reply: _Reply | None) -> BaseException | None:
        first_error: BaseException | None = None
        for obj, spec in handlers:
            data = _filtered(obj, body)
            if data is None:
                continue
            argument = data if spec.full_body else data["content"]
            reply_func = reply if spec.category == "rpc" else None
            try:
                if isinstance(obj, type) and issubclass(obj, Handler):
                    obj(self, argument, reply_func).call()
                elif reply_func is not None:
                    obj(self, argument, reply_func)
                else:
                    obj(self, argument)
            except Exception as exc:
                log.exception("handler %s failed on a %r message",
                              getattr(obj, "__name__", obj), body["name"])
                first_error = first_error or exc
                if reply is not None and not reply.sent:
                    _answer_exception(reply, exc, self.error_details
                                      or self.consumer.core.error_details)
        return first_error


def _filtered(obj: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    """What the handler ``obj`` gets after its filters (a copy), None if one discards it."""
    filters = vars(obj).get("_postage_filters", ())
    if not filters:
        return body
    data = copy.deepcopy(body)
    try:
        for message_filter in filters:
            result = message_filter(data)
            if isinstance(result, dict):
                data = result
    except Exception as exc:
        log.info("filter of %s discarded a %r message: %r",
                 getattr(obj, "__name__", obj), body["name"], exc)
        return None
    return data


def _answer_exception(reply: _Reply, exc: Exception, details: bool) -> None:
    """Tell the caller: ``MessageResultException(type name, message)``, as Postage 1.2
    did; the traceback and the processor's fingerprint only with ``details``."""
    answer = MessageResultException(type(exc).__name__, str(exc))
    if details:
        answer.body["_reserved"]["traceback"] = traceback.format_exc()
    try:
        reply(answer, stamp=details)
    except Exception:
        log.exception("cannot send the exception reply")


MessageProcessor._message_handlers = _collect(MessageProcessor, {})
