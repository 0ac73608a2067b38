"""A headers table nested deep must not take a consumer offline (every API's consumer).

Such a table made the frame decoder raise RecursionError inside the connection (depth
about 500): the connection died, the message came back on reconnect, forever. Now the
AMQP transport decodes it as a marker and the inbound pipeline dead-letters it
(``undecodable``) while the consumer goes on. Depth 100,000 does not fit in one frame: the
broker refuses it at the publisher, and the consumers never see it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pamqp
import pamqp.frame
import pytest
from pamqp import commands, header

import postage
from postage import messaging
from postage._api.communicator import open_communicator
from postage._core.core import HEADER_REASON, open_core
from postage._transport import HEADER_UNDECODABLE
from postage._transport.amqp import headers as guard
from tests.names import Names, pika_cleanup
from tests.recorder import Recorder

from ..classic.conftest import classic_url, classic_vhost, env_url  # noqa: F401 - fixtures
from ..pika_helpers import pika_read

ROOT = Path(__file__).resolve().parents[2]
DEPTHS = [100, 500, 3000, 100_000]


def _frame(depth: int) -> bytes:
    """A content header frame with a headers table ``depth`` levels deep (and other
    properties the guard must keep)."""
    table: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        table = {"n": table}
    props = commands.Basic.Properties(content_type="application/json", headers=table,
                                      correlation_id="c1", reply_to="r1")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth * 4 + 1000))
    try:
        return pamqp.frame.marshal(header.ContentHeader(0, 3, props), 1)
    finally:
        sys.setrecursionlimit(limit)


def test_this_pamqp_is_one_the_guard_was_checked_on() -> None:
    # fails when pamqp changes under Postage: check the guard again, then add the version
    assert pamqp.__version__.startswith(guard.SUPPORTED), pamqp.__version__
    assert guard.install() and guard.installed()
    assert pamqp.frame.unmarshal is guard._guarded_unmarshal


@pytest.mark.parametrize(("depth", "why"), [
    (10, None), (64, None), (100, "headers table nested deeper than 64 levels"),
    (500, "headers table nested too deep to decode"),
    (3000, "headers table nested too deep to decode"),
])
def test_the_guard_decodes_deep_headers_as_a_marker(depth: int, why: str | None) -> None:
    guard.install()
    data = _frame(depth)
    consumed, channel, frame = pamqp.frame.unmarshal(data)
    assert (consumed, channel) == (len(data), 1)
    assert isinstance(frame, header.ContentHeader)
    assert frame.body_size == 3
    props = frame.properties
    assert (props.content_type, props.correlation_id, props.reply_to) == (
        "application/json", "c1", "r1")
    if why is None:
        assert HEADER_UNDECODABLE not in props.headers
    else:
        assert props.headers == {HEADER_UNDECODABLE: why}


def _publish_deep(url: str, items: list[tuple[str, str, int, str]]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.security.deep_publisher", url, json.dumps(items)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("depth", DEPTHS)
async def test_every_communicator_and_client_consumer_survives(
    broker_url: str, depth: int
) -> None:
    uid = uuid.uuid4().hex[:8]
    task_queue, client_queue = f"test.deep.task.{uid}", f"test.deep.client.{uid}"
    ident, subject = f"test.deep.rpc.{uid}", f"test.deep.{uid}"
    seen = Recorder()
    comm = await open_communicator(broker_url)
    client = postage.AsyncClient(broker_url)
    await client.open()
    reconnections = (comm.core.transport.reconnections, client.core.transport.reconnections)
    try:
        tasks = await comm.task_queue(task_queue)
        await tasks.add_task_subscriber(lambda _c, body: seen.add(("task", body)))
        await comm.add_rpc_subscriber(lambda _c, body: seen.add(("rpc", body)), ident)

        async def on_broadcast(_c: Any, body: Any, *rest: Any) -> None:
            seen.add(("broadcast", body))

        await comm.add_broadcast_subscriber(on_broadcast)

        async def on_raw(body: bytes) -> None:
            seen.add(("client", body))

        await client.receive("", "", client_queue, on_raw)
        targets = [("postage.tasks", task_queue), ("postage.rpc", ident),
                   ("postage.broadcast", subject), ("", client_queue)]
        lines = await asyncio.to_thread(
            _publish_deep, broker_url, [(x, k, depth, "{}") for x, k in targets])
        # a good message to each, after the deep one: every consumer still works
        assert await (await tasks.task_send("after")) is None
        assert await (await comm.rpc_send(ident, "after")) is None
        await comm.broadcast_send("after", subject=subject)
        await client.publish("", client_queue, b"after")
        assert sorted(await seen.wait(4)) == sorted(
            [("task", "after"), ("rpc", "after"), ("broadcast", "after"), ("client", b"after")])
        refused = depth >= 100_000  # over frame_max: refused at the publisher
        if refused:  # the broker closes the publisher's connection (frame too large)
            assert all(line.startswith(f"failed {depth}: ") for line in lines), lines
            assert len(lines) == 4
        else:
            assert lines == [f"sent {depth}"] * 4
        dead_queues = [f"{task_queue}.dlq", f"postage.rpc.{ident}.dlq", f"{client_queue}.dlq"]
        for queue in [] if refused else dead_queues:  # raw: the dead letter has the marker
            dead = await asyncio.to_thread(pika_read, broker_url, queue, 1, 15)
            assert len(dead) == 1, queue
            for props, _body in dead:
                assert props.headers[HEADER_REASON] == "undecodable"
                assert HEADER_UNDECODABLE in props.headers
        assert (comm.core.transport.reconnections,
                client.core.transport.reconnections) == reconnections
    finally:
        await client.close(5)
        await comm.close(5)
        cleaner = await open_core(broker_url)
        for queue in (task_queue, f"{task_queue}.dlq", f"postage.rpc.{ident}.dlq",
                      f"{client_queue}.dlq"):
            await cleaner.delete_queue(queue)
        await cleaner.close(5)


@pytest.mark.parametrize("depth", [100, 500, 3000])
def test_the_classic_processor_survives(env_url: str, depth: int) -> None:  # noqa: F811
    uid = uuid.uuid4().hex[:10]
    queue = f"test.deep.classic.{uid}"
    exchange: type[messaging.Exchange] = type("DeepExchange", (messaging.Exchange,),
                    {"name": f"test.deep.classic.{uid}", "auto_delete": True})
    seen = Recorder()

    class Processor(messaging.MessageProcessor):
        @messaging.MessageHandler("command", "after")
        def msg_after(self, content: Any) -> None:
            seen.add(content)

    class Producer(messaging.GenericProducer):
        eks = [(exchange, "k")]

    processor = Processor({"name": "deep"}, [(exchange, [(queue, "k")])], None, None)
    core = processor.consumer.core
    reconnections = core.transport.reconnections
    processor.start_consuming()
    try:
        sent = _publish_deep(env_url, [(exchange.name, "k", depth, "{}")])
        assert sent == [f"sent {depth}"]
        Producer().message_after()  # after the deep one: the processor still works
        assert len(seen.wait_sync(1)) == 1
        [(props, _body)] = pika_read(env_url, f"{queue}.dlq", 1, 20)
        assert props.headers[HEADER_REASON] == "undecodable"
        assert HEADER_UNDECODABLE in props.headers
        assert processor.consumer.consuming
        assert core.transport.reconnections == reconnections
    finally:
        processor.stop_consuming()
        names = Names("deep")
        names.queues.append(queue)
        pika_cleanup(env_url, names)
