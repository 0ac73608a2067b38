"""Tasks waiting inside the AMQP client on a channel: a publish for its confirm, an ack, a
reply. On a lost connection some of these waits never end: the client's write queue is
bounded (a few frames), and once its writer is gone a frame waiting for room there waits
forever. The connection's supervisor interrupts them; each caller then does what it does
after any loss (a publish is sent again, an ack is given up: the broker delivers the
message again).
"""

from __future__ import annotations

__all__ = ["ClientWaits"]

import asyncio
from typing import Any


class ClientWaits:
    """Which task waits inside the client on which channel; see the module docstring."""

    __slots__ = ("_interrupted", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Task[Any], Any] = {}
        self._interrupted: set[asyncio.Task[Any]] = set()

    def enter(self, task: asyncio.Task[Any], channel: Any) -> None:
        self._waiting[task] = channel

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._waiting.pop(task, None)

    def interrupt(self, lost_connection: Any) -> None:
        """Cancel the waits on a channel of ``lost_connection`` or on a closed channel.
        Each cancelled task is told by :meth:`interrupted`."""
        for task, channel in list(self._waiting.items()):
            stuck = channel.is_closed or getattr(channel, "connection", None) is lost_connection
            if stuck and not task.done() and task not in self._interrupted:
                self._interrupted.add(task)
                task.cancel()

    def interrupted(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError in ``task``: True if :meth:`interrupt` caused it (the
        cancellation is then taken back); False if someone else cancelled the task."""
        if task not in self._interrupted:
            return False
        self._interrupted.discard(task)
        task.uncancel()
        return True
