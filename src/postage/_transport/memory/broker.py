"""An in-memory broker and a transport on it: Postage without RabbitMQ, for tests.

:class:`MemoryBroker` keeps exchanges (direct, fanout, topic, headers), queues and bindings
in the process and follows RabbitMQ's rules where the core can tell the difference:
FIFO queues, per-consumer prefetch, ack/nack/reject with requeue (at the message's old
place, flagged ``redelivered``), exclusive and auto-delete queues, the default exchange,
direct reply-to with an address per connection, mandatory publishes that reach no queue
(Unroutable), missing exchanges and queues (NotFound), redeclaration with other flags
(PreconditionFailed), queues deleted under their consumers.

:class:`~postage._transport.memory.transport.MemoryTransport` implements the transport
interface on it, a sibling of the AMQP transport. Deliveries run as tasks on the event
loop of the consuming transport, one task per message, in order; nothing waits on a timer,
so tests are deterministic and fast.

``memory://NAME`` URLs select a process-wide broker by name (see :func:`named_broker`),
so every API works unchanged on ``memory://``. :meth:`MemoryBroker.drop_connections`
simulates a lost connection: the transports recover as the real one does.
"""

from __future__ import annotations

__all__ = ["MemoryBroker"]

import bisect
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..._exceptions import (
    AccessRefused,
    ChannelError,
    NotFound,
    PreconditionFailed,
    PublishNacked,
    Unroutable,
)
from ..._wire.properties import Binding, ExchangeSpec, Properties, QueueSpec, check_name
from ..base import refused
from .model import (
    _CHECKED_QUEUE_ARGS,
    _PREDECLARED,
    _REPLY_PREFIX,
    EXCHANGE_TYPES,
    Routing,
    _copy_properties,
    _Exchange,
    _Message,
    _Queue,
    add_death,
    is_full,
)

if TYPE_CHECKING:
    from .transport import MemoryConsumer, MemoryDelivery, MemoryTransport

log = logging.getLogger("postage.memory")

class MemoryBroker(Routing):
    """A RabbitMQ stand-in living in this process; connect with :class:`MemoryTransport`
    (or any API with its :attr:`url`). Safe to share between event loops and threads."""
    def drop_connections(self) -> None:
        """Cut every connection as a network failure would: their unacked messages are
        requeued and their exclusive queues deleted; each transport then recovers (declares
        its topology again, restarts its consumers) on its own loop."""
        with self._lock:
            transports = list(self._connections.values())
            for transport in transports:
                self._disconnect(transport)
        for transport in transports:
            transport._schedule(transport._recover)

    def reset(self) -> None:
        """Forget every queue and exchange (connections stay, their consumers are cancelled)."""
        with self._lock:
            for name in list(self._queues):
                self._delete_queue(name)
            self._exchanges = {s.name: _Exchange(s) for s in _PREDECLARED}

    # -- connections --------------------------------------------------------------------

    def _connect(self, transport: MemoryTransport) -> int:
        with self._lock:
            cid = next(self._connection_ids)
            self._connections[cid] = transport
            return cid

    def _disconnect(self, transport: MemoryTransport) -> None:
        from .transport import MemoryConsumer  # the transport module imports this one

        with self._lock:
            self._connections.pop(transport._connection_id, None)
            for consumer in list(transport._consumers.values()):
                if isinstance(consumer, MemoryConsumer):
                    self._remove_consumer(consumer)
                    consumer._close_channel()
            if transport._getter is not None:
                transport._getter._close_channel()
                transport._getter = None
            if transport._reply_address is not None:
                self._replies.pop(transport._reply_address, None)
                transport._reply_address = None
            for name, q in list(self._queues.items()):
                if q.owner is transport:
                    self._delete_queue(name)

    # -- checks -------------------------------------------------------------------------

    def _check_owner(self, q: _Queue, transport: MemoryTransport) -> None:
        if q.owner is not None and q.owner is not transport:
            raise ChannelError(
                f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
                f"'{q.spec.name}' in vhost '/'", 405,
            )

    # -- topology -----------------------------------------------------------------------

    def declare_exchange(self, spec: ExchangeSpec) -> None:
        with self._lock:
            if spec.name.startswith("amq."):
                raise AccessRefused(
                    f"ACCESS_REFUSED - exchange name '{spec.name}' contains reserved prefix "
                    "'amq.*'", 403,
                )
            if spec.type not in EXCHANGE_TYPES:
                raise refused(f"COMMAND_INVALID - unknown exchange type '{spec.type}'", 503)
            existing = self._exchanges.get(spec.name)
            if existing is None:
                self._exchanges[spec.name] = _Exchange(spec)
                return
            old = existing.spec
            ae = "alternate-exchange"
            if (old.type, old.durable, old.auto_delete, old.internal) != (
                spec.type, spec.durable, spec.auto_delete, spec.internal,
            ) or dict(old.arguments).get(ae) != dict(spec.arguments).get(ae):
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arg for exchange '{spec.name}' in "
                    f"vhost '/': declared {old}, asked for {spec}", 406,
                )

    def check_exchange(self, name: str) -> None:
        with self._lock:
            if name:
                self._require_exchange(name)

    def delete_exchange(self, name: str) -> None:
        with self._lock:
            if name.startswith("amq.") or name == "":
                raise AccessRefused(f"ACCESS_REFUSED - cannot delete exchange '{name}'", 403)
            self._exchanges.pop(name, None)
            for x in list(self._exchanges.values()):  # bindings to it go with it
                for b in [b for b in x.bindings if b.to_exchange and b.queue == name]:
                    del x.bindings[b]

    def declare_queue(self, spec: QueueSpec, transport: MemoryTransport) -> tuple[int, int]:
        with self._lock:
            if spec.name.startswith("amq."):
                raise AccessRefused(
                    f"ACCESS_REFUSED - queue name '{spec.name}' contains reserved prefix "
                    "'amq.*'", 403,
                )
            args = dict(spec.arguments)
            qtype = args.get("x-queue-type", "classic")
            if qtype not in ("classic", "quorum"):
                # streams (offsets, reads that keep the messages) are not modelled: refused
                # at once rather than given a queue's semantics (see docs/testing.md)
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue "
                    f"'{spec.name}': the memory broker has no {qtype!r} queues", 406,
                )
            if qtype == "quorum" and (spec.exclusive or spec.auto_delete or not spec.durable):
                bad = ("exclusive" if spec.exclusive else "auto-delete" if spec.auto_delete
                       else "non-durable")
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - invalid property '{bad}' for queue "
                    f"'{spec.name}' in vhost '/'", 406,
                )
            existing = self._queues.get(spec.name)
            if existing is None:
                owner = transport if spec.exclusive else None
                self._queues[spec.name] = _Queue(spec, owner)
                return 0, 0
            self._check_owner(existing, transport)
            old = existing.spec
            old_args = dict(old.arguments)
            same = (old.durable, old.auto_delete, old.exclusive) == (
                spec.durable, spec.auto_delete, spec.exclusive
            ) and old_args.get("x-queue-type", "classic") == qtype and all(
                old_args.get(k) == args.get(k) for k in _CHECKED_QUEUE_ARGS
            )
            if not same:
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arg for queue '{spec.name}' in "
                    f"vhost '/': declared {old}, asked for {spec}", 406,
                )
            return len(existing.ready), len(existing.consumers)

    def queue_state(self, name: str, transport: MemoryTransport) -> tuple[int, int]:
        with self._lock:
            q = self._require_queue(name)
            self._check_owner(q, transport)
            return len(q.ready), len(q.consumers)

    def delete_queue(self, name: str, transport: MemoryTransport) -> None:
        with self._lock:
            q = self._queues.get(name)
            if q is not None:
                self._check_owner(q, transport)
                self._delete_queue(name)

    def _delete_queue(self, name: str) -> None:
        q = self._queues.pop(name)
        for x in list(self._exchanges.values()):
            bound = [b for b in x.bindings if b.queue == name and not b.to_exchange]
            for b in bound:
                del x.bindings[b]
            if bound:
                self._auto_delete(x)
        q.ready.clear()
        for consumer in list(q.consumers):
            q.consumers.remove(consumer)
            consumer._queue_obj = None
            consumer._transport._schedule(consumer._cancelled_by_broker)

    def _auto_delete(self, x: _Exchange) -> None:
        """An auto-delete exchange goes when its last binding does."""
        if x.spec.auto_delete and not x.bindings and self._exchanges.get(x.spec.name) is x:
            del self._exchanges[x.spec.name]

    def purge_queue(self, name: str, transport: MemoryTransport) -> int:
        with self._lock:
            q = self._require_queue(name)
            self._check_owner(q, transport)
            count = len(q.ready)
            q.ready.clear()
            return count

    def bind(self, binding: Binding, transport: MemoryTransport) -> None:
        with self._lock:
            if binding.exchange == "":
                raise AccessRefused(
                    "ACCESS_REFUSED - operation not permitted on the default exchange", 403
                )
            if binding.to_exchange:
                self._require_exchange(binding.queue)
            else:
                self._check_owner(self._require_queue(binding.queue), transport)
            self._require_exchange(binding.exchange).bindings[binding] = None

    def unbind(self, binding: Binding, transport: MemoryTransport) -> None:
        with self._lock:
            if binding.exchange == "":
                raise AccessRefused(
                    "ACCESS_REFUSED - operation not permitted on the default exchange", 403
                )
            q = None if binding.to_exchange else self._queues.get(binding.queue)
            if q is not None:
                self._check_owner(q, transport)
            x = self._exchanges.get(binding.exchange)
            if x is not None and x.bindings.pop(binding, False) is None:
                self._auto_delete(x)

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self, transport: MemoryTransport, exchange: str, routing_key: str, body: bytes,
        properties: Properties, mandatory: bool,
    ) -> None:
        check_name("exchange name", exchange)
        check_name("routing key", routing_key)
        with self._lock:
            if exchange == "" and routing_key.startswith(_REPLY_PREFIX):
                self._publish_reply(routing_key, body, properties, mandatory)
                return
            x = self._exchanges.get(exchange) if exchange else None
            if exchange and x is None:
                raise NotFound(f"NOT_FOUND - no exchange '{exchange}' in vhost '/'", 404)
            if x is not None and x.spec.internal:
                raise AccessRefused(
                    f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}'", 403
                )
            headers = properties.headers or {}
            keys = [routing_key, *_keys(headers.get("CC")), *_keys(headers.get("BCC"))]
            queues = self._route(x, keys, headers)
            self.published += 1
            if not queues:
                if mandatory:
                    raise Unroutable(exchange, routing_key)
                return
            if "BCC" in headers:  # sender-selected distribution: BCC is not delivered
                properties = replace(properties, headers={
                    k: v for k, v in headers.items() if k != "BCC"})
            stored = _copy_properties(properties)
            refused = [q for q in queues if not self._enqueue(
                q, _Message(bytes(body), stored, exchange, routing_key, next(self._seq)))]
            if refused:  # the queues with room keep it; the publisher learns of the others
                raise PublishNacked(
                    f"the broker refused a message to {exchange!r}/{routing_key!r} "
                    "(basic.nack): a queue it routes to is full and rejects new messages "
                    "(x-overflow reject-publish)")

    def _publish_reply(self, address: str, body: bytes, properties: Properties,
                       mandatory: bool) -> None:
        target = self._replies.get(address)
        if target is not None:
            self.published += 1
            target._deliver_reply(_Message(bytes(body), _copy_properties(properties), "",
                                           address, next(self._seq)))
        # a reply address is no queue: RabbitMQ delivers to it and still returns a
        # mandatory message as unroutable (NO_ROUTE)
        if mandatory:
            raise Unroutable("", address)

    def _enqueue(self, q: _Queue, message: _Message) -> bool:
        """Store ``message`` in ``q``; False when a full queue refuses it (``x-overflow``
        reject-publish, and reject-publish-dlx, which dead-letters it)."""
        overflow = q.arguments.get("x-overflow", "drop-head")
        if overflow != "drop-head" and is_full(q, 1, len(message.body)):
            if overflow == "reject-publish-dlx":
                self._dead_letter(q, message, "maxlen")
            return False
        ttl = _ttl(q.arguments.get("x-message-ttl"), message.properties.expiration)
        if ttl is not None:
            message.expires = self.clock.now() + ttl
            self.clock.call_at(message.expires, lambda: self._on_timer(q))
        q.ready.append(message)
        while q.ready and is_full(q):  # drop-head: the oldest go
            self._dead_letter(q, q.ready.popleft(), "maxlen")
        self._dispatch(q)
        return True

    def _requeue(self, q: _Queue, message: _Message) -> None:
        """Put ``message`` back at its old place (RabbitMQ keeps the order of requeues)."""
        message.redelivered = True
        if q.quorum:
            message.delivery_count += 1
            limit = q.arguments.get("x-delivery-limit")
            if isinstance(limit, int) and message.delivery_count > limit:
                self._dead_letter(q, message, "delivery_limit")
                return
            headers = dict(message.properties.headers or {})
            headers["x-delivery-count"] = message.delivery_count
            message.properties = replace(message.properties, headers=headers)
        ready = q.ready
        if not ready or message.seq < ready[0].seq:
            ready.appendleft(message)
        elif message.seq > ready[-1].seq:
            ready.append(message)
        else:
            seqs = [m.seq for m in ready]
            ready.insert(bisect.bisect(seqs, message.seq), message)
        self._dispatch(q)

    def _dead_letter(self, q: _Queue, message: _Message, reason: str) -> None:
        args = q.arguments
        dlx = args.get("x-dead-letter-exchange")
        if dlx is None:
            return
        keys = ([str(args["x-dead-letter-routing-key"])] if "x-dead-letter-routing-key" in args
                else message.routing_keys)
        headers = dict(message.properties.headers or {})
        add_death(headers, q.spec.name, reason, message.exchange, message.routing_keys,
                  message.properties.expiration)
        x = self._exchanges.get(str(dlx)) if dlx else None
        if dlx and x is None:
            return
        props = replace(message.properties, headers=headers, expiration=None)
        for target in self._route(x, keys, headers):
            if target is not q or reason != "maxlen":
                self._enqueue(target, _Message(message.body, props, str(dlx), keys[0],
                                               next(self._seq)))

    def _dispatch(self, q: _Queue) -> None:
        """Hand ready messages to consumers with room, oldest first: to the highest
        ``x-priority`` among them, round robin between equals."""
        self._expire(q)
        while q.ready and q.consumers:
            count = len(q.consumers)
            chosen: MemoryConsumer | None = None
            chosen_step = 0
            for step in range(count):
                consumer = q.consumers[(q.turn + step) % count]
                if consumer._has_room() and (chosen is None
                                             or consumer.priority > chosen.priority):
                    chosen, chosen_step = consumer, step
            if chosen is None:
                return
            q.turn = (q.turn + chosen_step + 1) % count
            chosen._deliver(q, q.ready.popleft())
            self._expire(q)

    def _expire(self, q: _Queue) -> None:
        """Dead-letter (or drop) the expired messages at the head of ``q``: as in RabbitMQ,
        a message expires only once it reaches the head."""
        now = self.clock.now()
        ready = q.ready
        while ready and ready[0].expires is not None and ready[0].expires <= now:
            self._dead_letter(q, ready.popleft(), "expired")

    def _on_timer(self, q: _Queue) -> None:
        with self._lock:
            if self._queues.get(q.spec.name) is q:
                self._dispatch(q)

    # -- consumers ----------------------------------------------------------------------

    def add_consumer(self, consumer: MemoryConsumer) -> None:
        with self._lock:
            q = self._require_queue(consumer.queue)
            self._check_owner(q, consumer._transport)
            if consumer.exclusive and q.consumers:
                raise AccessRefused(
                    f"ACCESS_REFUSED - queue '{q.spec.name}' in vhost '/' in exclusive use", 403
                )
            if any(c.exclusive for c in q.consumers):
                raise AccessRefused(
                    f"ACCESS_REFUSED - queue '{q.spec.name}' in vhost '/' in exclusive use", 403
                )
            q.consumers.append(consumer)
            q.had_consumers = True
            consumer._queue_obj = q
            self._dispatch(q)

    def _remove_consumer(self, consumer: MemoryConsumer) -> None:
        q = consumer._queue_obj
        consumer._queue_obj = None
        if q is None or consumer not in q.consumers:
            return
        q.consumers.remove(consumer)
        if q.spec.auto_delete and not q.consumers and self._queues.get(q.spec.name) is q:
            self._delete_queue(q.spec.name)

    def remove_consumer(self, consumer: MemoryConsumer) -> None:
        with self._lock:
            self._remove_consumer(consumer)

    def settle(self, delivery: MemoryDelivery, outcome: str, requeue: bool) -> None:
        with self._lock:
            consumer = delivery._consumer
            if consumer is None or consumer._unacked.pop(delivery.delivery_tag, None) is None:
                return
            q = delivery._queue
            assert q is not None
            if outcome != "ack" and self._queues.get(q.spec.name) is q:
                if requeue:
                    self._requeue(q, delivery._message)
                else:
                    self._dead_letter(q, delivery._message, "rejected")
            target = consumer._queue_obj if consumer._queue_obj is not None else q
            if self._queues.get(target.spec.name) is target:
                self._dispatch(target)

    def take(self, queue: str, getter: MemoryConsumer) -> MemoryDelivery | None:
        """basic.get: the oldest ready message of ``queue``, unacked on ``getter``."""
        with self._lock:
            q = self._require_queue(queue)
            self._check_owner(q, getter._transport)
            self._expire(q)
            if not q.ready:
                return None
            return getter._hold(q, q.ready.popleft())

    def release(self, consumer: MemoryConsumer) -> None:
        """The consumer's channel closed: its unsettled messages go back to their queues."""
        with self._lock:
            unacked = sorted(consumer._unacked.values(), key=lambda d: d._message.seq)
            consumer._unacked.clear()
            for delivery in unacked:
                q = delivery._queue
                if q is not None and self._queues.get(q.spec.name) is q:
                    self._requeue(q, delivery._message)

    def register_replies(self, transport: MemoryTransport) -> str:
        with self._lock:
            address = f"{_REPLY_PREFIX}{self.name or '-'}.{transport._connection_id}"
            self._replies[address] = transport
            return address




def _keys(value: Any) -> list[str]:
    """The routing keys of a ``CC`` or ``BCC`` header."""
    return [k for k in value if isinstance(k, str)] if isinstance(value, list) else []


def _ttl(queue_ttl: Any, expiration: str | None) -> float | None:
    """Seconds a message may wait in a queue: the lower of the queue's ``x-message-ttl``
    and the message's ``expiration`` (both in ms), or None."""
    limits = [queue_ttl] if isinstance(queue_ttl, int) and not isinstance(queue_ttl, bool) else []
    if expiration is not None:
        try:
            limits.append(int(expiration))
        except ValueError:
            pass
    return min(limits) / 1000 if limits else None
