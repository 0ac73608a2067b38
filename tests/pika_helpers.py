"""pika, as a peer that does not use Postage, for tests that read what Postage sent."""

from __future__ import annotations

import time
from typing import Any

import pika


def pika_read(url: str, queue: str, count: int, timeout: float = 20.0) -> list[tuple[Any, bytes]]:
    """Consume up to ``count`` messages of ``queue`` with pika (auto-ack) within ``timeout``."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        got: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + timeout
        for method, props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.1):
            if method is not None:
                got.append((props, body))
            if len(got) >= count or time.monotonic() > deadline:
                break
        channel.cancel()
        return got
    finally:
        connection.close()
