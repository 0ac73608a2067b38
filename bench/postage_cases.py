"""Postage's side of each workload, through the core and each public API.

The core (``postage._core.core``) is the reference path every API is built on. The API cases
use the public APIs exactly as a user would; a case whose API is not importable is shown as
"not available" by the runner (see ``requires`` in ``bench.cases``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.common import (
    BODY,
    PAYLOAD,
    Arrivals,
    Ctx,
    latency_result,
    rpc_workload,
    rss_mb,
    run_async,
    warmup_count,
    windowed,
)
from bench.peers import PREFETCH, measure_pending

# ---------------------------------------------------------------------------------------
# the core


async def _core_publish(ctx: Ctx, window: int) -> dict[str, float]:
    from postage._core.core import open_core
    from postage._wire.properties import PERSISTENT, Properties

    core = await open_core(ctx.url)
    try:
        name = ctx.name("core-pub")
        await core.declare_queue(name, durable=True)
        props = Properties(delivery_mode=PERSISTENT)

        async def op(_i: int) -> None:
            await core.publish("", name, BODY, props)

        await windowed(warmup_count(ctx), window, op, ctx)
        elapsed = await windowed(ctx.n, window, op, ctx)
        await core.transport.delete_queue(name)
    finally:
        await core.close(5)
    return {"rate": ctx.n / elapsed}


def core_publish_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_publish(ctx, ctx.window))  # type: ignore[no-any-return]


def core_publish_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_publish(ctx, 1))  # type: ignore[no-any-return]


async def core_e2e_async(ctx: Ctx, prefetch: int = PREFETCH) -> dict[str, float]:
    from postage._core.core import open_core
    from postage._wire.properties import PERSISTENT, Properties

    core = await open_core(ctx.url)
    try:
        name = ctx.name("core-e2e")
        await core.declare_queue(name, durable=True)
        arrivals = Arrivals()

        async def handler(_delivery: Any) -> None:
            arrivals.hit()

        await core.subscribe(name, handler, prefetch_count=prefetch)
        props = Properties(delivery_mode=PERSISTENT)

        async def op(_i: int) -> None:
            await core.publish("", name, BODY, props)

        result = await arrivals.rate(ctx, op)
        await core.transport.delete_queue(name)
    finally:
        await core.close(5)
    return result


def core_e2e(ctx: Ctx) -> dict[str, float]:
    return run_async(core_e2e_async(ctx))  # type: ignore[no-any-return]


async def _core_responder(ctx: Ctx, core: Any, serve: bool = True) -> str:
    name = ctx.name("core-rpc")
    await core.declare_queue(name, auto_delete=True)
    if serve:
        async def handler(delivery: Any) -> None:
            await core.reply(delivery, delivery.body)

        await core.subscribe(name, handler, prefetch_count=PREFETCH)
    return name


async def _core_rpc(ctx: Ctx, window: int) -> dict[str, float]:
    from postage._core.core import open_core

    core = await open_core(ctx.url)
    try:
        name = await _core_responder(ctx, core)

        async def op(_i: int) -> None:
            await core.call("", name, BODY, timeout=10)

        return await rpc_workload(ctx, window, op)
    finally:
        await core.close(5)


def core_rpc_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_rpc(ctx, 1))  # type: ignore[no-any-return]


def core_rpc_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_rpc(ctx, 64))  # type: ignore[no-any-return]


async def _core_pending(ctx: Ctx) -> dict[str, float]:
    from postage._core.core import open_core

    core = await open_core(ctx.url)
    try:
        name = await _core_responder(ctx, core, serve=False)
        await core.publish("", name, BODY)  # warm up the publisher channel

        async def start() -> list[asyncio.Task[Any]]:
            await core._start_replies()
            return [asyncio.ensure_future(core.call("", name, BODY, timeout=600))
                    for _ in range(ctx.n - 1)]

        result = await measure_pending(ctx, name, start)
        await core.transport.delete_queue(name)
        return result
    finally:
        await core.close(5)


def core_pending(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_pending(ctx))  # type: ignore[no-any-return]


async def _core_idle(ctx: Ctx) -> dict[str, float]:
    from postage._core.core import open_core

    core = await open_core(ctx.url)
    try:
        await _core_responder(ctx, core)
        await asyncio.sleep(1.0)
        return {"mb": rss_mb()}
    finally:
        await core.close(5)


def core_idle(ctx: Ctx) -> dict[str, float]:
    return run_async(_core_idle(ctx))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------
# the async client (postage.AsyncClient)


def _instrument(ctx: Ctx) -> None:
    """``params["otel"]``: trace and measure with OpenTelemetry's SDK, the spans going to a
    no-op exporter either one by one (``"noop"``: SimpleSpanProcessor) or in batches
    (``"batch"``: BatchSpanProcessor, metrics exported every 5 s); ``"sampled"``: as
    ``"batch"``, with one trace in ten sampled (``ParentBased(TraceIdRatioBased(0.1))``)."""
    mode = ctx.params.get("otel")
    if not mode:
        return
    import io
    from collections.abc import Sequence

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        InMemoryMetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from postage.opentelemetry import PostageInstrumentor

    class Discard(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if mode == "sampled":
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    else:
        tracer_provider = TracerProvider()
    if mode in ("batch", "sampled"):
        tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
        reader: Any = PeriodicExportingMetricReader(
            ConsoleMetricExporter(out=io.StringIO()), export_interval_millis=5000)
    else:
        tracer_provider.add_span_processor(SimpleSpanProcessor(Discard()))
        reader = InMemoryMetricReader()
    PostageInstrumentor().instrument(tracer_provider=tracer_provider,
                                     meter_provider=MeterProvider(metric_readers=[reader]))


async def _client(ctx: Ctx) -> Any:
    import postage

    _instrument(ctx)
    client = postage.AsyncClient(ctx.url)
    await client.open()
    return client


async def _client_publish(ctx: Ctx, window: int) -> dict[str, float]:
    from postage import Properties

    client = await _client(ctx)
    try:
        name = ctx.name("client-pub")
        await client.core.declare_queue(name, durable=True)
        props = Properties(delivery_mode=2)

        async def op(_i: int) -> None:
            await client.publish("", name, BODY, props)

        await windowed(warmup_count(ctx), window, op, ctx)
        elapsed = await windowed(ctx.n, window, op, ctx)
        await client.core.transport.delete_queue(name)
    finally:
        await client.close(5)
    return {"rate": ctx.n / elapsed}


def client_publish_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_client_publish(ctx, ctx.window))  # type: ignore[no-any-return]


async def _client_e2e(ctx: Ctx) -> dict[str, float]:
    from postage import Properties

    client = await _client(ctx)
    try:
        name = ctx.name("client-e2e")
        arrivals = Arrivals()

        async def handler(_body: bytes) -> None:
            arrivals.hit()

        await client.receive("", name, name, handler, prefetch_count=PREFETCH, durable=True)
        props = Properties(delivery_mode=2)

        async def op(_i: int) -> None:
            await client.publish("", name, BODY, props)

        result = await arrivals.rate(ctx, op)
        await client.core.transport.delete_queue(name)
    finally:
        await client.close(5)
    return result


def client_e2e(ctx: Ctx) -> dict[str, float]:
    return run_async(_client_e2e(ctx))  # type: ignore[no-any-return]


async def _client_rpc(ctx: Ctx, window: int) -> dict[str, float]:
    client = await _client(ctx)
    try:
        name = ctx.name("client-rpc")

        async def echo(body: bytes) -> bytes:
            return body

        await client.receive("", name, name, echo, prefetch_count=PREFETCH)

        async def op(_i: int) -> None:
            await client.rpc("", name, BODY, timeout=10)

        return await rpc_workload(ctx, window, op)
    finally:
        await client.close(5)


def client_rpc_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_client_rpc(ctx, 1))  # type: ignore[no-any-return]


def client_rpc_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_client_rpc(ctx, 64))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------
# the communicator (postage.connect, postage.aio.connect): kiwiPy's own code, run on Postage


async def _aio_comm_e2e(ctx: Ctx) -> dict[str, float]:
    from postage import aio

    comm = await aio.connect(ctx.url)
    try:
        queue = await _maybe_await(comm.task_queue(ctx.name("aiocomm-e2e"),
                                                   prefetch_count=PREFETCH))
        arrivals = Arrivals()

        async def on_task(_comm: Any, _task: Any) -> bool:
            arrivals.hit()
            return True

        await _maybe_await(queue.add_task_subscriber(on_task))

        async def op(_i: int) -> None:
            await queue.task_send(PAYLOAD, no_reply=True)

        result = await arrivals.rate(ctx, op)
    finally:
        await _maybe_await(comm.close())
    return result


def aio_comm_e2e(ctx: Ctx) -> dict[str, float]:
    return run_async(_aio_comm_e2e(ctx))  # type: ignore[no-any-return]


async def _aio_comm_rpc(ctx: Ctx, window: int) -> dict[str, float]:
    from postage import aio

    comm = await aio.connect(ctx.url)
    try:
        ident = ctx.name("aiocomm-rpc")
        print(f"QUEUE postage.rpc.{ident}", flush=True)

        async def echo(_comm: Any, body: Any) -> Any:
            return body

        await _maybe_await(comm.add_rpc_subscriber(echo, identifier=ident))

        async def op(_i: int) -> None:
            result = await comm.rpc_send(ident, PAYLOAD)
            if isinstance(result, asyncio.Future):
                await result

        return await rpc_workload(ctx, window, op)
    finally:
        await _maybe_await(comm.close())


def aio_comm_rpc_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_aio_comm_rpc(ctx, 1))  # type: ignore[no-any-return]


def aio_comm_rpc_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_aio_comm_rpc(ctx, 64))  # type: ignore[no-any-return]


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


# ---------------------------------------------------------------------------------------
# the classic API (postage.messaging)


def _classic_setup(ctx: Ctx, serve: bool, persistent: bool = True
                   ) -> tuple[Any, Any, str, str]:
    """An exchange and a bound queue, a producer class for them, and (if ``serve``) a core
    responder answering classic RPCs with a success result, in a portal thread.
    ``persistent``: the producer's setting (publish cases: True, like every publish case;
    the RPC case keeps the classic default, False, like the tutorial RPC it is set beside)."""
    os.environ["POSTAGE_URL"] = ctx.url
    from postage import messaging

    exchange = ctx.name("classic-x")
    queue = ctx.name("classic-q")
    persistent_messages = persistent
    key = "bench"

    class BenchExchange(messaging.Exchange):  # type: ignore[misc,name-defined]
        name = exchange
        exchange_type = "direct"
        passive = False
        durable = True
        auto_delete = False

    class BenchProducer(messaging.GenericProducer):  # type: ignore[misc,name-defined]
        eks = [(BenchExchange, key)]
        persistent = persistent_messages

    from postage._blocking.portal import BlockingPortal

    portal = BlockingPortal("bench-responder")

    async def setup() -> Any:
        from postage._core.core import open_core
        from postage._wire.envelope import build_envelope, result_content

        core = await open_core(ctx.url)
        await core.declare_exchange(exchange, "direct", durable=True)
        await core.declare_queue(queue, durable=True)
        await core.bind(queue, exchange, key)
        if serve:
            async def handler(delivery: Any) -> None:
                request = core.decode_envelope(delivery)
                value = request["content"].get("parameters")
                reply = build_envelope("result", request["name"], "message",
                                       result_content("success", value))
                await core.reply(delivery, core.encode(reply), core.properties())

            await core.subscribe(queue, handler, prefetch_count=PREFETCH)
        return core

    core = portal.call(setup, timeout=30)
    return BenchProducer, (portal, core), exchange, queue


def _classic_teardown(state: Any, exchange: str, queue: str) -> None:
    portal, core = state

    async def down() -> None:
        await core.transport.delete_queue(queue)
        await core.transport.delete_exchange(exchange)
        await core.close(5)

    try:
        portal.call(down, timeout=30)
    finally:
        portal.stop()


def _new_producer(cls: Any, url: str) -> Any:
    try:
        return cls(url=url)
    except TypeError:
        return cls()


def classic_publish(ctx: Ctx, pipeline: int = 0) -> dict[str, float]:
    producer_cls, state, exchange, queue = _classic_setup(ctx, serve=False)
    if pipeline:  # the explicit opt-in: message_X returns before the confirm
        producer_cls = type("PipelinedBenchProducer", (producer_cls,), {"pipeline": pipeline})
    try:
        producer = _new_producer(producer_cls, ctx.url)
        for _ in range(warmup_count(ctx)):
            producer.message_bench(PAYLOAD)
        start = time.perf_counter()
        for i in range(ctx.n):
            if i % 64 == 0:
                ctx.check()
            producer.message_bench(PAYLOAD)
        if pipeline:
            producer.flush()  # timed until the broker has confirmed every message
        elapsed = time.perf_counter() - start
        close = getattr(producer, "close", None)
        if close is not None:
            close()
    finally:
        _classic_teardown(state, exchange, queue)
    return {"rate": ctx.n / elapsed}


def classic_publish_pipelined(ctx: Ctx) -> dict[str, float]:
    return classic_publish(ctx, pipeline=ctx.window)


def classic_rpc_seq(ctx: Ctx) -> dict[str, float]:
    producer_cls, state, exchange, queue = _classic_setup(ctx, serve=True, persistent=False)
    try:
        producer = _new_producer(producer_cls, ctx.url)
        for _ in range(warmup_count(ctx)):
            reply = producer.rpc_bench(PAYLOAD)
            if not reply:
                raise RuntimeError(f"classic rpc_bench failed: {reply!r}")
        lat = []
        for i in range(ctx.n):
            if i % 64 == 0:
                ctx.check()
            t = time.perf_counter()
            producer.rpc_bench(PAYLOAD)
            lat.append((time.perf_counter() - t) * 1000)
        close = getattr(producer, "close", None)
        if close is not None:
            close()
    finally:
        _classic_teardown(state, exchange, queue)
    return latency_result(lat)


# ---------------------------------------------------------------------------------------
# scaling: end-to-end throughput with k consumer processes on one queue


def _scale_consumer(kind: str, url: str, queue: str, counter: Any, ready: Any, stop: Any,
                    deadline: float) -> None:
    """A consumer process: count handled messages in ``counter`` until ``stop``."""
    from bench.common import run_async as _run

    async def postage_consumer() -> None:
        from postage._core.core import open_core

        core = await open_core(url)

        async def handler(_delivery: Any) -> None:
            with counter.get_lock():
                counter.value += 1

        await core.subscribe(queue, handler, prefetch_count=PREFETCH)
        ready.release()
        await asyncio.get_running_loop().run_in_executor(
            None, stop.wait, max(0.0, deadline - time.monotonic()))
        await core.close(5)

    async def aiopika_consumer() -> None:
        import aio_pika

        conn = await aio_pika.connect(url)
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=PREFETCH)
        q = await ch.get_queue(queue)

        async def on_message(message: Any) -> None:
            await message.ack()
            with counter.get_lock():
                counter.value += 1

        await q.consume(on_message)
        ready.release()
        await asyncio.get_running_loop().run_in_executor(
            None, stop.wait, max(0.0, deadline - time.monotonic()))
        await conn.close()

    _run(postage_consumer() if kind == "postage" else aiopika_consumer())


def scaling(ctx: Ctx, kind: str) -> dict[str, float]:
    import multiprocessing as mp

    consumers = int(ctx.params["consumers"])
    mpc = mp.get_context("spawn")
    counter = mpc.Value("q", 0)
    ready = mpc.Semaphore(0)
    stop = mpc.Event()
    queue = ctx.name(f"scale-{kind}")

    async def declare_and_publish(n: int) -> float:
        from postage._core.core import open_core
        from postage._wire.properties import PERSISTENT, Properties

        core = await open_core(ctx.url)
        try:
            await core.declare_queue(queue, durable=True)
            if n == 0:
                return 0.0
            props = Properties(delivery_mode=PERSISTENT)

            async def op(_i: int) -> None:
                await core.publish("", queue, BODY, props)

            start = time.perf_counter()
            await windowed(n, ctx.window, op, ctx)
            while counter.value < n:
                ctx.check()
                await asyncio.sleep(0.002)
            return time.perf_counter() - start
        finally:
            await core.close(5)

    run_async(declare_and_publish(0))
    procs = [mpc.Process(target=_scale_consumer,
                         args=(kind, ctx.url, queue, counter, ready, stop, ctx.deadline),
                         daemon=True) for _ in range(consumers)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=ctx.remaining()):
                raise TimeoutError("a consumer process did not start")
        elapsed = run_async(declare_and_publish(ctx.n))
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    return {"rate": ctx.n / elapsed}


def scaling_postage(ctx: Ctx) -> dict[str, float]:
    return scaling(ctx, "postage")


def scaling_aiopika(ctx: Ctx) -> dict[str, float]:
    return scaling(ctx, "aiopika")

