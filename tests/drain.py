"""Read what a queue holds through a core (its consumer acks each message), for tests."""

from __future__ import annotations

import asyncio

from postage._core.core import Core
from postage._transport import Delivery


async def drain(core: Core, queue: str, count: int, timeout: float = 20) -> list[Delivery]:
    """The first ``count`` messages of ``queue``; TimeoutError if fewer come in time."""
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) >= count:
            done.set()

    sub = await core.subscribe(queue, handler, prefetch_count=100)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.cancel()
    return got
