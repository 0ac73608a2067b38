"""RPC on direct reply-to: correlation ids, pending calls with one deadline heap, gather.

Requests go out through the core's outbound pipeline with ``reply_to =
amq.rabbitmq.reply-to``; replies come back on the transport's reply consumer and resolve
the pending call with their correlation id. Each call has a deadline (``RpcTimeout``); the
number of pending calls is bounded (``RpcBacklogFull``); a lost connection fails the calls
whose replies can no longer arrive.
"""

from __future__ import annotations

__all__ = ["RpcClient"]

import asyncio
import functools
import heapq
import itertools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, DeliveryTimeout, RpcBacklogFull, RpcTimeout
from .._transport import DIRECT_REPLY_TO, Delivery
from .._wire.properties import Properties

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("postage.core")

class _PendingCall:
    # Small on purpose (10,000 pending calls must stay under 20 MB): no timer handle
    # per call, the RPC client's one deadline heap expires them (RpcClient._sweep_deadlines).
    __slots__ = ("cid", "deadline", "exchange", "future", "on_reply", "pending",
                 "routing_key", "sent", "timeout", "transform")

    def __init__(self, future: asyncio.Future[Any],
                 on_reply: Callable[[Delivery], None] | None = None) -> None:
        self.future = future
        self.deadline: float | None = None
        self.exchange = ""
        self.routing_key = ""
        self.timeout = 0.0
        self.transform: Callable[[Delivery], Any] | None = None
        self.sent = False
        # Set for a scatter/gather call: every reply goes here and the entry stays
        # pending until ``future`` is done (by max_replies, the deadline or a cancel).
        self.on_reply = on_reply
        self.cid = ""
        self.pending: dict[str, _PendingCall] | None = None

    def __call__(self, _future: asyncio.Future[Any]) -> None:
        """Done callback of ``future``: leave the pending calls (the call object itself
        is the callback, so none is allocated per call)."""
        pending = self.pending
        if pending is not None and pending.get(self.cid) is self:
            del pending[self.cid]


# The longest per-message TTL a request is given (about 24 days, the broker's limit is
# higher): a longer deadline sends no expiration at all.
MAX_EXPIRATION_MS = 2**31 - 1


def expiration(props: Properties, timeout: float) -> str | None:
    """The ``expiration`` of a request whose caller waits ``timeout`` seconds: the broker
    drops it once nobody waits for its answer (one already set is kept)."""
    if props.expiration is not None:
        return props.expiration
    ms = math.ceil(timeout * 1000)
    return str(max(1, ms)) if ms <= MAX_EXPIRATION_MS else None


class RpcClient:
    """The RPC calls of one core (``Core.call``, ``request`` and ``gather`` use it)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._pending: dict[str, _PendingCall] = {}
        # (deadline, correlation id) of pending calls, swept by ONE timer armed for the
        # earliest; entries of answered calls are dropped lazily (and compacted).
        self._deadline_heap: list[tuple[float, str]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._cid_prefix = os.urandom(6).hex()
        self._cid_counter = itertools.count(1)
        self._replies_started = False
        self._replies_task: asyncio.Future[None] | None = None

    def fail_all(self, error: Exception, only_sent: bool = False) -> None:
        """Fail the pending calls (those already sent, with ``only_sent``)."""
        lost = [cid for cid, call in self._pending.items() if call.sent or not only_sent]
        for cid in lost:
            call = self._pending.pop(cid)
            if not call.future.done():
                call.future.set_exception(error)
        if not only_sent:
            self._deadline_heap.clear()
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
                self._deadline_timer = None

    def new_correlation_id(self) -> str:
        return f"{self._cid_prefix}.{next(self._cid_counter)}"

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    async def _start_replies(self) -> None:
        """Start consuming direct reply-to, once. The start runs in a task of its own,
        which a caller running out of time does not cancel: a consume the broker receives
        late (e.g. after a memory alarm held every frame) must not be sent twice."""
        task = self._replies_task
        if task is None or (task.done() and task.exception() is not None):
            task = self._replies_task = asyncio.ensure_future(
                self._core.transport.consume_replies(self._on_reply))
        try:
            await asyncio.wait_for(asyncio.shield(task),
                                   self._core.settings.publish_timeout)
        except TimeoutError:
            blocked = self._core.transport.blocked_reason
            if blocked is not None:
                raise DeliveryTimeout(
                    f"the broker blocked this connection ({blocked}: a memory or disk "
                    "alarm): cannot start receiving RPC replies") from None
            raise DeliveryTimeout(
                "the broker did not start the RPC reply consumer in time") from None
        self._replies_started = True

    async def _on_reply(self, delivery: Delivery) -> None:
        cid = delivery.correlation_id
        call = self._pending.get(cid) if cid is not None else None
        if cid is None or call is None:
            log.debug("reply with unknown correlation id %r dropped (late or foreign)", cid)
            return
        if call.on_reply is not None:  # a gather: many replies, the entry stays
            call.on_reply(delivery)
            return
        del self._pending[cid]
        future = call.future
        if future.done():
            return
        if call.transform is None:
            future.set_result(delivery)
            return
        try:
            value = call.transform(delivery)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)

    async def call(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True, delay: float | None = None,
    ) -> Delivery:
        """Send a request and return the reply's delivery.

        Raises RpcTimeout (a TimeoutError) after ``timeout`` seconds (default
        ``rpc_timeout``), Unroutable at once when no queue receives the request,
        RpcBacklogFull when too many calls are pending.
        """
        cid, future = await self._request(
            exchange, routing_key, body, properties, timeout, mandatory, None, False,
            delay=delay,
        )
        try:
            reply: Delivery = await future
        except asyncio.CancelledError:
            self._pending.pop(cid, None)  # the caller gave up: forget the call
            raise
        return reply

    async def request(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float | None = None,
        mandatory: bool = True, transform: Callable[[Delivery], Any] | None = None,
        expire: bool = True, delay: float | None = None,
    ) -> asyncio.Future[Any]:
        """Send a request; once the broker has confirmed it, return a future of the reply.

        Split from :meth:`call` for APIs that hand the caller a future (the communicator):
        publishing errors (Unroutable, ...) are raised here, at once; the future fails with
        RpcTimeout after ``timeout`` seconds (default ``rpc_timeout``). Cancelling the
        future forgets the call. The confirm itself is awaited for at most
        ``min(timeout, publish_timeout)``. With ``transform``, the future holds
        ``transform(reply)`` instead (or what it raised): an API decoding replies needs
        no second future chained to this one. ``expire=False``: the request stays queued
        after the caller stopped waiting (a task, whose work matters without its result).
        ``delay``: the request reaches ``exchange`` that many seconds later (the deadline
        counts from then; such a request does not expire).
        """
        _cid, future = await self._request(
            exchange, routing_key, body, properties, timeout, mandatory, transform, True,
            expire, delay=delay,
        )
        return future

    async def _request(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties | None,
        timeout: float | None, mandatory: bool, transform: Callable[[Delivery], Any] | None,
        forget_on_cancel: bool, expire: bool = True, *, delay: float | None = None,
    ) -> tuple[str, asyncio.Future[Any]]:
        if not self._replies_started:
            await self._start_replies()
        if len(self._pending) >= self._core.max_pending_calls:
            raise RpcBacklogFull(f"{len(self._pending)} RPC calls are already pending")
        loop = asyncio.get_running_loop()
        timeout = self._core.rpc_timeout if timeout is None else timeout
        props = properties if properties is not None else Properties()
        cid = props.correlation_id or self.new_correlation_id()
        props = replace(props, correlation_id=cid, reply_to=DIRECT_REPLY_TO,
                        expiration=expiration(props, timeout) if expire else props.expiration)
        future: asyncio.Future[Any] = loop.create_future()
        call = _PendingCall(future)
        call.transform = transform
        call.exchange = exchange
        call.routing_key = routing_key
        call.timeout = timeout
        self._pending[cid] = call
        self._add_deadline(loop, cid, call, loop.time() + (delay or 0.0) + timeout)
        if forget_on_cancel:  # (call() forgets by itself: no callback at all)
            call.cid = cid
            call.pending = self._pending
            future.add_done_callback(call)
        try:
            await self._core.publish(
                exchange, routing_key, body, props, mandatory=mandatory, kind="request",
                timeout=min(timeout, self._core.settings.publish_timeout), delay=delay,
                reply=future)
        except BaseException:
            self._forget(cid, call, future)
            future.cancel()
            raise
        call.sent = True
        return cid, future

    def _forget(self, cid: str, call: _PendingCall, _future: asyncio.Future[Any]) -> None:
        if self._pending.get(cid) is call:
            del self._pending[cid]

    def _add_deadline(self, loop: asyncio.AbstractEventLoop, cid: str, call: _PendingCall,
                      deadline: float) -> None:
        call.deadline = deadline
        heap = self._deadline_heap
        if len(heap) > 2 * len(self._pending) + 64:  # mostly answered calls: compact
            heap[:] = [(c.deadline, k) for k, c in self._pending.items()
                       if c.deadline is not None and k != cid]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, cid))
        if self._deadline_timer is None or deadline < self._deadline_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = deadline
            self._deadline_timer = loop.call_at(deadline, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # timers may fire a hair early
        heap = self._deadline_heap
        while heap and heap[0][0] <= now:
            deadline, cid = heapq.heappop(heap)
            call = self._pending.get(cid)
            if call is not None and call.deadline == deadline:
                del self._pending[cid]
                if not call.future.done():
                    call.future.set_exception(RpcTimeout(
                        f"no reply from {call.exchange!r}/{call.routing_key!r} "
                        f"within {call.timeout:g} s"
                    ))
        if heap and not self._core.closed:
            self._deadline_at = heap[0][0]
            self._deadline_timer = loop.call_at(self._deadline_at, self._sweep_deadlines)

    async def gather(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, *, timeout: float,
        max_replies: int | None = None, mandatory: bool = True,
        on_reply: Callable[[Delivery], None] | None = None,
    ) -> list[Delivery]:
        """Scatter/gather: send one request, collect every reply to it.

        For a routing key that reaches several consumers (a fanout key): replies (same
        correlation id, direct reply-to) are collected until ``max_replies`` have arrived
        or ``timeout`` seconds have passed since the call, and returned in arrival order;
        never an RpcTimeout. ``on_reply`` (if given) is called on the loop as each one
        arrives. Raises Unroutable at once (with ``mandatory``) when no queue receives
        the request, ConnectionError when the connection is lost meanwhile (later replies
        could not arrive), RpcBacklogFull like :meth:`call`. Late replies are dropped.
        """
        if max_replies is not None and max_replies < 1:
            raise ConfigurationError("max_replies must be at least 1")
        if not self._replies_started:
            await self._start_replies()
        if len(self._pending) >= self._core.max_pending_calls:
            raise RpcBacklogFull(f"{len(self._pending)} RPC calls are already pending")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        props = properties if properties is not None else Properties()
        cid = props.correlation_id or self.new_correlation_id()
        props = replace(props, correlation_id=cid, reply_to=DIRECT_REPLY_TO,
                        expiration=expiration(props, timeout))
        replies: list[Delivery] = []
        done: asyncio.Future[Delivery] = loop.create_future()

        def collect(delivery: Delivery) -> None:
            if done.done():
                return
            replies.append(delivery)
            if on_reply is not None:
                on_reply(delivery)
            if max_replies is not None and len(replies) >= max_replies:
                done.set_result(delivery)

        call = _PendingCall(done, collect)
        self._pending[cid] = call
        done.add_done_callback(functools.partial(self._forget, cid, call))
        try:
            await self._core.publish(
                exchange, routing_key, body, props, mandatory=mandatory, kind="request",
                timeout=max(0.001, min(timeout, self._core.settings.publish_timeout)),
                reply=done)
            call.sent = True
            await asyncio.wait([done], timeout=max(0.0, deadline - loop.time()))
        finally:
            if not done.done():
                done.cancel()  # forgets the call
        error = None if done.cancelled() else done.exception()
        if error is not None:  # the connection was lost or the core closed
            raise error
        return replies
