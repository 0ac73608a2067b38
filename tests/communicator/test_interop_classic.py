"""The communicator and the classic API call each other (docs/communicator.md, "With the
classic API").

First with hand-built classic envelopes on the plain core (what a classic component puts
on the wire), then with ``postage.messaging`` itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import postage
from postage._api.communicator import open_communicator
from postage._core.core import open_core
from postage._transport import Delivery
from postage._wire.envelope import build_envelope, result_content

from .conftest import Comm, Names, open_comm

# -- hand-built classic messages on the plain core ------------------------------------------


async def test_classic_request_reaches_communicator_subscriber(
    comm: Comm, names: Names, broker_url: str
) -> None:
    ident = names.identifier("classic-in")
    await comm.add_rpc_subscriber(lambda _c, body: {"got": body}, ident)
    core = await open_core(broker_url)
    try:
        # what classic rpc_X(1, "a", k=2) without a build method sends
        parameters = {"args": [1, "a"], "kwds": {"k": 2}}
        request = build_envelope("command", ident, "rpc", {"parameters": parameters},
                                 {"name": "classic"})
        reply = await core.call("postage.rpc", ident, core.encode(request), core.properties(),
                                timeout=10)
        envelope = core.decode_envelope(reply)
        assert envelope["type"] == "result" and envelope["category"] == "message"
        assert envelope["content"]["type"] == "success"
        assert envelope["content"]["value"] == {"got": parameters}
    finally:
        await core.close()


async def test_classic_request_sees_a_remote_exception(
    comm: Comm, names: Names, broker_url: str
) -> None:
    ident = names.identifier("classic-exc")

    def fails(_c: Any, _body: Any) -> Any:
        raise LookupError("nothing here")

    await comm.add_rpc_subscriber(fails, ident)
    core = await open_core(broker_url)
    try:
        request = build_envelope("command", ident, "rpc", {"parameters": None})
        reply = await core.call("postage.rpc", ident, core.encode(request), core.properties(),
                                timeout=10)
        envelope = core.decode_envelope(reply)
        assert envelope["content"] == {"type": "exception", "value": "LookupError",
                                       "message": "nothing here"}
        # the server's internals are not disclosed by default
        assert envelope["_reserved"] == {} and envelope["fingerprint"] == {}
        detailed = await open_communicator(broker_url, error_details=True)
        try:
            await detailed.add_rpc_subscriber(fails, f"{ident}.detailed")
            reply = await core.call("postage.rpc", f"{ident}.detailed",
                                    core.encode(request), core.properties(), timeout=10)
            envelope = core.decode_envelope(reply)
            assert "fails" in envelope["_reserved"]["traceback"]  # opted in
            assert envelope["fingerprint"]["pid"] == os.getpid()
        finally:
            await detailed.close(5)
    finally:
        await core.close()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("success", None), ("error", "Error"), ("exception", "KeyError")],
)
async def test_communicator_rpc_reaches_classic_style_handler(
    comm: Comm, names: Names, broker_url: str, kind: str, expected: str | None
) -> None:
    ident = names.identifier("classic-out")
    queue = names.queue("classic-handler")
    core = await open_core(broker_url)
    seen: list[dict[str, Any]] = []
    try:
        await core.declare_exchange("postage.rpc", "direct", durable=True)
        await core.declare_queue(queue, auto_delete=True)
        await core.bind(queue, "postage.rpc", ident)

        async def handler(delivery: Delivery) -> None:  # a classic @RpcHandler, by hand
            request = core.decode_envelope(delivery)
            seen.append(request)
            parameters = request["content"]["parameters"]
            if kind == "success":
                content = result_content("success", parameters * 2, "")
            elif kind == "error":
                content = {"type": "error", "value": None, "message": "bad request"}
            else:
                content = result_content("exception", "KeyError", "'k'")
            reply = build_envelope("result", request["name"], "message", content)
            await core.reply(delivery, core.encode(reply), core.properties())

        await core.subscribe(queue, handler)
        future = await comm.rpc_send(ident, 21)
        if expected is None:
            assert await asyncio.wait_for(future, 10) == 42
        else:
            with pytest.raises(postage.RemoteError) as info:
                await asyncio.wait_for(future, 10)
            assert info.value.type_name == expected
        [request] = seen
        assert (request["type"], request["name"], request["category"]) == (
            "command", ident, "rpc")
        assert request["content"] == {"parameters": 21}
    finally:
        await core.close()


async def test_classic_status_reaches_broadcast_subscribers(
    comm: Comm, broker_url: str, options: dict[str, Any]
) -> None:
    got: list[tuple[Any, ...]] = []
    event = threading.Event()

    def subscriber(_c: Any, *args: Any) -> None:
        got.append(args)
        event.set()

    await comm.add_broadcast_subscriber(postage.BroadcastFilter(subscriber, subject="online"))
    core = await open_core(broker_url)
    try:
        status = build_envelope("status", "online", "message", {"args": ["up"]},
                                {"name": "legacy"})
        await core.publish(options["broadcast_exchange"], "online", core.encode(status),
                           core.properties(correlation_id="c9"), mandatory=False)
        assert await asyncio.to_thread(event.wait, 10)
        assert got == [({"args": ["up"]}, "legacy", "online", "c9")]
    finally:
        await core.close()


# -- with postage.messaging ----------------------------------------------------------------


@contextmanager
def running_processor(processor: Any, timeout: float = 20) -> Iterator[None]:
    microthreads = pytest.importorskip("postage.microthreads")
    scheduler = microthreads.MicroScheduler()
    processor.start_consuming()
    scheduler.add_microthread(processor)
    thread = threading.Thread(target=lambda: list(scheduler.main()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        processor.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "the scheduler did not stop"


@pytest.fixture
def messaging(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    module = pytest.importorskip("postage.messaging")
    from postage._api.classic import runtime as _runtime

    monkeypatch.setenv("POSTAGE_URL", broker_url)
    monkeypatch.delenv("POSTAGE_VHOST", raising=False)
    yield module
    _runtime.close_all()


def rpc_exchange(messaging: Any) -> Any:
    return type("CommunicatorRpc", (messaging.Exchange,),
                {"name": "postage.rpc", "exchange_type": "direct", "durable": True})


async def test_classic_producer_calls_communicator(
    messaging: Any, flavour: str, broker_url: str, options: dict[str, Any], names: Names
) -> None:
    comm = await open_comm(flavour, broker_url, **options)
    try:
        ident = names.identifier("classic-producer")
        await comm.add_rpc_subscriber(lambda _c, body: body * 2, ident)  # rpc_double(21): 21
        producer_cls = type("P", (messaging.GenericProducer,),
                            {"eks": [(rpc_exchange(messaging), ident)]})

        def call() -> Any:
            return producer_cls().rpc_double(21, _timeout=10, _max_retry=0)

        reply = await asyncio.to_thread(call)
        assert isinstance(reply, messaging.MessageResult) and reply
        assert reply.body["content"]["value"] == 42
    finally:
        await comm.close()


async def test_communicator_calls_classic_rpc_handler(
    messaging: Any, flavour: str, broker_url: str, options: dict[str, Any], names: Names
) -> None:
    ident = names.identifier("classic-handler")
    queue = names.queue("classic-processor")

    class Processor(messaging.MessageProcessor):  # type: ignore[misc,name-defined]
        @messaging.RpcHandler("command", ident)
        def rpc_double(self, content: Any, reply_func: Any) -> None:
            reply_func(messaging.MessageResult(content["parameters"] * 2))

        @messaging.RpcHandler("command", "ignored")
        def rpc_unused(self, content: Any, reply_func: Any) -> None:
            raise AssertionError("not called")

    processor = await asyncio.to_thread(
        Processor, {"name": "classic"}, [(rpc_exchange(messaging), [(queue, ident)])],
        None, None)
    comm = await open_comm(flavour, broker_url, **options)
    try:
        with running_processor(processor):
            future = await comm.rpc_send(ident, 21)
            assert await asyncio.wait_for(future, 10) == 42
    finally:
        await comm.close()
