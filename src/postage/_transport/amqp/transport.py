"""The transport: the only module that speaks to the AMQP client library (aiormq).

It owns one long-lived connection with a few reused channels:

* a *control* channel for declarations (reopened after the broker refuses something);
* a *publisher* channel in confirm mode; many publishes are in flight at once and each
  waits only for its own confirm (the broker acks in batches with ``multiple``). The same
  channel consumes direct reply-to (``amq.rabbitmq.reply-to``) for RPC replies;
* one channel per consumer, so that prefetch and failures stay per consumer.

Everything declared through it (exchanges, queues, bindings, consumers) is kept, with strong
references, in a registry. When the connection drops, a supervisor reconnects with backoff
(trying every broker URL in turn), declares the registry again, restarts the consumers and
lets waiting publishers go on; publishes whose confirm never came are sent again.
AMQP client errors are translated into Postage errors here and nowhere else.
"""

from __future__ import annotations

__all__ = ["AmqpTransport"]

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import aiormq
import aiormq.abc
from aiormq import exceptions as amqp_errors
from pamqp import commands as spec

from ..._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionError,
    DeliveryTimeout,
    EncodingError,
    PostageError,
    PublishNacked,
    Unroutable,
    VhostNotFound,
)
from ..._settings import ConnectionSettings, redact_url
from ..._wire.properties import Binding, ExchangeSpec, Properties, QueueSpec
from ..base import DIRECT_REPLY_TO, Consumer, DeliveryCallback, Transport
from .consumer import AmqpConsumer, AmqpDelivery, to_amqp
from .errors import is_link_failure, translate_error
from .flow import watch_flow

log = logging.getLogger("postage.transport")
T = TypeVar("T")

_FATAL_CONNECT = (AuthenticationError, VhostNotFound, ConfigurationError)


async def _bind_on(channel: Any, binding: Binding) -> Any:
    return await channel.queue_bind(
        binding.queue, binding.exchange, routing_key=binding.routing_key,
        arguments=dict(binding.arguments) or None,
    )


def _fail_unconfirmed(channel: Any) -> None:
    """Fail the confirms still awaited on a dead publisher channel (they are retried)."""
    if channel is None:
        return
    for confirmation in list(channel.confirmations.values()):
        if isinstance(confirmation, asyncio.Future) and not confirmation.done():
            confirmation.set_exception(
                amqp_errors.ChannelInvalidStateError("connection lost before the confirm")
            )


async def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await channel.close()


# ---------------------------------------------------------------------------------------

class _DeadlineGuard:
    """Deadlines for many concurrent publishes with one timer per time slot.

    ``asyncio.timeout`` costs a timer handle (heap push, cancel) per message; on the
    publish hot path that is several percent of the CPU. Here a task registers in the set
    of its slot (``RESOLUTION`` seconds wide, rounded up: a deadline fires at most that
    late) and one timer per slot cancels the tasks still registered when it fires.
    :meth:`expired` tells a cancellation by the guard from one by the caller.
    """

    RESOLUTION = 0.05
    __slots__ = ("_expired", "_slots")

    def __init__(self) -> None:
        self._slots: dict[int, set[asyncio.Task[Any]]] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    def add(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any],
            deadline: float) -> int:
        key = int(deadline / self.RESOLUTION) + 1
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            loop.call_at(key * self.RESOLUTION, self._fire, key)
        slot.add(task)
        return key

    def remove(self, task: asyncio.Task[Any], key: int) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.discard(task)
        if task in self._expired:  # expired while finishing anyway: undo our cancel
            self._expired.discard(task)
            task.uncancel()

    def _fire(self, key: int) -> None:
        for task in self._slots.pop(key, ()):
            if not task.done():
                self._expired.add(task)
                task.cancel()

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """True if the guard cancelled ``task`` and nobody else did (then it is
        uncancelled: the caller raises a timeout instead of CancelledError)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0


# ---------------------------------------------------------------------------------------
# the transport


class AmqpTransport(Transport):
    """A recovering AMQP connection with reused channels and a topology registry."""

    DRAIN_EVERY = 64  # publishes between two that wait for the socket buffer to drain

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        self._connection: Any = None
        self._control: Any = None
        self._publisher: Any = None
        self._replier: Any = None  # no confirms: replies (see publish_transient)
        self._supervisor: asyncio.Task[None] | None = None
        self._publishing: dict[asyncio.Task[Any], Any] = {}  # publishes inside aiormq
        self._interrupted: set[asyncio.Task[Any]] = set()
        self._control_lock = asyncio.Lock()
        self._publisher_lock = asyncio.Lock()
        self._deadlines = _DeadlineGuard()
        self._message_id_prefix = f"{os.urandom(8).hex()}."
        self._message_ids = itertools.count(1)
        self._publish_count = 0

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the first broker that answers; raise a Postage error if none does."""
        if self._connection is not None:
            return
        await self._connect_any()
        try:
            await asyncio.wait_for(self._restore(), self.settings.connect_timeout * 3)
        except BaseException:
            connection: Any = self._connection  # set by _connect_any()
            self._connection = None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise
        self._ready.set()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self, timeout: float = 10.0) -> None:
        """Cancel consumers (letting their handlers finish), wait for confirms, disconnect."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for consumer in list(self._consumers.values()):
            await consumer.cancel(timeout=max(0.0, deadline - loop.time()))
        publisher = self._publisher
        if publisher is not None and publisher.confirmations:
            pending = [f for f in publisher.confirmations.values() if isinstance(f, asyncio.Future)]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        self._closed = True
        self._ready.set()  # wake waiters: they see the closed flag
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        connection = self._connection
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), max(0.5, deadline - loop.time()))

    async def _connect_any(self) -> None:
        errors: list[str] = []
        last: PostageError | None = None
        for url in self.settings.urls:
            try:
                connection = await asyncio.wait_for(
                    self._connect(url), self.settings.connect_timeout
                )
            except _FATAL_CONNECT:
                raise
            except PostageError as exc:
                last = exc
                errors.append(f"{redact_url(url)}: {exc}")
                continue
            except TimeoutError:
                last = ConnectionError(f"{redact_url(url)}: no answer within "
                                       f"{self.settings.connect_timeout:g} s")
                errors.append(str(last))
                continue
            self._connection = connection
            self.url = url
            return
        if len(errors) == 1 and last is not None:
            raise last
        raise ConnectionError("no broker could be reached: " + "; ".join(errors))

    async def _connect(self, url: str) -> Any:
        sp = urlsplit(url)
        query = dict(parse_qsl(sp.query))
        for ours in ("cafile", "certfile", "keyfile", "no_verify_ssl", "connection_timeout"):
            query.pop(ours, None)
        query["heartbeat"] = str(self.settings.heartbeat)
        if self.settings.name:
            query["name"] = self.settings.name
        client_url = sp._replace(query=urlencode(query)).geturl()
        context = self._ssl_context() if sp.scheme == "amqps" else None
        properties = {"product": "postage", **dict(self.settings.client_properties)}
        try:
            connection = await aiormq.connect(client_url, context=context,
                                              client_properties=properties)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise self._connect_error(url, exc) from None
        self._set_blocked(None)
        watch_flow(connection, self._on_flow)
        return connection

    def _on_flow(self, reason: str | None) -> None:
        if reason is None:
            log.warning("the broker unblocked the connection")
        else:
            log.warning("the broker blocked the connection: %s (sends wait until it lifts "
                        "or their deadline passes)", reason)
        self._set_blocked(reason)

    @staticmethod
    def _connect_error(url: str, exc: BaseException) -> PostageError:
        sp = urlsplit(url)
        error = translate_error(exc)
        where = f"{sp.hostname}:{sp.port or (5671 if sp.scheme == 'amqps' else 5672)}"
        user = unquote(sp.username or "guest")
        if isinstance(error, AuthenticationError):
            return AuthenticationError(
                f"the broker at {where} refused user {user!r}: wrong user name or "
                "password (ACCESS_REFUSED)")
        if isinstance(error, VhostNotFound):
            vhost = unquote(sp.path[1:]) if len(sp.path) > 1 else "/"
            return VhostNotFound(
                f"the broker at {where} refused virtual host {vhost!r} for user {user!r}: "
                "it does not exist or the user has no permission on it")
        return ConnectionError(f"{redact_url(url)}: {error}")

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.settings.tls
        try:
            context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
            if tls is not None:
                if tls.cert_file:
                    context.load_cert_chain(tls.cert_file, tls.key_file)
                if not tls.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                elif not tls.check_hostname:
                    context.check_hostname = False
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load TLS files: {exc}") from None
        return context

    async def _restore(self) -> None:
        """(Re)open channels and declare everything in the registry."""
        connection = self._connection
        self._control = await connection.channel(publisher_confirms=False)
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=False)
        # One object the broker refuses (e.g. a classic queue whose home node is down)
        # must not keep everything else from working: it is retried in the background.
        unavailable: set[str] = set()
        for exchange in list(self._exchanges.values()):
            await self._restore_step(self._declare_exchange_on, exchange)
        for queue in list(self._queues.values()):
            if not await self._restore_step(self._declare_queue_on, queue):
                unavailable.add(queue.name)
        for binding in list(self._bindings):
            if binding.queue not in unavailable:
                await self._restore_step(_bind_on, binding)
        if self._reply_callback is not None:
            await self._consume_replies(self._reply_callback)
        for consumer in list(self._consumers.values()):
            if not consumer.active:
                continue
            if consumer.queue in unavailable:
                self._spawn(self._restart_consumer(consumer, declare=True))
            else:
                await consumer._start(connection)

    async def _restore_step(self, declare: Callable[[Any, Any], Awaitable[Any]], item: Any) -> bool:
        try:
            await declare(self._control, item)
        except amqp_errors.ChannelClosed as exc:
            log.warning("cannot restore %s after reconnecting: %s", item, translate_error(exc))
            self._control = await self._connection.channel(publisher_confirms=False)
            return False
        return True

    async def _supervise(self) -> None:
        while not self._closed:
            connection = self._connection
            with contextlib.suppress(BaseException):
                await connection.closing
            if self.closed:  # close() ran while we waited
                return
            reason = None
            if connection.closing.done() and not connection.closing.cancelled():
                reason = connection.closing.exception()
            self._ready.clear()
            lost_publisher = self._publisher
            _fail_unconfirmed(lost_publisher)
            self._interrupt_publishes(lost_publisher)
            if not self.settings.reconnect:
                self._failure = ConnectionClosed(f"connection lost: {reason}")
                self._closed = True
                self._ready.set()
                return
            log.warning("connection to %s lost (%s); reconnecting", redact_url(self.url or ""),
                        reason)
            delay = self.settings.reconnect_delay
            while not self._closed:
                try:
                    await self._connect_any()
                    await asyncio.wait_for(self._restore(), self.settings.recovery_timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("reconnection failed (%s); next try in %.1f s", exc, delay)
                    if self._connection is not None and not self._connection.is_closed:
                        with contextlib.suppress(Exception):
                            await self._connection.close()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
                    continue
                break
            # A publish that raced the loss may have registered its confirm on the dead
            # channel after the client library failed the others: fail it too, it is sent again.
            _fail_unconfirmed(lost_publisher)
            self._interrupt_publishes(lost_publisher)
            log.warning("reconnected to %s; topology and consumers restored",
                        redact_url(self.url or ""))
            self._reconnected()

    def _interrupt_publishes(self, lost: Any) -> None:
        """Cancel publishes still inside the client library on a lost channel (they may
        wait forever for room in a dead connection's write queue); they notice the
        interruption and send again once the connection is back."""
        for task, channel in list(self._publishing.items()):
            stuck = channel is lost or channel.is_closed
            if stuck and not task.done() and task not in self._interrupted:
                self._interrupted.add(task)
                task.cancel()

    # -- declarations -----------------------------------------------------------------

    async def _control_call(self, op: Callable[[Any], Awaitable[T]], timeout: float | None) -> T:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            await self._wait_ready(deadline)
            async with self._control_lock:
                channel = self._control
                try:
                    if channel is None or channel.is_closed:
                        channel = self._control = await self._connection.channel(
                            publisher_confirms=False
                        )
                    remaining = None if deadline is None else max(0.01, deadline - loop.time())
                    return await asyncio.wait_for(op(channel), remaining)
                except TimeoutError:
                    raise DeliveryTimeout("the broker did not answer in time") from None
                except amqp_errors.ChannelClosed as exc:
                    if self._connection is not None and self._connection.is_closed:
                        pass  # the link failed: wait for recovery and try again
                    else:
                        self._control = None
                        raise translate_error(exc) from None
                except Exception as exc:
                    if not is_link_failure(exc):
                        raise translate_error(exc) from None
            if self._closed:
                raise self._failure or ConnectionClosed("the connection is closed")
            await asyncio.sleep(0.05)  # the supervisor notices the drop and reconnects

    @staticmethod
    async def _declare_exchange_on(channel: Any, ex: ExchangeSpec, passive: bool = False) -> None:
        await channel.exchange_declare(
            exchange=ex.name,
            exchange_type=ex.type,
            passive=passive,
            durable=ex.durable,
            auto_delete=ex.auto_delete,
            internal=ex.internal,
            arguments=dict(ex.arguments) or None,
        )

    @staticmethod
    async def _declare_queue_on(channel: Any, q: QueueSpec, passive: bool = False) -> Any:
        return await channel.queue_declare(
            q.name,
            passive=passive,
            durable=q.durable,
            exclusive=q.exclusive,
            auto_delete=q.auto_delete,
            arguments=dict(q.arguments) or None,
        )

    async def declare_exchange(self, exchange: ExchangeSpec, *, timeout: float = 30.0) -> None:
        """Declare ``exchange`` once per connection; it is declared again after reconnecting."""
        if self._exchanges.get(exchange.name) == exchange or exchange.name == "":
            return
        await self._control_call(lambda ch: self._declare_exchange_on(ch, exchange), timeout)
        self._exchanges[exchange.name] = exchange
        self._known_exchanges.add(exchange.name)

    async def check_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        """Raise NotFound unless exchange ``name`` exists (the answer is cached)."""
        if name in self._known_exchanges:
            return
        probe = ExchangeSpec(name)
        await self._control_call(lambda ch: self._declare_exchange_on(ch, probe, True), timeout)
        self._known_exchanges.add(name)

    async def declare_queue(self, queue: QueueSpec, *, timeout: float = 30.0) -> tuple[int, int]:
        """Declare ``queue``; return (messages ready, consumers). Redeclared after reconnecting."""
        ok = await self._control_call(lambda ch: self._declare_queue_on(ch, queue), timeout)
        self._queues[queue.name] = queue
        return ok.message_count, ok.consumer_count

    async def queue_state(self, name: str, *, timeout: float = 30.0) -> tuple[int, int]:
        """(messages ready, consumers) of an existing queue; NotFound if there is none."""
        ok = await self._control_call(
            lambda ch: self._declare_queue_on(ch, QueueSpec(name), True), timeout
        )
        return ok.message_count, ok.consumer_count

    async def delete_queue(self, name: str, *, timeout: float = 30.0) -> None:
        self._forget_queue(name)
        await self._control_call(lambda ch: ch.queue_delete(name), timeout)

    async def delete_exchange(self, name: str, *, timeout: float = 30.0) -> None:
        self._exchanges.pop(name, None)
        self._known_exchanges.discard(name)
        await self._control_call(lambda ch: ch.exchange_delete(name), timeout)

    async def purge_queue(self, name: str, *, timeout: float = 30.0) -> None:
        await self._control_call(lambda ch: ch.queue_purge(name), timeout)

    async def bind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        """Bind a queue to an exchange; the binding is restored after reconnecting."""
        if binding in self._bindings:
            return
        await self._control_call(
            lambda ch: ch.queue_bind(
                binding.queue, binding.exchange, routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            ),
            timeout,
        )
        self._bindings[binding] = None

    async def unbind(self, binding: Binding, *, timeout: float = 30.0) -> None:
        self._bindings.pop(binding, None)
        await self._control_call(
            lambda ch: ch.queue_unbind(
                binding.queue, binding.exchange, routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            ),
            timeout,
        )

    # -- publishing -------------------------------------------------------------------

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm.

        Raises Unroutable when a mandatory message reaches no queue, PublishNacked when the
        broker refuses it, NotFound when the exchange does not exist. If the connection
        drops before the confirm, the message is sent again after recovery (at least once).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.settings.publish_timeout)
        task = asyncio.current_task()
        assert task is not None
        # The deadline is enforced once for the whole publish (retries included) by a
        # shared guard, not by a timer per message in aiormq.
        slot = self._deadlines.add(loop, task, deadline)
        try:
            return await self._publish(
                loop, task, deadline, exchange, routing_key, body,
                to_amqp(properties, f"{self._message_id_prefix}{next(self._message_ids)}"),
                mandatory,
            )
        except asyncio.CancelledError:
            if self._deadlines.expired(task):
                raise self._send_timeout(exchange, routing_key, "no confirm") from None
            raise
        except DeliveryTimeout:
            if self.blocked_reason is None:
                raise
            raise self._send_timeout(exchange, routing_key, "no confirm") from None
        finally:
            self._deadlines.remove(task, slot)  # (also forgets an expiry it did not see)

    def _send_timeout(self, exchange: str, routing_key: str, what: str) -> DeliveryTimeout:
        where = f"a message to {exchange!r}/{routing_key!r}"
        if self.blocked_reason is not None:
            return DeliveryTimeout(
                f"the broker blocked this connection ({self.blocked_reason}: a memory or "
                f"disk alarm): {where} could not be sent in time")
        return DeliveryTimeout(f"{what} for {where} in time")

    async def _publish(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], deadline: float,
        exchange: str, routing_key: str, body: bytes, amqp_properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        nacks = 0
        while True:
            try:
                result = await self._publish_once(task, deadline, exchange, routing_key, body,
                                                  amqp_properties, mandatory)
            except asyncio.CancelledError:
                if not self._send_again_after_cancel(loop, task, deadline):
                    raise
                await asyncio.sleep(0.01)
                continue
            except Exception as exc:
                nacks = await self._send_again_or_raise(exc, loop, deadline, exchange,
                                                        routing_key, nacks)
                continue
            if result is None or isinstance(result, spec.Basic.Ack):
                return
            if isinstance(result, spec.Basic.Nack):
                raise PublishNacked(f"the broker nacked a message to {exchange!r}/{routing_key!r}")
            raise Unroutable(exchange, routing_key)

    async def _publish_once(
        self, task: asyncio.Task[Any], deadline: float, exchange: str, routing_key: str,
        body: bytes, amqp_properties: spec.Basic.Properties, mandatory: bool,
    ) -> Any:
        loop = asyncio.get_running_loop()
        if exchange not in self._known_exchanges:
            await self.check_exchange(exchange, timeout=max(0.01, deadline - loop.time()))
        if not self._ready.is_set() or self._closed:
            await self._wait_ready(deadline)
        channel = self._publisher
        if channel is None or channel.is_closed:
            channel = await self._reopen_publisher(channel)
        # wait=False: do not hold the channel lock until the writer has flushed this very
        # frame (one ping-pong with the writer task per message); frames of concurrent
        # publishes queue up and are written back to back. Every DRAIN_EVERY-th publish
        # still waits for the socket buffer to drain, so a slow broker pushes back. The
        # confirm is awaited either way.
        self._publish_count += 1
        self._publishing[task] = channel
        try:
            return await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=amqp_properties,
                mandatory=mandatory,
                timeout=None,
                wait=self._publish_count % self.DRAIN_EVERY == 0,
            )
        finally:
            self._publishing.pop(task, None)

    def _send_again_after_cancel(self, loop: asyncio.AbstractEventLoop,
                                 task: asyncio.Task[Any], deadline: float) -> bool:
        """After a cancellation inside a publish: True to send again, False to give up."""
        if task in self._interrupted:
            # The supervisor interrupted a publish stuck on a lost connection (e.g.
            # waiting for room in its dead write queue): send it again.
            self._interrupted.discard(task)
            task.uncancel()
            return True
        if task.cancelling():
            return False  # we were cancelled (by the caller or the deadline guard)
        # aiormq cancels the confirms of a channel it closes: send again
        if loop.time() >= deadline:
            raise ConnectionError("publish failed: the channel was closed") from None
        return True

    async def _send_again_or_raise(
        self, exc: Exception, loop: asyncio.AbstractEventLoop, deadline: float,
        exchange: str, routing_key: str, nacks: int,
    ) -> int:
        """Wait a little and return the nack count if the publish may be sent again;
        raise the Postage error it deserves otherwise."""
        late = loop.time() >= deadline
        if isinstance(exc, amqp_errors.DeliveryError):
            return await self._after_nack(exc, late, exchange, routing_key, nacks + 1)
        if isinstance(exc, amqp_errors.ChannelClosed):
            if isinstance(exc, amqp_errors.ChannelAccessRefused) or late:
                raise translate_error(exc) from None  # retrying cannot help
            if self._connection is None or not self._connection.is_closed:
                # A channel-level refusal (e.g. the exchange vanished): check and retry.
                self._known_exchanges.discard(exchange)
                log.debug("publisher channel closed: %s", exc)
        else:
            self._raise_unless_link_failure(exc, late)
        await asyncio.sleep(0.01)
        return nacks

    def _raise_unless_link_failure(self, exc: Exception, late: bool) -> None:
        if isinstance(exc, PostageError):
            raise exc
        if isinstance(exc, TypeError):  # the AMQP client cannot encode a property value
            raise EncodingError(f"cannot encode the message's properties: {exc}") from None
        if self._closed:
            raise self._failure or ConnectionClosed("the connection is closed") from None
        if not is_link_failure(exc):
            raise translate_error(exc) from None
        if late:
            raise ConnectionError(f"publish failed: {exc}") from None

    async def _after_nack(self, exc: Exception, late: bool, exchange: str, routing_key: str,
                          nacks: int) -> int:
        # The broker nacked: it could not take the message (e.g. a quorum queue electing
        # a new leader). Transient as a rule: send again until the deadline.
        if late:
            raise PublishNacked(
                f"the broker nacked a message to {exchange!r}/{routing_key!r} "
                f"{nacks} times: {exc}") from None
        channel = self._publisher
        if nacks % 3 == 0 and channel is not None:
            # A channel can keep nacking after a quorum queue's leader moved (it still
            # targets the old one): a fresh channel fixes that.
            log.warning("broker keeps nacking on the publisher channel; reopening it")
            self._spawn(_close_quietly(channel))
        await asyncio.sleep(min(0.5, 0.01 * nacks))
        return nacks

    async def publish_transient(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties | None = None,
        *, timeout: float | None = None,
    ) -> None:
        """Send without confirm, on a channel of its own (e.g. an RPC reply to direct
        reply-to, which the broker does not keep anyway).

        Returns once the frame is queued on the connection, ahead of anything written
        after it on any channel (an ack of the request, say): if the link drops before
        it reaches the broker, so does the ack and the request comes again. Waits for a
        lost connection to come back (up to ``timeout``, default ``publish_timeout``).
        Raises ConnectionError when it cannot be sent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.settings.publish_timeout)
        message_id = f"{self._message_id_prefix}{next(self._message_ids)}"
        amqp_properties = to_amqp(properties, message_id)
        while True:
            if not self._ready.is_set() or self._closed:
                await self._wait_ready(deadline)
            channel = self._replier
            try:
                if channel is None or channel.is_closed:
                    channel = await self._open_replier(channel)
                await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key,
                    properties=amqp_properties, timeout=None, wait=False,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    raise self._failure or ConnectionClosed("the connection is closed") from None
                if loop.time() >= deadline or not (
                    is_link_failure(exc) or isinstance(exc, amqp_errors.ChannelClosed)
                ):
                    raise ConnectionError(f"cannot send to {routing_key!r}: {exc}") from None
                await asyncio.sleep(0.01)

    async def _open_replier(self, old: Any) -> Any:
        async with self._publisher_lock:
            current = self._replier
            if current is not old and current is not None and not current.is_closed:
                return current
            if self._connection is None or self._connection.is_closed:
                raise amqp_errors.ChannelInvalidStateError("connection closed")
            self._replier = await self._connection.channel(publisher_confirms=False)
            return self._replier

    async def _reopen_publisher(self, old: Any) -> Any:
        async with self._publisher_lock:
            current = self._publisher
            if current is not old and current is not None and not current.is_closed:
                return current
            if self._connection is None or self._connection.is_closed:
                raise amqp_errors.ChannelInvalidStateError("connection closed")
            self._publisher = await self._connection.channel(
                publisher_confirms=True, on_return_raises=False
            )
            if self._reply_callback is not None:
                await self._consume_replies(self._reply_callback)
            return self._publisher

    # -- consuming --------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        callback: DeliveryCallback,
        *,
        prefetch_count: int = 0,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> Consumer:
        """Start consuming ``queue`` on a channel of its own; restored after reconnecting.

        ``callback`` is awaited for each message (in its own task); unless ``no_ack``,
        it must settle the delivery.
        """
        if prefetch_count < 0:
            raise ConfigurationError("prefetch_count must be 0 (no limit) or more")
        consumer = AmqpConsumer(
            self, queue, callback, prefetch_count=prefetch_count, no_ack=no_ack,
            exclusive=exclusive, arguments=arguments,
        )
        await self._wait_ready(asyncio.get_running_loop().time() + timeout)
        try:
            await asyncio.wait_for(consumer._start(self._connection), timeout)
        except TimeoutError:
            raise DeliveryTimeout("the broker did not start the consumer in time") from None
        except Exception as exc:
            if consumer.channel is not None and not consumer.channel.is_closed:
                with contextlib.suppress(Exception):
                    await consumer.channel.close()
            raise translate_error(exc) from None
        self._consumers[consumer.tag] = consumer
        return consumer

    async def _restart_consumer(self, consumer: Consumer, *, declare: bool) -> None:
        assert isinstance(consumer, AmqpConsumer)
        if consumer._restarting:
            return
        consumer._restarting = True
        delay = self.settings.reconnect_delay
        try:
            while consumer.active and not self._closed:
                try:
                    await self._wait_ready(None)
                    if declare and consumer.queue in self._queues:
                        queue_spec = self._queues[consumer.queue]
                        await self._control_call(
                            functools.partial(self._declare_queue_on, q=queue_spec), 30
                        )
                        for binding in [b for b in self._bindings if b.queue == consumer.queue]:
                            await self._control_call(
                                functools.partial(_bind_on, binding=binding), 30
                            )
                    old = consumer.channel
                    if old is not None and not old.is_closed:
                        with contextlib.suppress(Exception):
                            await old.close()
                    await consumer._start(self._connection)
                    log.warning("consumer of queue %r restored", consumer.queue)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("cannot restore the consumer of %r yet (%s)", consumer.queue, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
        finally:
            consumer._restarting = False

    async def consume_replies(self, callback: DeliveryCallback) -> None:
        """Receive direct reply-to replies (``reply_to = amq.rabbitmq.reply-to``)."""
        self._reply_callback = callback
        await self._wait_ready(None)
        channel = self._publisher
        try:
            if channel is None or channel.is_closed:
                # e.g. the broker closed it after a refused publish; the new one consumes
                await self._reopen_publisher(channel)
                return
            async with self._publisher_lock:
                if self._publisher is channel:  # else a reopen already consumes replies
                    await self._consume_replies(callback)
        except PostageError:
            raise
        except Exception as exc:
            raise translate_error(exc) from None

    async def _consume_replies(self, callback: DeliveryCallback) -> None:
        channel = self._publisher

        async def on_reply(message: aiormq.abc.DeliveredMessage) -> None:
            try:
                await callback(AmqpDelivery(message, channel, True))
            except Exception:
                log.exception("reply callback failed")

        await channel.basic_consume(DIRECT_REPLY_TO, on_reply, no_ack=True)
