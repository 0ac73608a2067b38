"""One RPC through each API gives one linked trace (the caller's span, the processing span
as its child, the reply an event of both);
a task gives producer -> consumer, with its retry and its dead letter as events; the trace
crosses to another process and to an aio-pika program instrumented by aio-pika's own
OpenTelemetry instrumentation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

import postage
import postage.aio
from postage import RetryPolicy, messaging
from postage._api.classic import runtime as _runtime
from postage._tooling.telemetry import bounded_name
from tests.classic.conftest import running

from .conftest import Telemetry, one_trace, parent_of

pytestmark = pytest.mark.broker


def _check_rpc_trace(telemetry: Telemetry) -> None:
    """CLIENT (request to reply) -> CONSUMER (processing, with the reply as an event)."""
    [client] = [s for s in telemetry.finished() if s.kind == SpanKind.CLIENT]
    [process] = [s for s in telemetry.by_name("process")
                 if parent_of(s) == client.context.span_id]
    one_trace([client, process])
    assert [e.name for e in client.events] == ["reply"]
    assert [e.name for e in process.events] == ["reply"]
    assert client.attributes is not None and process.attributes is not None
    assert client.attributes["messaging.system"] == "rabbitmq"
    assert client.attributes["messaging.operation.type"] == "send"
    assert client.attributes["messaging.message.conversation_id"]
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["postage.outcome"] == "acked"
    # the request's publish and the reply are not spans of their own
    assert not telemetry.by_name("publish") and not telemetry.by_name("reply")


async def test_async_client_rpc_is_one_trace(telemetry: Telemetry, broker_url: str) -> None:
    exchange = f"otel.client.{uuid.uuid4().hex[:8]}"
    async with postage.AsyncClient(broker_url) as client:
        async def shout(body: bytes) -> bytes:
            return body.upper()

        await client.receive(exchange, "shout", f"{exchange}.q", shout)
        assert await client.rpc(exchange, "shout", b"hi", timeout=10) == b"HI"
    _check_rpc_trace(telemetry)
    # (as a metric attribute, a random-looking word of the name is folded into {id})
    assert telemetry.total("postage.rpc.duration",
                           messaging_destination_name=bounded_name(exchange)) == 1


async def test_communicator_rpc_is_one_trace(telemetry: Telemetry, broker_url: str) -> None:
    identifier = f"otel.comm.{uuid.uuid4().hex[:8]}"
    async with postage.aio.connect(broker_url) as comm:
        await comm.add_rpc_subscriber(lambda _c, n: n * 2, identifier)
        assert await asyncio.wait_for(await comm.rpc_send(identifier, 21), 10) == 42
    _check_rpc_trace(telemetry)


async def test_kiwipy_rpc_is_one_trace(telemetry: Telemetry, broker_url: str) -> None:
    from postage.kiwipy import rmq

    prefix = f"otel.kiwipy.{uuid.uuid4().hex[:8]}"
    comm = await rmq.async_connect(broker_url, message_exchange=f"{prefix}.messages",
                                   task_exchange=f"{prefix}.tasks")
    try:
        await comm.add_rpc_subscriber(lambda _c, n: n * 2, "double")
        assert await asyncio.wait_for(await comm.rpc_send("double", 21), 10) == 42
    finally:
        await comm.disconnect()
    _check_rpc_trace(telemetry)


def test_classic_rpc_is_one_trace(telemetry: Telemetry, broker_url: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTAGE_URL", broker_url)
    _runtime.close_all()  # the classic connection is opened after instrumenting

    class Exchange(messaging.Exchange):
        name = f"otel.classic.{uuid.uuid4().hex[:8]}"
        durable = False
        auto_delete = True

    class Processor(messaging.MessageProcessor):
        @messaging.RpcHandler("command", "double")
        def double(self, content: Any, reply_func: Any) -> None:
            reply_func(messaging.MessageResult(content["parameters"] * 2))

    class Producer(messaging.GenericProducer):
        eks = [(Exchange, "rk")]

    processor = Processor({"name": "otel"}, [(Exchange, [(f"{Exchange.name}.q", "rk")])],
                          None, None)
    try:
        with running(processor):
            reply = Producer().rpc_double(21, _timeout=10, _max_retry=0)
            assert reply.body["content"]["value"] == 42
            deadline = time.monotonic() + 5
            while not telemetry.by_name("process") and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        _runtime.close_all()
    _check_rpc_trace(telemetry)


async def test_a_task_shows_its_retry_and_its_dead_letter(telemetry: Telemetry,
                                                          broker_url: str) -> None:
    queue = f"otel.task.{uuid.uuid4().hex[:8]}"
    async with postage.AsyncClient(broker_url) as client:
        def fail(_body: bytes) -> None:
            raise ValueError("bad input")

        await client.receive("", "", queue, fail, policy=RetryPolicy(max_attempts=2))
        await client.publish("", queue, b"job")
        deadline = time.monotonic() + 10
        while len(telemetry.by_name("process")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await client.core.delete_queue(f"{queue}.dlq")
    [publish] = [s for s in telemetry.by_name("publish")
                 if s.attributes and s.attributes["messaging.destination.name"] == queue]
    first, second = sorted(telemetry.by_name("process"), key=lambda s: s.start_time or 0)
    one_trace([publish, first, second])
    assert parent_of(first) == parent_of(second) == publish.context.span_id
    assert [e.name for e in first.events] == ["exception", "retry"]
    assert [e.name for e in second.events] == ["exception", "dead-lettered"]
    assert first.attributes and first.attributes["postage.outcome"] == "retried"
    assert second.attributes and second.attributes["postage.outcome"] == "dead-lettered"
    assert telemetry.total("postage.messages.retried") == 1
    assert telemetry.total("postage.messages.dead_lettered") == 1


SERVER = textwrap.dedent("""\
    import asyncio, json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import postage
    from postage.opentelemetry import PostageInstrumentor

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    PostageInstrumentor().instrument(tracer_provider=provider)

    async def main(url, exchange, out):
        async with postage.AsyncClient(url) as client:
            async def echo(body):
                return body
            await client.receive(exchange, "echo", exchange + ".q", echo)
            print("ready", flush=True)
            while not spans.get_finished_spans():
                await asyncio.sleep(0.02)
        with open(out, "w") as f:
            json.dump([[s.name, format(s.context.trace_id, "032x")]
                       for s in spans.get_finished_spans()], f)

    asyncio.run(main(*sys.argv[1:]))
    """)


async def test_the_trace_crosses_to_another_process(telemetry: Telemetry, broker_url: str,
                                                    tmp_path: Path) -> None:
    exchange = f"otel.proc.{uuid.uuid4().hex[:8]}"
    out = tmp_path / "spans.json"
    server = subprocess.Popen([sys.executable, "-c", SERVER, broker_url, exchange, str(out)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30) == "ready\n"
        async with postage.AsyncClient(broker_url) as client:
            assert await client.rpc(exchange, "echo", b"x", timeout=10) == b"x"
        assert await asyncio.to_thread(server.wait, 30) == 0
    finally:
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    theirs = json.loads(out.read_text())
    [client_span] = [s for s in telemetry.finished() if s.kind == SpanKind.CLIENT]
    mine = format(client_span.context.trace_id, "032x")
    assert [name.split()[0] for name, _ in theirs] == ["process"]
    assert {trace for _, trace in theirs} == {mine}


async def test_the_trace_crosses_to_an_aio_pika_program(telemetry: Telemetry,
                                                       broker_url: str) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

    instrumentor = AioPikaInstrumentor()
    # aio-pika's instrumentation declares aio-pika < 10; its hooks work on the one here
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, skip_dep_check=True)
    queue = f"otel.aiopika.{uuid.uuid4().hex[:8]}"
    try:
        async with postage.AsyncClient(broker_url) as client:
            got = asyncio.Event()

            def handle(_body: bytes) -> None:
                got.set()

            await client.receive("", "", queue, handle)
            connection = await aio_pika.connect(broker_url)
            async with connection:
                channel = await connection.channel()
                await channel.default_exchange.publish(aio_pika.Message(b"from aio-pika"),
                                                       routing_key=queue)
            await asyncio.wait_for(got.wait(), 10)
            await asyncio.sleep(0.1)
    finally:
        instrumentor.uninstrument()
    theirs = [s for s in telemetry.finished() if s.kind == SpanKind.PRODUCER
              and s.instrumentation_scope and "aio_pika" in s.instrumentation_scope.name]
    [process] = telemetry.by_name("process")
    assert theirs, [s.name for s in telemetry.finished()]
    one_trace([theirs[0], process])
    assert parent_of(process) == theirs[0].context.span_id


@pytest.mark.parametrize("value", [7, ["00-x"], {"a": 1}, 1.5])
async def test_tracing_headers_of_another_type_are_ignored(
        telemetry: Telemetry, broker_url: str, value: Any) -> None:
    """A valid message whose ``traceparent`` or ``baggage`` header is not a string is
    handled (a new trace), as it is with tracing off."""
    queue = f"otel.hostile.{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    async with postage.AsyncClient(broker_url) as client:
        await client.receive("", "", queue, got.append)
        await client.publish("", queue, b"valid", properties=postage.Properties(
            headers={"traceparent": value, "baggage": value}))
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert got == [b"valid"]
    [process] = telemetry.by_name("process")
    assert process.attributes is not None
    assert process.attributes["postage.outcome"] == "acked"
