"""The metrics after a known workload, read in memory and scraped over HTTP in the
Prometheus format (OpenTelemetry's Prometheus exporter in a process of its own)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request

import postage
import postage.aio
from postage import RetryPolicy
from postage.testing import fresh_broker

from .conftest import Telemetry

ATTRS = {"messaging_system": "rabbitmq", "postage_component": "test-component"}


async def _workload(url: str) -> None:
    """5 messages acked, 1 retried then dead-lettered, 3 RPCs, 1 unroutable."""
    async with postage.AsyncClient(url, retry_policy=RetryPolicy(max_attempts=2)) as client:
        handled = asyncio.Event()
        count = 0

        def work(body: bytes) -> None:
            nonlocal count
            if body == b"bad":
                raise ValueError("bad")
            count += 1
            if count == 5:
                handled.set()

        async def echo(body: bytes) -> bytes:
            return body

        await client.receive("", "", "jobs", work, durable=True)
        await client.receive("rpc", "echo", "rpc.echo", echo)
        for i in range(5):
            await client.publish("", "jobs", str(i).encode())
        await client.publish("", "jobs", b"bad")
        for _ in range(3):
            await client.rpc("rpc", "echo", b"x", timeout=5)
        try:
            await client.publish("", "nobody", b"x")
        except postage.Unroutable:
            pass
        await asyncio.wait_for(handled.wait(), 5)
        while client.core.transport.queue_spec("jobs.dlq") is None or not await _dead(client):
            await asyncio.sleep(0.01)


async def _dead(client: postage.AsyncClient) -> bool:
    return (await client.core.queue_state("jobs.dlq"))[0] == 1


async def test_counts_and_durations_after_a_known_workload(telemetry: Telemetry) -> None:
    broker = fresh_broker()
    await _workload(broker.url)
    jobs = {"messaging_destination_name": "jobs"}
    assert telemetry.total("postage.messages.acked", **jobs) == 5
    assert telemetry.total("postage.messages.retried", **jobs) == 1
    assert telemetry.total("postage.messages.dead_lettered", **jobs) == 1
    assert telemetry.total("messaging.client.consumed.messages", **jobs) == 7  # 5 + 2 tries
    assert telemetry.total("messaging.client.sent.messages", messaging_operation_name="publish",
                           **jobs) == 6
    assert telemetry.total("postage.messages.unroutable") == 1
    assert telemetry.total("postage.rpc.duration", messaging_destination_name="rpc") == 3
    assert telemetry.total("postage.rpc.in_flight") == 0
    assert telemetry.total("messaging.process.duration", **jobs) == 7
    assert all(attrs["postage.component"] == "test-component"
               for attrs, _ in telemetry.points("postage.messages.acked"))
    # replies go to one series, whatever the caller's reply address
    names = {attrs["messaging.destination.name"]
             for attrs, _ in telemetry.points("messaging.client.sent.messages")}
    assert names == {"jobs", "rpc", "amq.rabbitmq.reply-to"}


EXPORTER = textwrap.dedent("""\
    import asyncio, sys
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server
    from postage.opentelemetry import PostageInstrumentor
    from postage.testing import fresh_broker
    from tests.observe.test_metrics import _workload

    PostageInstrumentor().instrument(
        meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()]),
        component="scraped")
    server, _thread = start_http_server(0, addr="127.0.0.1")
    asyncio.run(_workload(fresh_broker().url))
    print(server.server_port, flush=True)
    sys.stdin.read()  # until the test is done
    """)


def _value(text: str, metric: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {metric} with {labels} in:\n{text}")


def test_prometheus_scrapes_the_metrics() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if "postage_messages_acked" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
    jobs = {"messaging_destination_name": "jobs", "postage_component": "scraped"}
    assert _value(text, "postage_messages_acked_total", **jobs) == 5
    assert _value(text, "postage_messages_dead_lettered_total", **jobs) == 1
    assert _value(text, "postage_messages_unroutable_total", postage_component="scraped") == 1
    assert _value(text, "postage_rpc_duration_seconds_count",
                  messaging_destination_name="rpc") == 3
    assert _value(text, "messaging_process_duration_seconds_count", **jobs) == 7


def test_random_parts_of_names_are_folded() -> None:
    from postage._tooling.telemetry import bounded_name

    assert bounded_name("postage.rpc.9f1c2d3e4b5a69788796a5b4c3d2e1f0") == "postage.rpc.{id}"
    assert bounded_name("postage.classic.reply.1234abcd-12ab-34cd-56ef-1234567890ab") == (
        "postage.classic.reply.{id}")
    assert bounded_name("4242@host") == "{id}@host"  # a GenericApplication's pid address
    assert bounded_name("worker.4242") == "worker.{id}"
    assert bounded_name("amq.rabbitmq.reply-to.g1h2AA==.x") == "amq.rabbitmq.reply-to"
    assert bounded_name("orders.eu") == "orders.eu"


async def test_presence_traffic_is_neither_counted_nor_traced(telemetry: Telemetry) -> None:
    """A monitor's probes and the status messages a watcher hears are Postage's own
    control traffic: they must not show as messages the component handled (a monitor
    would otherwise raise the rates it measures)."""
    from postage._api.presence import PresenceWatcher
    from postage.opentelemetry import PostageInstrumentor

    middleware = PostageInstrumentor._middleware
    assert middleware is not None
    async with postage.aio.connect(fresh_broker().url) as comm:
        await comm.announce(interval=0.05)
        async with PresenceWatcher(comm) as watcher:
            for _ in range(3):
                assert await watcher.probe(timeout=0.3) == 1
            await asyncio.sleep(0.2)  # heartbeats heard by the watcher
            assert watcher.components()
    assert middleware.presence_info()["messages_handled"] == 0
    assert not telemetry.by_name("process")
    assert telemetry.total("messaging.client.consumed.messages") == 0
