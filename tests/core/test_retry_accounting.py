"""Retries keep their accounting when their back-off copy cannot be sent (the delay path
is down): the message the subscription hands back to the broker is not counted as a
crash; it is tried again under the policy and dead-lettered with the real reason."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from postage import ConnectionError as PostageConnectionError
from postage import RetryPolicy
from postage._core.core import HEADER_ERROR, HEADER_REASON, HandlingOptions, open_core
from postage._core.inbound import HEADER_ATTEMPTS
from postage._core.middleware import IncomingMessage

pytestmark = pytest.mark.broker


async def test_a_retry_copy_that_cannot_be_sent_is_not_a_crash(broker_url: str) -> None:
    queue = f"test.accounting.{uuid.uuid4().hex[:8]}"
    core = await open_core(broker_url)
    calls: list[int] = []

    async def failing(message: IncomingMessage) -> None:
        calls.append(message.attempt)
        raise ValueError(f"the database is down (try {message.attempt})")

    async def delay_path_down(*_args: Any, **_kwargs: Any) -> None:
        raise PostageConnectionError("the delay path is down")

    try:
        await core.declare_queue(queue, durable=True)
        core.outbound.send_back = delay_path_down  # type: ignore[method-assign]
        policy = RetryPolicy(max_attempts=4, delay=0.5, max_redeliveries=2)
        await core.consume(queue, failing, HandlingOptions(policy))
        await core.publish("", queue, b"job")
        dlq = f"{queue}.dlq"
        async with asyncio.timeout(30):
            while True:
                try:
                    if (await core.queue_state(dlq))[0] == 1:
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.1)
        delivery = await core.get(dlq)
        assert delivery is not None
        headers = delivery.headers
        await delivery.ack()
        # every try ran, in order, and the real reason is kept (not "redelivered")
        assert calls == [1, 2, 3, 4]
        assert headers[HEADER_REASON] == "handler-failed"
        assert "the database is down (try 4)" in headers[HEADER_ERROR]
        assert headers[HEADER_ATTEMPTS] == 4
    finally:
        await core.close(2)
        cleanup = await open_core(broker_url)
        try:
            for name in (queue, f"{queue}.dlq"):
                await cleanup.delete_queue(name)
        finally:
            await cleanup.close(2)
