"""Publishing on the AMQP connection: confirms, deadlines, retries, replies.

The publisher channel is in confirm mode; many publishes are in flight at once and each
waits only for its own confirm (the broker acks in batches with ``multiple``). The same
channel consumes direct reply-to. Replies go out on a channel without confirms. A publish
whose connection drops before its confirm is sent again after recovery (at least once);
a nack is retried until the deadline.
"""

from __future__ import annotations

__all__ = ["AmqpPublisher"]

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import time
from typing import Any

import aiormq
import aiormq.abc
from aiormq import exceptions as amqp_errors
from pamqp import commands as spec

from ..._exceptions import (
    ConnectionClosed,
    ConnectionError,
    DeliveryTimeout,
    EncodingError,
    PostageError,
    PublishNacked,
    Unroutable,
)
from ..._settings import ConnectionSettings
from ..._wire.properties import Properties, check_name
from ..base import DIRECT_REPLY_TO, DeliveryCallback, Transport
from .consumer import AmqpDelivery, to_amqp
from .errors import is_link_failure, translate_error
from .waits import ClientWaits

log = logging.getLogger("postage.transport")


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


class AmqpPublisher(Transport):
    """The publishing half of :class:`~.transport.AmqpTransport` (which opens and restores
    the connection and channels this uses)."""

    DRAIN_EVERY = 64  # publishes between two that wait for the socket buffer to drain
    NACK_RETRY_WINDOW = 30.0  # s after a reconnection during which nacks are sent again

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        self._connection: Any = None
        self._publisher: Any = None
        self._replier: Any = None  # no confirms: replies (see publish_transient)
        self._waits = ClientWaits()  # publishes, acks and replies inside aiormq
        self._publisher_lock = asyncio.Lock()
        self._deadlines = _DeadlineGuard()
        self._message_id_prefix = f"{os.urandom(8).hex()}."
        self._message_ids = itertools.count(1)
        self._publish_count = 0

    async def publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm.

        Raises Unroutable when a mandatory message reaches no queue, PublishNacked when the
        broker refuses it, NotFound when the exchange does not exist. If the connection
        drops before the confirm, the message is sent again after recovery (at least once).
        """
        check_name("exchange name", exchange)
        check_name("routing key", routing_key)
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
                f"disk alarm): no confirm in time for {where}; it was written to the "
                "connection and may still be delivered once the alarm lifts (sending it "
                "again may deliver it twice)")
        return DeliveryTimeout(f"{what} for {where} in time; it may still be delivered")

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
        self._waits.enter(task, channel)
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
            self._waits.leave(task)

    def _send_again_after_cancel(self, loop: asyncio.AbstractEventLoop,
                                 task: asyncio.Task[Any], deadline: float) -> bool:
        """After a cancellation inside a publish: True to send again, False to give up."""
        if self._waits.interrupted(task):
            # The supervisor interrupted a publish stuck on a lost connection (e.g.
            # waiting for room in its dead write queue): send it again.
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
            if late or isinstance(exc, amqp_errors.ChannelAccessRefused
                                  | amqp_errors.ChannelPreconditionFailed):
                # retrying cannot help (e.g. "fast reply consumer does not exist", a
                # message over the broker's size limit): the broker's own error
                raise translate_error(exc) from None
            if exchange and (self._connection is None or not self._connection.is_closed):
                # A channel-level refusal (e.g. the exchange vanished): check and retry.
                # (The default exchange always exists; checking it is refused.)
                self._known_exchanges.discard(exchange)
                log.debug("publisher channel closed: %s", exc)
        else:
            self._raise_unless_link_failure(exc, late)
        await asyncio.sleep(0.01)
        return nacks

    def _raise_unless_link_failure(self, exc: Exception, late: bool) -> None:
        if isinstance(exc, PostageError):
            raise exc
        if isinstance(exc, TypeError | OverflowError | struct.error | UnicodeEncodeError):
            # the AMQP client cannot encode a property value (bytes, a float beyond a
            # 32-bit float's range, a surrogate): nothing was sent
            raise EncodingError(f"cannot encode the message's properties: {exc}") from None
        if self._closed:
            raise self._failure or ConnectionClosed("the connection is closed") from None
        if not is_link_failure(exc):
            raise translate_error(exc) from None
        if late:
            raise ConnectionError(f"publish failed: {exc}") from None

    async def _after_nack(self, exc: Exception, late: bool, exchange: str, routing_key: str,
                          nacks: int) -> int:
        # The broker nacked. On a healthy connection that is its answer: a queue the
        # message routes to is full and set to reject new messages (x-overflow
        # reject-publish), so PublishNacked at once. Soon after a reconnection it is
        # transient as a rule (a quorum queue whose leader was lost with the old
        # connection's node, while a new one is elected): send again until the deadline.
        recovering = (self.reconnected_at is not None
                      and time.monotonic() - self.reconnected_at < self.NACK_RETRY_WINDOW)
        if late or not recovering:
            times = f" {nacks} times" if nacks > 1 else ""
            raise PublishNacked(
                f"the broker refused a message to {exchange!r}/{routing_key!r}{times} "
                "(basic.nack): a queue it routes to is full and rejects new messages "
                "(x-overflow reject-publish), or could not store it") from None
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
        task = asyncio.current_task()
        assert task is not None
        while True:
            if not self._ready.is_set() or self._closed:
                await self._wait_ready(deadline)
            channel = self._replier
            try:
                if channel is None or channel.is_closed:
                    channel = await self._open_replier(channel)
                self._waits.enter(task, channel)
                try:
                    await channel.basic_publish(
                        body, exchange=exchange, routing_key=routing_key,
                        properties=amqp_properties, timeout=None, wait=False,
                    )
                finally:
                    self._waits.leave(task)
                return
            except asyncio.CancelledError:
                if not self._waits.interrupted(task):
                    raise
                continue  # stuck on a lost connection: sent again once it is back
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
                await callback(AmqpDelivery(message, channel, True, self._waits))
            except Exception:
                log.exception("reply callback failed")

        await channel.basic_consume(DIRECT_REPLY_TO, on_reply, no_ack=True)
