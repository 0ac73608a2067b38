"""Unique queue and exchange names for one test, deleted with pika afterwards.

Other engineers' tests share the broker, so every name carries a scope (``test.client``,
``test.comm``...) and a random part; :func:`pika_cleanup` deletes the queues (with their
``.dlq`` and ``.dlq.dlq``) and exchanges a test asked for.
"""

from __future__ import annotations

import uuid

import pika
import pika.exceptions


class Names:
    """Unique names under ``test.<scope>``; queues and exchanges are remembered."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _new(self, prefix: str) -> str:
        return f"test.{self.scope}.{prefix}.{uuid.uuid4().hex[:10]}"

    def queue(self, prefix: str = "q") -> str:
        name = self._new(prefix)
        self.queues.append(name)
        return name

    def exchange(self, prefix: str = "x") -> str:
        name = self._new(prefix)
        self.exchanges.append(name)
        return name

    def identifier(self, prefix: str = "rpc") -> str:
        """A unique RPC identifier (its queue goes away with its subscriber)."""
        return self._new(prefix)


def pika_cleanup(url: str, names: Names) -> None:
    """Delete what ``names`` handed out; a refusal only costs the channel it closed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        targets = [("queue", f"{queue}{suffix}") for queue in names.queues
                   for suffix in ("", ".dlq", ".dlq.dlq")]
        targets += [("exchange", exchange) for exchange in names.exchanges]
        for kind, name in targets:
            try:
                if kind == "queue":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()
    finally:
        connection.close()
