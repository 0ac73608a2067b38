"""GenericProducer: a class whose ``build_message_X``/``build_rpc_X`` methods define an API.

``producer.message_X(*a, **kw)`` calls ``build_message_X(*a, **kw)`` (or, without such a
method, builds ``MessageCommand("X", value)`` for ``message_X(value)`` or
``message_X(parameters=value)``, as Postage 1.2 did; see :func:`default_parameters`), attaches the
producer's fingerprint and publishes to every exchange/key of ``eks`` (``_key`` and
``_eks`` change that), blocking until the broker confirms. ``producer.rpc_X(...)`` does
the same with an RpcCommand, sends it to the first exchange/key and blocks for the reply:
each try waits ``_timeout`` seconds (default ``rpc_timeout`` = 30), and after
``_max_retry`` more tries (default ``max_retry`` = 4) it returns a
``MessageResultException("TimeoutError", ...)``. ``rpc_queue_X`` (or ``_queue_only=True``)
returns the name of an exclusive reply queue instead; :meth:`GenericProducer.consume_rpc`
reads the answer from it. ``producer.gather_X(...)`` (scatter/gather) sends the RPC of
``build_rpc_X`` once to a key many instances receive (e.g. ``_key='monitor'``) and returns
the list of every reply that arrives within ``_timeout`` seconds (default ``rpc_timeout``),
stopping early after ``_max_replies``; each is a result Message whose ``body['fingerprint']``
tells who answered; an empty list when nobody answered or no queue receives the request.

``_delay=S`` (seconds) or ``_not_before=DATETIME`` on ``message_X``/``rpc_X`` sends the
message that much later (it waits on the broker, persistent; an RPC's deadline counts from
then, and its later tries go at once).

``pipeline = N`` (a class attribute, default 0) is an explicit opt-in for fast one-way
sending: ``message_X``/``message``/``forward`` then return as soon as the message is handed
to the event loop, with at most N messages awaiting the broker's confirm (the next send
blocks while N are). Nothing is lost silently: a failed publish (Unroutable, nack, lost
connection, ...) is raised by the producer's next call, :meth:`GenericProducer.flush` or
:meth:`GenericProducer.close`, which also wait until every message is confirmed.

``persistent = True`` (a class attribute, default False as in the original library) sends
``message_X``/``message``/``forward`` with ``delivery_mode`` 2: a durable queue keeps them
on disk across a broker restart (the broker confirms them once they are written).

All I/O is async code on the shared Core, submitted to the portal: write once, block here.
"""

from __future__ import annotations

__all__ = ["GenericProducer"]

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from ..._blocking.facade import outer_deadline
from ..._blocking.window import SendWindow
from ..._core.core import Core, HandlingOptions
from ..._core.middleware import IncomingMessage
from ..._exceptions import (
    ConfigurationError,
    DecodingError,
    PostageError,
    RpcTimeout,
    Unroutable,
)
from ..._wire.delays import resolve_delay
from ..._wire.encoding import Encoder, JsonEncoder
from ..._wire.envelope import decode_envelope
from ..._wire.fingerprint import Fingerprint
from ..._wire.properties import PERSISTENT, Properties
from . import runtime as _runtime
from .messages import (
    Exchange,
    Message,
    MessageCommand,
    MessageResultError,
    MessageResultException,
    RpcCommand,
    message_from_body,
)

log = logging.getLogger("postage.classic.producer")
# A reply queue of ``rpc_queue_X``: one reply is taken, others go back for a later read
_REPLY_QUEUE = HandlingOptions(errors="log", dead_letter_queue=None)

EK = tuple[type[Exchange], str]
T = TypeVar("T")


async def declare_exchange(core: Core, exchange: type[Exchange]) -> None:
    await core.declare_exchange(
        exchange.name, exchange.exchange_type, durable=exchange.durable,
        auto_delete=exchange.auto_delete, passive=exchange.passive,
    )


class GenericProducer:
    """Sends the messages its ``build_*`` methods describe; see the module docstring."""

    eks: ClassVar[Sequence[EK]] = []
    encoder_class: ClassVar[type] = JsonEncoder
    vhost: str | None = None
    hup: Any = None
    rpc_timeout: float = 30.0
    max_retry: int = 4
    mandatory: ClassVar[bool] = True
    publish_timeout: ClassVar[float] = 30.0
    pipeline: ClassVar[int] = 0
    """Unconfirmed one-way messages allowed in flight; 0: each waits for its confirm."""
    persistent: ClassVar[bool] = False
    """Send one-way messages with delivery_mode 2 (kept on disk by durable queues)."""

    def __init__(
        self, fingerprint: dict[str, Any] | None = None, hup: Any = None,
        vhost: str | None = None,
    ) -> None:
        if hup is not None:
            self.hup = hup
        if vhost:
            self.vhost = vhost
        self.fingerprint: dict[str, Any] = Fingerprint().as_dict()
        self.fingerprint.update(fingerprint or {})
        self.encoder: Encoder = self.encoder_class()
        self._core = _runtime.shared_core(self.hup, self.vhost)
        self._declared: set[str] = set()
        self._pipeline: SendWindow | None = None
        if self.pipeline < 0:
            raise ConfigurationError("pipeline must be 0 (wait for each confirm) or more")
        log.debug("producer %s declaring eks %s", type(self).__name__, list(self.eks))
        self._declare([exchange for exchange, _key in self.eks])

    # -- plumbing -----------------------------------------------------------------------

    def _declare(self, exchanges: Sequence[type[Exchange]]) -> None:
        missing = [e for e in exchanges if e.name not in self._declared]
        if not missing:
            return

        async def declare_all() -> None:
            for exchange in missing:
                await declare_exchange(self._core, exchange)

        self._wait(declare_all, bound=self.publish_timeout * len(missing))
        self._declared.update(e.name for e in missing)

    def _wait(self, fn: Callable[[], Awaitable[T]], *, bound: float) -> T:
        """Run ``fn()`` on the portal; wait by the blocking APIs' one deadline rule."""
        return _runtime.portal().call(fn, timeout=outer_deadline(bound, self.publish_timeout))

    def _get_eks(self, kwds: dict[str, Any]) -> list[EK]:
        key = kwds.pop("_key", None)
        eks = kwds.pop("_eks", None)
        if eks is not None:
            result = list(eks)
        elif key is not None:
            if not self.eks:
                raise ConfigurationError(f"{type(self).__name__} has no eks to use _key with")
            result = [(self.eks[0][0], key)]
        else:
            result = list(self.eks)
        if not result:
            raise ConfigurationError(
                f"{type(self).__name__}: no exchange to send to (set eks or pass _eks)")
        self._declare([exchange for exchange, _ in result])
        return result

    def _properties(self, **values: Any) -> Properties:
        return Properties(content_type=self.encoder.content_type, **values)

    def _stamp(self, message: Message) -> bytes:
        message.fingerprint(**self.fingerprint)
        return self.encoder.encode(message.body)

    def _publish(self, eks: list[EK], body: bytes, what: str,
                 delay: float | None = None) -> None:
        props = self._properties(delivery_mode=PERSISTENT if self.persistent else None)
        targets = [(exchange.name, key) for exchange, key in eks]
        if self.pipeline:
            if self._pipeline is None:
                self._pipeline = SendWindow(_runtime.portal(), self.pipeline,
                                            self.publish_timeout)
            log.debug("--> %s: %s to %s (pipelined)", type(self).__name__, what, targets)
            self._pipeline.submit(self._publish_to, (targets, body, props, delay))
            return
        log.debug("--> %s: %s to %s", type(self).__name__, what, targets)
        self._wait(functools.partial(self._publish_to, targets, body, props, delay),
                   bound=self.publish_timeout * len(targets))

    async def _publish_to(self, targets: list[tuple[str, str]], body: bytes,
                          props: Properties, delay: float | None = None) -> None:
        for exchange, key in targets:
            await self._core.publish(exchange, key, body, props, mandatory=self.mandatory,
                                     timeout=self.publish_timeout, delay=delay)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every pipelined message is confirmed (at most ``timeout`` s, default
        ``publish_timeout``) and raise the first failure, if any. Nothing to do for a
        producer with ``pipeline = 0``."""
        if self._pipeline is not None:
            self._pipeline.flush(self.publish_timeout if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`flush`. (The connection is shared by the process and stays open.)"""
        self.flush(timeout)

    # -- sending ------------------------------------------------------------------------

    def _message_send(self, build: Callable[..., Message], *args: Any, **kwds: Any) -> None:
        eks = self._get_eks(kwds)
        delay = _pop_delay(kwds)
        message = build(*args, **kwds)
        self._publish(eks, self._stamp(message), message.body.get("name", ""), delay)

    def _rpc_send(self, build: Callable[..., Message], *args: Any, **kwds: Any) -> Any:
        if self._pipeline is not None:
            self._pipeline.raise_failure()
        eks = self._get_eks(kwds)
        timeout = float(kwds.pop("_timeout", self.rpc_timeout))
        max_retry = int(kwds.pop("_max_retry", self.max_retry))
        queue_only = bool(kwds.pop("_queue_only", False))
        delay = _pop_delay(kwds)
        message = build(*args, **kwds)
        body = self._stamp(message)
        exchange, key = eks[0]
        if queue_only:
            return self._wait(
                functools.partial(self._rpc_to_queue, exchange.name, key, body, delay),
                bound=self.publish_timeout)
        tries = (max_retry + 1) * (timeout + self.publish_timeout) + (delay or 0)
        result: Message = self._wait(
            functools.partial(self._rpc_async, exchange.name, key, body, timeout, max_retry,
                              delay),
            bound=tries)
        return result

    async def _rpc_async(
        self, exchange: str, key: str, body: bytes, timeout: float, max_retry: int,
        delay: float | None = None,
    ) -> Message:
        attempt = 0
        while True:
            attempt += 1
            log.debug("--> %s: rpc to (%s, %s), try %d", type(self).__name__, exchange, key,
                      attempt)
            try:
                reply = await self._core.call(
                    exchange, key, body, self._properties(), timeout=timeout,
                    mandatory=self.mandatory, delay=delay if attempt == 1 else None)
            except RpcTimeout as exc:
                if attempt <= max_retry:
                    continue
                return MessageResultException(
                    "TimeoutError", f"no reply after {attempt} tries: {exc}")
            except PostageError as exc:
                return MessageResultException(type(exc).__name__, str(exc))
            return self._decode_reply(reply.body, reply.content_type)

    def _gather_send(self, build: Callable[..., Message], *args: Any, **kwds: Any) -> list[Message]:
        if self._pipeline is not None:
            self._pipeline.raise_failure()
        eks = self._get_eks(kwds)
        timeout = float(kwds.pop("_timeout", self.rpc_timeout))
        max_replies = kwds.pop("_max_replies", None)
        message = build(*args, **kwds)
        body = self._stamp(message)
        exchange, key = eks[0]
        core = self._core

        async def gather() -> list[Message]:
            log.debug("--> %s: gather to (%s, %s)", type(self).__name__, exchange.name, key)
            try:
                replies = await core.gather(
                    exchange.name, key, body, self._properties(), timeout=timeout,
                    max_replies=None if max_replies is None else int(max_replies),
                    mandatory=self.mandatory)
            except Unroutable:
                return []
            return [self._decode_reply(r.body, r.content_type) for r in replies]

        result: list[Message] = self._wait(gather, bound=timeout + self.publish_timeout)
        return result

    def _decode_reply(self, body: bytes, content_type: str | None) -> Message:
        try:
            envelope = decode_envelope(body, content_type, self.encoder,
                                       max_size=self._core.max_message_size)
        except DecodingError as exc:
            return MessageResultError(f"Malformed reply: {exc}")
        if envelope["type"] != "result":
            return MessageResultError(f"Malformed reply: not a result ({envelope['type']!r})")
        return message_from_body(envelope)

    async def _rpc_to_queue(self, exchange: str, key: str, body: bytes,
                            delay: float | None = None) -> str:
        queue = f"postage.classic.reply.{uuid.uuid4().hex}"
        await self._core.declare_queue(queue, exclusive=True, auto_delete=True)
        props = self._properties(reply_to=queue,
                                 correlation_id=self._core.new_correlation_id())
        await self._core.publish(exchange, key, body, props, mandatory=self.mandatory,
                                 timeout=self.publish_timeout, delay=delay)
        return queue

    def consume_rpc(self, queue: str, timeout: float | None = None) -> Message:
        """Wait (up to ``timeout``, default ``rpc_timeout``) for the reply on ``queue``
        (a name returned by ``rpc_queue_X``); a TimeoutError result when none comes."""
        wait = self.rpc_timeout if timeout is None else timeout
        core = self._core

        async def consume_one() -> Message:
            got: asyncio.Future[tuple[bytes, str | None]] = (
                asyncio.get_running_loop().create_future())

            async def on_message(message: IncomingMessage) -> None:
                delivery = message.delivery
                if not got.done():
                    got.set_result((delivery.body, delivery.content_type))
                    await delivery.ack()
                else:
                    await delivery.nack(requeue=True)

            consumer = await core.consume(queue, on_message, _REPLY_QUEUE, prefetch_count=1)
            try:
                body, content_type = await asyncio.wait_for(got, wait)
            except TimeoutError:
                return MessageResultException("TimeoutError", f"no reply within {wait:g} s")
            finally:
                await consumer.cancel(1.0)
            # the reply queue served its one reply: drop it (and its registry entry, which
            # would otherwise be declared again after every reconnection); after a timeout
            # it stays, for a later consume_rpc
            with contextlib.suppress(PostageError):
                await core.delete_queue(queue, timeout=5.0)
            return self._decode_reply(body, content_type)

        # the wait, then the consumer's cancel and the queue's deletion
        result: Message = self._wait(consume_one, bound=wait + 10.0)
        return result

    def message(self, *args: Any, **kwds: Any) -> None:
        """Send a generic :class:`Message` carrying ``args`` and ``kwds``."""
        eks = self._get_eks(kwds)
        message = Message(*args, **kwds)
        self._publish(eks, self._stamp(message), "message")

    def forward(self, body: dict[str, Any], *args: Any, **kwds: Any) -> None:
        """Send an already built message body unchanged (``_key``/``_eks`` apply)."""
        eks = self._get_eks(kwds)
        self._publish(eks, self.encoder.encode(body), "forward")

    # -- the magic methods --------------------------------------------------------------

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        for prefix, kind, queue_only in (
            ("rpc_queue_", "rpc", True), ("message_", "message", False), ("rpc_", "rpc", False),
            ("gather_", "rpc", False),
        ):
            if name.startswith(prefix) and len(name) > len(prefix):
                command = name[len(prefix):]
                try:
                    build: Callable[..., Message] = object.__getattribute__(
                        self, f"build_{kind}_{command}")
                except AttributeError:
                    build = functools.partial(_default_build, kind, command)
                verb: Callable[..., Any]
                if prefix == "gather_":
                    verb = functools.partial(self._gather_send, build)
                elif kind == "message":
                    verb = functools.partial(self._message_send, build)
                elif queue_only:
                    verb = functools.partial(self._rpc_send, build, _queue_only=True)
                else:
                    verb = functools.partial(self._rpc_send, build)
                # kept on the instance: the next message_X is a plain attribute lookup
                self.__dict__[name] = verb
                return verb
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for attr in list(names):
            for kind in ("message", "rpc"):
                prefix = f"build_{kind}_"
                if attr.startswith(prefix):
                    names.add(f"{kind}_{attr[len(prefix):]}")
                    if kind == "rpc":
                        names.add(f"rpc_queue_{attr[len(prefix):]}")
                        names.add(f"gather_{attr[len(prefix):]}")
        return sorted(names)


def _pop_delay(kwds: dict[str, Any]) -> float | None:
    """The ``_delay`` (seconds) or ``_not_before`` (a datetime) of a call, taken out."""
    return resolve_delay(kwds.pop("_delay", None), kwds.pop("_not_before", None))


def default_parameters(args: tuple[Any, ...], kwds: dict[str, Any]) -> Any:
    """The ``parameters`` of ``message_X(*args, **kwds)`` without a build method.

    As in Postage 1.2: ``X()`` sends ``{}``, ``X(value)`` and ``X(parameters=value)`` send
    ``value``. Anything else (several positional arguments, other keywords), which 1.2
    refused with TypeError, is packed as ``{"args": [...], "kwds": {...}}``.
    """
    if not kwds and len(args) <= 1:
        return args[0] if args else None
    if not args and len(kwds) == 1 and "parameters" in kwds:
        return kwds["parameters"]
    return {"args": list(args), "kwds": kwds}


def _default_build(kind: str, command: str, *args: Any, **kwds: Any) -> Message:
    parameters = default_parameters(args, kwds)
    if kind == "rpc":
        return RpcCommand(command, parameters)
    return MessageCommand(command, parameters)
