"""The peers' side of each workload: pika, aio-pika, raw aiormq and kiwiPy.

Each function runs ONE repetition of a case and returns its metrics. The code is what a
user of each library would write (tutorial style), with the same body, persistence,
confirms, window and prefetch as the Postage side, so that only the library differs.
Libraries are imported inside the functions: the memory cases measure a process's RSS.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import threading
import time
import uuid
from collections import deque
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
    wait_event,
    warmup_count,
    windowed,
)

PREFETCH = 256


# ---------------------------------------------------------------------------------------
# pika (BlockingConnection)


def pika_publish(ctx: Ctx) -> dict[str, float]:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(ctx.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = ctx.name("pika-pub")
        ch.queue_declare(q, durable=True)
        props = pika.BasicProperties(delivery_mode=2)
        for _ in range(warmup_count(ctx)):
            ch.basic_publish("", q, BODY, props, mandatory=True)
        start = time.perf_counter()
        for i in range(ctx.n):
            if i % 256 == 0:
                ctx.check()
            ch.basic_publish("", q, BODY, props, mandatory=True)
        elapsed = time.perf_counter() - start
        ch.queue_delete(q)
    finally:
        conn.close()
    return {"rate": ctx.n / elapsed}


def _pika_rpc_server(url: str, queue: str, ready: threading.Event, stop: threading.Event) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue)

    def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish("", props.reply_to, body,
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(queue, on_request)
    ready.set()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.1)
    conn.close()


def pika_rpc(ctx: Ctx) -> dict[str, float]:
    """The RabbitMQ tutorial's RPC: exclusive callback queue, process_data_events loop."""
    import pika

    queue = ctx.name("pika-rpc")
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=_pika_rpc_server, args=(ctx.url, queue, ready, stop),
                              daemon=True)
    server.start()
    wait_event(ready, ctx, "the pika RPC server")
    conn = pika.BlockingConnection(pika.URLParameters(ctx.url))
    try:
        ch = conn.channel()
        callback_queue = ch.queue_declare("", exclusive=True).method.queue
        state: dict[str, Any] = {"corr": None, "response": None}

        def on_response(_ch: Any, _m: Any, props: Any, body: bytes) -> None:
            if state["corr"] == props.correlation_id:
                state["response"] = body

        ch.basic_consume(callback_queue, on_response, auto_ack=True)

        def call() -> bytes:
            state["response"] = None
            state["corr"] = str(uuid.uuid4())
            ch.basic_publish("", queue, BODY, pika.BasicProperties(
                reply_to=callback_queue, correlation_id=state["corr"]))
            limit = time.monotonic() + 10
            while state["response"] is None:
                conn.process_data_events(time_limit=1)
                if time.monotonic() > limit:
                    raise TimeoutError("no RPC reply within 10 s")
            return state["response"]  # type: ignore[no-any-return]

        for _ in range(warmup_count(ctx)):
            call()
        lat = []
        for i in range(ctx.n):
            if i % 64 == 0:
                ctx.check()
            t = time.perf_counter()
            call()
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        stop.set()
        conn.close()
        server.join(5)
    return latency_result(lat)


# ---------------------------------------------------------------------------------------
# aio-pika and aiormq


async def _aiopika_publish(ctx: Ctx, window: int) -> dict[str, float]:
    import aio_pika

    conn = await aio_pika.connect(ctx.url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        name = ctx.name("aiopika-pub")
        queue = await ch.declare_queue(name, durable=True)
        ex = ch.default_exchange

        async def op(_i: int) -> None:
            await ex.publish(aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=name, mandatory=True)

        await windowed(warmup_count(ctx), window, op, ctx)
        elapsed = await windowed(ctx.n, window, op, ctx)
        await queue.delete(if_unused=False, if_empty=False)
    return {"rate": ctx.n / elapsed}


def aiopika_publish_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_publish(ctx, 1))  # type: ignore[no-any-return]


def aiopika_publish_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_publish(ctx, ctx.window))  # type: ignore[no-any-return]


async def _aiormq_publish(ctx: Ctx) -> dict[str, float]:
    import aiormq
    from pamqp import commands as spec

    conn = await aiormq.connect(ctx.url)
    try:
        ch = await conn.channel()
        name = ctx.name("aiormq-pub")
        await ch.queue_declare(name, durable=True)
        props = spec.Basic.Properties(delivery_mode=2)

        async def op(_i: int) -> None:
            await ch.basic_publish(BODY, routing_key=name, properties=props, mandatory=True)

        await windowed(warmup_count(ctx), ctx.window, op, ctx)
        elapsed = await windowed(ctx.n, ctx.window, op, ctx)
        await ch.queue_delete(name)
    finally:
        await conn.close()
    return {"rate": ctx.n / elapsed}


def aiormq_publish_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiormq_publish(ctx))  # type: ignore[no-any-return]


async def _aiopika_e2e(ctx: Ctx) -> dict[str, float]:
    import aio_pika

    conn = await aio_pika.connect(ctx.url)
    async with conn:
        pub = await conn.channel(publisher_confirms=True)
        sub = await conn.channel()
        await sub.set_qos(prefetch_count=PREFETCH)
        name = ctx.name("aiopika-e2e")
        queue = await sub.declare_queue(name, durable=True)
        arrivals = Arrivals()

        async def on_message(message: Any) -> None:
            await message.ack()
            arrivals.hit()

        await queue.consume(on_message)
        ex = pub.default_exchange

        async def op(_i: int) -> None:
            await ex.publish(aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=name, mandatory=True)

        result = await arrivals.rate(ctx, op)
        await pub.queue_delete(name)
    return result


def aiopika_e2e(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_e2e(ctx))  # type: ignore[no-any-return]


class _AioPikaRpcClient:
    """Hand-written aio-pika RPC over direct reply-to (futures by correlation id)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.futures: dict[str, asyncio.Future[bytes]] = {}
        self.ids = itertools.count()

    async def start(self) -> None:
        import aio_pika

        queue = aio_pika.Queue(self.channel, "amq.rabbitmq.reply-to", durable=False,
                               exclusive=False, auto_delete=False, arguments=None)
        await queue.consume(self.on_reply, no_ack=True)

    async def on_reply(self, message: Any) -> None:
        fut = self.futures.pop(message.correlation_id, None)
        if fut is not None and not fut.done():
            fut.set_result(message.body)

    async def call(self, queue: str, body: bytes, timeout: float = 10.0) -> bytes:
        import aio_pika

        cid = str(next(self.ids))
        fut = asyncio.get_running_loop().create_future()
        self.futures[cid] = fut
        try:
            await self.channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=cid, reply_to="amq.rabbitmq.reply-to"),
                routing_key=queue, mandatory=True)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.futures.pop(cid, None)


async def _aiopika_rpc_setup(
    ctx: Ctx, conn: Any, serve: bool = True
) -> tuple[_AioPikaRpcClient, str]:
    import aio_pika

    name = ctx.name("aiopika-rpc")
    server = await conn.channel()
    await server.set_qos(prefetch_count=PREFETCH)
    queue = await server.declare_queue(name, auto_delete=True)
    if serve:
        async def on_request(message: Any) -> None:
            await server.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to)
            await message.ack()

        await queue.consume(on_request)
    client = _AioPikaRpcClient(await conn.channel())
    await client.start()
    return client, name


async def _aiopika_rpc(ctx: Ctx, window: int) -> dict[str, float]:
    import aio_pika

    conn = await aio_pika.connect(ctx.url)
    async with conn:
        client, name = await _aiopika_rpc_setup(ctx, conn)

        async def op(_i: int) -> None:
            await client.call(name, BODY)

        return await rpc_workload(ctx, window, op)


def aiopika_rpc_seq(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_rpc(ctx, 1))  # type: ignore[no-any-return]


def aiopika_rpc_window(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_rpc(ctx, 64))  # type: ignore[no-any-return]


async def wait_queue_depth(url: str, queue: str, depth: int, ctx: Ctx) -> None:
    """Poll (passively) until ``queue`` holds ``depth`` messages."""
    import aiormq

    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel()
        while True:
            ok = await ch.queue_declare(queue, passive=True)
            if ok.message_count >= depth:
                return
            ctx.check()
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def measure_pending(ctx: Ctx, queue: str, start_calls: Any) -> dict[str, float]:
    """Extra memory while ``ctx.n`` calls wait for replies that never come.

    ``start_calls()`` launches the calls and returns something to cancel them with.
    Memory is measured with tracemalloc (all threads) and as an RSS delta."""
    import gc
    import tracemalloc

    gc.collect()
    rss0 = rss_mb()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    handle = await start_calls()
    await wait_queue_depth(ctx.url, queue, ctx.n, ctx)
    await asyncio.sleep(0.2)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    rss1 = rss_mb()
    tracemalloc.stop()
    if isinstance(handle, list):
        for item in handle:
            item.cancel()
        await asyncio.gather(*[h for h in handle if isinstance(h, asyncio.Task)],
                             return_exceptions=True)
    # Memory grows linearly with the calls: a quick run measures fewer and scales to 10,000.
    # (The RSS delta includes tracemalloc's own bookkeeping: informative only.)
    return {"mb": traced / 2**20 * 10_000 / ctx.n, "per_call_kb": traced / ctx.n / 1024,
            "calls": ctx.n, "rss_delta_with_tracemalloc_mb": rss1 - rss0}


async def _aiopika_pending(ctx: Ctx) -> dict[str, float]:
    import aio_pika

    conn = await aio_pika.connect(ctx.url)
    async with conn:
        client, name = await _aiopika_rpc_setup(ctx, conn, serve=False)

        async def start() -> list[asyncio.Task[bytes]]:
            return [asyncio.ensure_future(client.call(name, BODY, timeout=600))
                    for _ in range(ctx.n)]

        result = await measure_pending(ctx, name, start)
        ch = await conn.channel()
        await ch.queue_delete(name)
    return result


def aiopika_pending(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_pending(ctx))  # type: ignore[no-any-return]


async def _aiopika_idle(ctx: Ctx) -> dict[str, float]:
    import aio_pika

    conn = await aio_pika.connect(ctx.url)
    async with conn:
        await _aiopika_rpc_setup(ctx, conn)
        await asyncio.sleep(1.0)
        return {"mb": rss_mb()}


def aiopika_idle(ctx: Ctx) -> dict[str, float]:
    return run_async(_aiopika_idle(ctx))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------
# kiwiPy-style code, shared by kiwiPy and the Postage communicator (its drop-in API): the
# case's params name the module ("kiwipy" or "postage") and any options of its connect().


def _kiwi_connect(ctx: Ctx) -> Any:
    """``connect(url, **options)`` of the module the case runs, as a context manager."""
    mod = importlib.import_module(ctx.params["module"])
    return mod.connect(ctx.url, **ctx.params.get("connect", {}))


def kiwi_publish(ctx: Ctx) -> dict[str, float]:
    with _kiwi_connect(ctx) as comm:
        queue = comm.task_queue(ctx.name("kiwi-pub"))
        for _ in range(warmup_count(ctx)):
            queue.task_send(PAYLOAD, no_reply=True)
        start = time.perf_counter()
        for i in range(ctx.n):
            if i % 64 == 0:
                ctx.check()
            queue.task_send(PAYLOAD, no_reply=True)
        elapsed = time.perf_counter() - start
    return {"rate": ctx.n / elapsed}


def kiwi_e2e(ctx: Ctx) -> dict[str, float]:
    with _kiwi_connect(ctx) as comm:
        queue = comm.task_queue(ctx.name("kiwi-e2e"), prefetch_count=PREFETCH)
        lock = threading.Lock()
        done = threading.Event()
        state = {"count": 0, "target": 0}

        def on_task(_comm: Any, _task: Any) -> bool:
            with lock:
                state["count"] += 1
                if state["count"] >= state["target"]:
                    done.set()
            return True

        queue.add_task_subscriber(on_task)

        def run(n: int) -> float:
            with lock:
                state["count"], state["target"] = 0, n
                done.clear()
            start = time.perf_counter()
            for i in range(n):
                if i % 64 == 0:
                    ctx.check()
                queue.task_send(PAYLOAD, no_reply=True)
            wait_event(done, ctx, "the tasks to be handled")
            return time.perf_counter() - start

        run(warmup_count(ctx))
        elapsed = run(ctx.n)
    return {"rate": ctx.n / elapsed}


def _kiwi_rpc_identifier(ctx: Ctx) -> str:
    ident = ctx.name("kiwi-rpc")
    if ctx.params["module"] == "postage":
        print(f"QUEUE postage.rpc.{ident}", flush=True)
    return ident


def kiwi_rpc_seq(ctx: Ctx) -> dict[str, float]:
    with _kiwi_connect(ctx) as comm:
        ident = _kiwi_rpc_identifier(ctx)
        comm.add_rpc_subscriber(lambda _comm, body: body, identifier=ident)
        for _ in range(warmup_count(ctx)):
            comm.rpc_send(ident, PAYLOAD).result(timeout=10)
        lat = []
        for i in range(ctx.n):
            if i % 64 == 0:
                ctx.check()
            t = time.perf_counter()
            comm.rpc_send(ident, PAYLOAD).result(timeout=10)
            lat.append((time.perf_counter() - t) * 1000)
    return latency_result(lat)


def kiwi_rpc_window(ctx: Ctx, window: int = 64) -> dict[str, float]:
    with _kiwi_connect(ctx) as comm:
        ident = _kiwi_rpc_identifier(ctx)
        comm.add_rpc_subscriber(lambda _comm, body: body, identifier=ident)

        def run(n: int) -> float:
            pending: deque[Any] = deque()
            start = time.perf_counter()
            for i in range(n):
                if i % 64 == 0:
                    ctx.check()
                if len(pending) >= window:
                    pending.popleft().result(timeout=10)
                pending.append(comm.rpc_send(ident, PAYLOAD))
            while pending:
                pending.popleft().result(timeout=10)
            return time.perf_counter() - start

        run(warmup_count(ctx))
        elapsed = run(ctx.n)
    return {"rate": ctx.n / elapsed}


def kiwi_idle(ctx: Ctx) -> dict[str, float]:
    if ctx.params.get("loop"):  # the blocking API's loop (read when it starts)
        os.environ["POSTAGE_LOOP"] = ctx.params["loop"]
    with _kiwi_connect(ctx) as comm:
        ident = _kiwi_rpc_identifier(ctx)
        comm.add_rpc_subscriber(lambda _comm, body: body, identifier=ident)
        time.sleep(1.0)
        return {"mb": rss_mb()}


# where each module sends an RPC: exchange, its type, routing key of an identifier, durable
_RPC_ROUTES = {"kiwipy": ("kiwipy.messages", "topic", "[rpc].{}", False),
               "postage.kiwipy": ("kiwipy.messages", "topic", "[rpc].{}", False),
               "postage": ("postage.rpc", "direct", "{}", True)}


def kiwi_pending(ctx: Ctx) -> dict[str, float]:
    """10,000 rpc_send futures to an identifier whose queue has no consumer."""
    import pika

    exchange, exchange_type, key_format, durable = _RPC_ROUTES[ctx.params["module"]]
    ident = ctx.name("kiwi-pending")
    conn = pika.BlockingConnection(pika.URLParameters(ctx.url))
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type, durable=durable)
    ch.queue_declare(ident, auto_delete=False)
    ch.queue_bind(ident, exchange, key_format.format(ident))
    conn.close()
    with _kiwi_connect(ctx) as comm:
        comm.rpc_send(ident, PAYLOAD)  # warm up the reply path
        futures: list[Any] = []

        async def start() -> list[Any]:
            # rpc_send blocks until sent: run it from a thread, not this loop
            def send_all() -> None:
                for i in range(ctx.n - 1):
                    if i % 256 == 0:
                        ctx.check()
                    futures.append(comm.rpc_send(ident, PAYLOAD))
            await asyncio.get_running_loop().run_in_executor(None, send_all)
            return futures

        result = run_async(measure_pending(ctx, ident, start))
        for f in futures:
            f.cancel()
    return result
