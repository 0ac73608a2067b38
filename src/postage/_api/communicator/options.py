"""The communicator's options: the keyword arguments of ``connect`` it keeps for itself."""

from __future__ import annotations

__all__ = ["CommunicatorOptions"]

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..._core.core import Core
from ..._exceptions import ConfigurationError
from ..._settings import ConnectionSettings


@dataclass(frozen=True, slots=True)
class CommunicatorOptions:
    """Defaults of a communicator (keyword arguments of ``connect``).

    ``rpc_timeout``: seconds an ``rpc_send`` future waits for its reply.
    ``task_timeout``: seconds a ``task_send`` future waits for the task's result (tasks
    may be long, so one hour by default); ``None`` explicitly means no deadline.
    ``task_prefetch_count``: tasks one task subscriber may hold at once (1: fair dispatch).
    ``task_max_attempts``: deliveries of a task whose subscriber raises before it is moved
    to ``<queue>.dlq`` (only the final failure is reported to the sender); the back-off
    between them is the connection's ``retry_policy`` (a :class:`~postage.RetryPolicy`
    keyword of ``connect``; none by default).
    ``task_max_redeliveries``: redeliveries of a task whose subscriber's process died (or
    lost its connection) while handling it, before it is moved to ``<queue>.dlq``; its
    sender then gets a RemoteError of type ``DeadLettered`` naming that queue.
    ``rpc_prefetch_count``: RPC requests one subscriber handles concurrently.
    ``broadcast_prefetch_count``: broadcasts fetched ahead (they are handed to the
    subscribers one at a time, in order).
    ``name``: the communicator's name in the fingerprint of the messages it sends.
    ``operation_timeout``: deadline of each blocking call (subscribe, declare...); a send
    waits for its confirm at most the connection's ``publish_timeout`` (30 s by default).
    ``close_timeout``: how long closing waits for handlers and confirms.
    ``task_quorum``: declare task queues as replicated quorum queues (they survive the
    loss of a cluster node), with ``task_delivery_limit`` as the broker's own poison
    limit (redeliveries after consumers died, on top of ``task_max_attempts``).
    """

    rpc_timeout: float = 60.0
    task_timeout: float | None = 3600.0
    task_prefetch_count: int = 1
    task_max_attempts: int = 3
    task_max_redeliveries: int = 5
    rpc_prefetch_count: int = 32
    broadcast_prefetch_count: int = 64
    task_exchange: str = "postage.tasks"
    task_queue: str = "postage.tasks"
    rpc_exchange: str = "postage.rpc"
    broadcast_exchange: str = "postage.broadcast"
    name: str | None = None
    operation_timeout: float = 60.0
    close_timeout: float = 30.0
    task_quorum: bool = False
    task_delivery_limit: int | None = 20

    def __post_init__(self) -> None:
        if self.rpc_timeout <= 0 or (self.task_timeout is not None and self.task_timeout <= 0):
            raise ConfigurationError("rpc_timeout and task_timeout must be positive")
        if self.task_max_attempts < 1:
            raise ConfigurationError("task_max_attempts must be at least 1")
        for count in (self.task_prefetch_count, self.rpc_prefetch_count,
                      self.broadcast_prefetch_count):
            if count < 0:
                raise ConfigurationError("prefetch counts must be 0 (no limit) or more")

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[CommunicatorOptions, dict[str, Any]]:
        """(communicator options, the rest for the core) from ``connect`` keywords."""
        names = {f.name for f in fields(cls)}
        ours = {k: v for k, v in options.items() if k in names}
        rest = {k: v for k, v in options.items() if k not in names}
        core_names = set(inspect.signature(Core).parameters) - {"settings"}
        unknown = set(rest) - core_names - set(ConnectionSettings.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(f"unknown communicator options: {', '.join(sorted(unknown))}")
        return cls(**ours), rest
