"""No postage.kiwipy task response is lost silently: the caller's connection is cut while
its task runs, and the response is sent while the caller is away."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import postage
from postage.kiwipy import rmq
from tests.conftest import Broker
from tests.faults.proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("testing_mode", [False, True])
async def test_a_response_sent_while_its_caller_is_away(
        fault_broker: Broker, proxy: TcpProxy, testing_mode: bool) -> None:
    """The reply queue outlives the caller's connection (for 60 s): the response waits
    there and the future resolves. In testing mode it is exclusive, as in kiwiPy, and
    goes with the connection: the future fails with a clear error instead of waiting
    forever."""
    suffix = uuid.uuid4().hex[:8]
    queue = f"fault.kiwipy-response.{suffix}"
    names = {"task_queue": queue, "task_exchange": f"fault.kiwipy-tasks.{suffix}",
             "message_exchange": f"fault.kiwipy-messages.{suffix}",
             "testing_mode": testing_mode}
    got, release = asyncio.Event(), asyncio.Event()

    async def slow(_comm: Any, task: Any) -> Any:
        got.set()
        await release.wait()
        return f"{task} done"

    worker = await rmq.async_connect(connection_params=fault_broker.url, **names)
    caller = await rmq.async_connect(connection_params=proxy.url(fault_broker.url), **names)
    try:
        await worker.add_task_subscriber(slow)
        future = await caller.task_send("job")
        await asyncio.wait_for(got.wait(), 10)
        proxy.refuse(True)
        proxy.cut()  # the caller is away ...
        await asyncio.sleep(0.5)
        release.set()  # ... when the response is sent
        await asyncio.sleep(1.0)
        proxy.refuse(False)
        if testing_mode:
            with pytest.raises(postage.ConnectionError, match="reply queue"):
                await asyncio.wait_for(future, 20)
        else:
            assert await asyncio.wait_for(future, 20) == "job done"
    finally:
        await caller.disconnect()
        await worker.core.delete_queue(queue)
        await worker.disconnect()
