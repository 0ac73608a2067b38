"""The asyncio communicator: kiwiPy's verbs (tasks, RPC, filtered broadcasts) on the core.

All the communicator's logic lives here, once; the blocking :class:`Communicator` only
submits these coroutines to a portal. Routing details are hidden behind defaults:

* tasks: durable queue ``Q`` bound to the direct exchange ``postage.tasks`` with key ``Q``,
  persistent messages, consumed through ``Core.subscribe`` (ack after the subscriber,
  bounded retries, then ``Q.dlq``); the result comes back like an RPC reply;
* RPC: subscriber ``X`` consumes the exclusive auto-delete queue ``postage.rpc.X`` bound to
  the direct exchange ``postage.rpc`` with key ``X`` (one server per identifier, as in
  kiwiPy), requests are mandatory so a call nobody can receive fails at once;
* broadcasts: the topic exchange ``postage.broadcast``; each receiving communicator has one
  exclusive auto-delete queue bound with ``#``; subjects are filtered on the client, because
  kiwiPy's ``*`` also matches dots, which an AMQP binding cannot express.

Subscribers may be plain functions (run in worker threads through ``Core.run_sync``) or
``async def`` functions (run on the loop); a returned future or awaitable is awaited.
"""

from __future__ import annotations

__all__ = ["AsyncCommunicator", "AsyncTaskQueue", "CommunicatorOptions", "open_communicator"]

import asyncio
import concurrent.futures
import contextlib
import datetime
import inspect
import logging
import signal
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any

from ..._core.core import Core, HandlingOptions, Subscription, open_core
from ..._core.middleware import IncomingMessage
from ..._core.workers import is_async_callable
from ..._exceptions import (
    ConfigurationError,
    ConnectionClosed,
    PostageError,
    Unroutable,
)
from ..._transport import Delivery
from ..._wire.delays import resolve_delay
from ..._wire.fingerprint import Fingerprint
from ..._wire.properties import PERSISTENT
from ..gather import GatherReply, gather_replies
from ..presence import PresenceAnnouncer
from . import wire as _wire
from .broadcasts import BroadcastReceiver
from .filters import BroadcastFilter
from .options import CommunicatorOptions
from .tasks import AsyncTaskQueue, EnvelopeReplies, Subscriber, find_subscriber

log = logging.getLogger("postage.communicator")

NO_DEADLINE = 10 * 365 * 86400.0  # what ``task_timeout=None`` stands for: ten years


class AsyncCommunicator:
    """kiwiPy-style messaging on one Postage core: the verbs are coroutines.

    Use ``async with await postage.aio.connect(url) as comm`` (or ``comm = await
    connect(url)`` then ``await comm.close()``). Futures returned by ``task_send`` and
    ``rpc_send`` are asyncio futures of this loop.
    """

    def __init__(self, core: Core, options: CommunicatorOptions | None = None, *,
                 owns_core: bool = False) -> None:
        self.core = core
        self.options = options or CommunicatorOptions()
        self._owns_core = owns_core
        self._fingerprint = Fingerprint(name=self.options.name, type="communicator").as_dict()
        # The communicator passed to subscribers: the blocking facade sets itself here.
        self.callback_comm: Any = self
        self._declared = False
        self._declare_lock = asyncio.Lock()
        self._default_queue: AsyncTaskQueue | None = None
        self._rpc: dict[str, tuple[Subscriber, Subscription, str]] = {}
        self._broadcasts = BroadcastReceiver(self)
        self._task_queues: list[AsyncTaskQueue] = []
        self._outstanding: set[asyncio.Future[Any]] = set()
        self._forget_outstanding = self._outstanding.discard  # one bound method for all
        self._presence: PresenceAnnouncer | None = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> AsyncCommunicator:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed("the communicator is closed")

    async def close(self, timeout: float | None = None) -> None:
        """Stop the subscribers (letting running ones finish), wait for outstanding
        confirms, then disconnect. Result futures still waiting are cancelled."""
        if self._closed:
            return
        self._closed = True
        timeout = self.options.close_timeout if timeout is None else timeout
        if self._presence is not None:
            await self._presence.stop(timeout=min(timeout, 5.0))
        for future in list(self._outstanding):
            future.cancel()
        # Every consumer stops at once and their handlers finish in parallel, so that
        # ``timeout`` bounds the whole close (not each subscriber in turn).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cancels: list[Awaitable[None]] = []
        for queue in self._task_queues:
            cancels += [sub.cancel(timeout) for _, sub in queue._subscribers.values()]
            queue._subscribers.clear()
        cancels += [sub.cancel(timeout) for _, sub, _ in self._rpc.values()]
        if self._broadcasts.consumer is not None:
            cancels.append(self._broadcasts.consumer.cancel(timeout))
        await asyncio.gather(*cancels, return_exceptions=True)
        if self._owns_core:
            await self.core.close(max(0.5, deadline - loop.time()))

    async def abort(self) -> None:
        """Close now: running subscribers are not waited for, and the messages they have
        not acked go back to their queues (see :meth:`Core.abort`)."""
        self._closed = True
        for future in list(self._outstanding):
            future.cancel()
        if self._owns_core:
            await self.core.abort()

    async def run_until_signal(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), *,
        close_timeout: float | None = None,
    ) -> int | None:
        """Serve the subscribers until one of ``signals`` arrives, then :meth:`close`
        gracefully (stop consuming, let running subscribers finish within
        ``close_timeout``, ack their tasks, wait for confirms). Return the signal number
        (None when the communicator was closed otherwise). An explicit opt-in for a
        program whose main loop this is: it needs the main thread's event loop
        (``asyncio.run``); the previous signal handlers are restored afterwards."""
        self._check_open()
        loop = asyncio.get_running_loop()
        caught: asyncio.Future[int] = loop.create_future()
        previous = {sig: signal.getsignal(sig) for sig in signals}

        def on_signal(sig: int) -> None:
            if not caught.done():
                log.info("signal %s: closing the communicator gracefully",
                         signal.Signals(sig).name)
                caught.set_result(sig)

        try:
            for sig in signals:
                loop.add_signal_handler(sig, on_signal, sig)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            for sig in signals:
                loop.remove_signal_handler(sig)
            raise ConfigurationError(
                f"run_until_signal needs the main thread's event loop: {exc}") from None
        try:
            while not self._closed:
                done, _ = await asyncio.wait({caught}, timeout=1.0)
                if done:
                    await self.close(close_timeout)
                    return caught.result()
            return None
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
                handler = previous[sig]
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    async def _declare_exchanges(self) -> None:
        if self._declared:
            return
        async with self._declare_lock:
            if not self._declared:
                opts = self.options
                await self.core.declare_exchange(opts.task_exchange, "direct", durable=True)
                await self.core.declare_exchange(opts.rpc_exchange, "direct", durable=True)
                await self.core.declare_exchange(opts.broadcast_exchange, "topic", durable=True)
                self._declared = True

    # -- tasks ------------------------------------------------------------------------

    async def task_queue(self, name: str, prefetch_count: int | None = None) -> AsyncTaskQueue:
        """The durable task queue ``name`` (declared now)."""
        self._check_open()
        await self._declare_exchanges()
        prefetch = self.options.task_prefetch_count if prefetch_count is None else prefetch_count
        if prefetch < 0:
            raise ConfigurationError("prefetch_count must be 0 (no limit) or more")
        queue = AsyncTaskQueue(self, name, prefetch)
        await queue._declare()
        self._task_queues.append(queue)
        return queue

    async def _default(self) -> AsyncTaskQueue:
        if self._default_queue is None:
            self._default_queue = await self.task_queue(self.options.task_queue)
        return self._default_queue

    async def task_send(self, task: Any, no_reply: bool = False, delay: float | None = None,
                        not_before: datetime.datetime | None = None,
                        ) -> asyncio.Future[Any] | None:
        """Send ``task`` to the default task queue (see :meth:`AsyncTaskQueue.task_send`)."""
        return await (await self._default()).task_send(task, no_reply, delay, not_before)

    async def add_task_subscriber(self, subscriber: Subscriber,
                                  identifier: str | None = None) -> str:
        """Subscribe to the default task queue."""
        return await (await self._default()).add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: str | Subscriber) -> None:
        """Remove a subscriber of the default task queue."""
        await (await self._default()).remove_task_subscriber(identifier)

    async def _send_task(self, queue: str, task: Any, no_reply: bool,
                         delay: float | None = None) -> asyncio.Future[Any] | None:
        self._check_open()
        await self._declare_exchanges()
        envelope = _wire.request_envelope(_wire.TASK_TYPE, queue, task, reply=not no_reply,
                                          fingerprint=self._fingerprint)
        body = self.core.encode(envelope)
        props = self.core.properties(delivery_mode=PERSISTENT)
        exchange = self.options.task_exchange
        if no_reply:
            # the connection's publish_timeout bounds the wait for the confirm
            await self.core.publish(exchange, queue, body, props, mandatory=True, delay=delay)
            return None
        timeout = self.options.task_timeout
        # no expiration: the task is worth doing even when nobody waits for its result
        reply = await self.core.request(exchange, queue, body, props,
                                        timeout=NO_DEADLINE if timeout is None else timeout,
                                        transform=self._result_value, expire=False,
                                        delay=delay)
        return self._track(reply)

    # -- RPC --------------------------------------------------------------------------

    async def rpc_send(self, recipient_id: str, msg: Any) -> asyncio.Future[Any]:
        """Send ``msg`` to the RPC subscriber ``recipient_id``; return a future of its
        reply once the broker has accepted the request.

        Raises Unroutable at once when nobody subscribes as ``recipient_id``; the future
        fails with RpcTimeout (a TimeoutError) after ``rpc_timeout`` seconds and with
        RemoteError when the subscriber raised.
        """
        self._check_open()
        await self._declare_exchanges()
        envelope = _wire.request_envelope(_wire.RPC_TYPE, recipient_id, msg, reply=True,
                                          fingerprint=self._fingerprint)
        reply = await self.core.request(
            self.options.rpc_exchange, recipient_id, self.core.encode(envelope),
            self.core.properties(), timeout=self.options.rpc_timeout,
            transform=self._result_value,
        )
        return self._track(reply)

    async def rpc_gather(self, recipient_id: str, msg: Any, timeout: float | None = None,
                         max_replies: int | None = None, *, exchange: str | None = None,
                         command: str | None = None) -> list[GatherReply]:
        """Scatter/gather: send ``msg`` once to ``recipient_id`` (a key several servers
        receive) and return every reply arriving within ``timeout`` seconds (default
        ``rpc_timeout``), stopping after ``max_replies``. Each :class:`GatherReply` says who
        answered (``fingerprint``), with ``value``/``error``/``rtt``; never raises
        RpcTimeout; an empty list when no queue receives the request.

        ``exchange`` (default ``postage.rpc``) and ``command`` (the envelope name, default
        ``recipient_id``) reach classic components, e.g.
        ``rpc_gather("worker", None, 2, exchange="generic-application-exchange",
        command="ping")``.
        """
        self._check_open()
        await self._declare_exchanges()
        try:
            return await gather_replies(
                self.core, exchange or self.options.rpc_exchange, recipient_id,
                command or recipient_id, msg, fingerprint=self._fingerprint,
                timeout=self.options.rpc_timeout if timeout is None else timeout,
                max_replies=max_replies,
            )
        except Unroutable:
            return []

    async def announce(self, fingerprint: Fingerprint | Mapping[str, Any] | None = None,
                       interval: float = 10.0) -> None:
        """Opt in to presence: say ``online`` on ``postage.presence`` now, a heartbeat
        every ``interval`` seconds, ``offline`` on :meth:`close`; answer presence probes.
        ``fingerprint`` defaults to the communicator's own."""
        self._check_open()
        if self._presence is not None:
            raise ConfigurationError("this communicator announces its presence already")
        if isinstance(fingerprint, Fingerprint):
            fp: Mapping[str, Any] = fingerprint.as_dict()
        else:
            fp = fingerprint if fingerprint is not None else self._fingerprint
        announcer = PresenceAnnouncer(self.core, fp, interval=interval)
        await announcer.start()
        self._presence = announcer

    async def add_rpc_subscriber(self, subscriber: Subscriber,
                                 identifier: str | None = None) -> str:
        """Answer RPCs sent to ``identifier`` with ``subscriber(comm, body)``; return the
        identifier (a new unique one when None). One server per identifier."""
        if not callable(subscriber):
            raise TypeError("an RPC subscriber must be callable")
        self._check_open()
        identifier = identifier or uuid.uuid4().hex
        if identifier in self._rpc:
            raise ConfigurationError(f"RPC subscriber {identifier!r} already exists")
        await self._declare_exchanges()
        queue = f"{self.options.rpc_exchange}.{identifier}"
        core = self.core
        await core.declare_queue(queue, exclusive=True, auto_delete=True)
        await core.bind(queue, self.options.rpc_exchange, identifier)

        async def on_request(message: IncomingMessage) -> Any:
            assert message.envelope is not None
            return await self._invoke(subscriber, self.callback_comm,
                                      _wire.request_body(message.envelope))

        # errors are answered to the caller (an RPC is not retried); an undecodable
        # request is answered too and kept in <queue>.dlq for inspection
        options = HandlingOptions(errors="answer", envelope=True,
                                  replies=EnvelopeReplies(self, identifier))
        try:
            subscription = await core.consume(
                queue, on_request, options, prefetch_count=self.options.rpc_prefetch_count)
        except BaseException:
            with contextlib.suppress(PostageError):
                await core.delete_queue(queue)
            raise
        self._rpc[identifier] = (subscriber, subscription, queue)
        return identifier

    async def wait_for_subscriber(self, identifier: str, timeout: float = 30.0) -> None:
        """Return once an RPC subscriber serves ``identifier`` (in any process), so that
        ``rpc_send`` to it is not Unroutable; DeliveryTimeout after ``timeout`` s."""
        await self.core.wait_for_consumer(
            f"{self.options.rpc_exchange}.{identifier}", timeout,
            f"RPC subscriber for {identifier!r}", exclusive_counts=True)

    async def remove_rpc_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop answering as ``identifier`` (requests in progress are answered first);
        later requests to it fail with Unroutable."""
        key = find_subscriber(self._rpc, identifier, lambda entry: entry[0])
        _, subscription, queue = self._rpc.pop(key)
        await subscription.cancel(self.options.close_timeout)
        with contextlib.suppress(PostageError):
            await self.core.delete_queue(queue)

    # -- broadcasts -------------------------------------------------------------------

    async def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                             correlation_id: Any = None, delay: float | None = None,
                             not_before: datetime.datetime | None = None) -> bool:
        """Send a broadcast to every broadcast subscriber (none is fine); True once the
        broker has accepted it. ``delay`` (seconds) or ``not_before`` (a datetime): it
        reaches the subscribers that much later."""
        wait = resolve_delay(delay, not_before)
        self._check_open()
        await self._declare_exchanges()
        envelope = _wire.broadcast_envelope(body, sender, subject, correlation_id,
                                            self._fingerprint)
        props = self.core.properties(
            correlation_id=None if correlation_id is None else str(correlation_id))
        await self.core.publish(
            self.options.broadcast_exchange, subject if isinstance(subject, str) else "",
            self.core.encode(envelope), props, mandatory=False, delay=wait,
        )
        return True

    async def add_broadcast_subscriber(self, subscriber: Subscriber | BroadcastFilter,
                                       identifier: str | None = None) -> str:
        """Receive broadcasts with ``subscriber(comm, body, sender, subject, msg_id)`` or a
        :class:`BroadcastFilter`; return the identifier."""
        self._check_open()
        return await self._broadcasts.add(subscriber, identifier)

    async def remove_broadcast_subscriber(self, identifier: str | Subscriber) -> None:
        """Stop delivering broadcasts to a subscriber (by identifier or the callback)."""
        await self._broadcasts.remove(identifier)

    # -- shared helpers ---------------------------------------------------------------

    async def _invoke(self, fn: Subscriber, *args: Any) -> Any:
        if is_async_callable(fn):
            result = await fn(*args)
        else:
            result = await self.core.run_sync(fn, *args)
        while True:  # a subscriber may answer later with a future or awaitable
            if isinstance(result, concurrent.futures.Future):
                result = await asyncio.wrap_future(result)
            elif inspect.isawaitable(result):
                result = await result
            else:
                return result

    def _result_value(self, reply: Delivery) -> Any:
        """The value of a result envelope (RemoteError etc. raised), run by the core on
        the reply: the core's future is the caller's, with no second future chained."""
        return _wire.result_value(self.core.decode_envelope(reply))

    def _track(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        # cancelled on close; cancelling it (caller or close) makes the core forget it
        self._outstanding.add(future)
        future.add_done_callback(self._forget_outstanding)
        return future


async def open_communicator(url: str | None = None, **options: Any) -> AsyncCommunicator:
    """Open a core for ``url`` and an AsyncCommunicator that owns it."""
    comm_options, core_options = CommunicatorOptions.split(options)
    core = await open_core(url, **core_options)
    comm = AsyncCommunicator(core, comm_options, owns_core=True)
    try:
        await comm._declare_exchanges()
    except BaseException:
        await core.close(1.0)
        raise
    return comm
