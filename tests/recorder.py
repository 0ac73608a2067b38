"""Handler calls recorded from any thread (handlers of the blocking APIs run in worker
threads), waited for with a deadline."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_sync(self, count: int, timeout: float = 30) -> list[Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)

    async def wait(self, count: int, timeout: float = 30) -> list[Any]:
        return await asyncio.to_thread(self.wait_sync, count, timeout)
