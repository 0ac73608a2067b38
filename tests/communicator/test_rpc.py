"""RPC verbs of both communicators, with plain and ``async def`` subscribers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest

import postage

from .conftest import Comm, Names, make_subscriber, open_comm


async def test_rpc_round_trip(comm: Comm, names: Names, kind: str) -> None:
    seen: list[tuple[Any, Any, str]] = []

    def double(c: Any, body: Any) -> Any:
        seen.append((c, body, threading.current_thread().name))
        return {"double": body * 2}

    ident = names.identifier()
    assert await comm.add_rpc_subscriber(make_subscriber(kind, double), ident) == ident
    future = await comm.rpc_send(ident, 21)
    assert await asyncio.wait_for(future, 10) == {"double": 42}
    [(received_comm, body, thread)] = seen
    assert body == 21
    assert received_comm is comm.callback_comm
    if kind == "plain":  # blocking subscribers never run on the event loop
        assert thread.startswith("postage-handler")


async def test_rpc_identifier_is_generated(comm: Comm) -> None:
    ident = await comm.add_rpc_subscriber(lambda _c, body: body)
    assert isinstance(ident, str) and ident
    assert await asyncio.wait_for(await comm.rpc_send(ident, [1, "a"]), 10) == [1, "a"]
    await comm.remove_rpc_subscriber(ident)


async def test_rpc_between_two_communicators(comm: Comm, comm2: Comm, names: Names) -> None:
    ident = names.identifier()
    await comm.add_rpc_subscriber(lambda _c, body: f"hello {body}", ident)
    assert await asyncio.wait_for(await comm2.rpc_send(ident, "there"), 10) == "hello there"


async def test_rpc_to_nobody_fails_at_once(comm: Comm, names: Names) -> None:
    start = time.perf_counter()
    with pytest.raises(postage.Unroutable):
        await comm.rpc_send(names.identifier("nobody"), 1)
    assert time.perf_counter() - start < 0.5


async def test_remote_exception_carries_type_message_traceback(
    comm: Comm, names: Names, kind: str
) -> None:
    def broken_handler(_c: Any, body: Any) -> Any:
        return {"x": 1}[body]

    ident = names.identifier()
    await comm.add_rpc_subscriber(make_subscriber(kind, broken_handler), ident)
    future = await comm.rpc_send(ident, "missing")
    with pytest.raises(postage.RemoteError) as info:
        await asyncio.wait_for(future, 10)
    assert info.value.type_name == "KeyError"
    assert info.value.remote_message == "'missing'"
    assert info.value.remote_traceback == ""  # by default: no internals to any caller
    assert "KeyError" in str(info.value)
    # the subscriber keeps serving after an exception
    ok = await comm.rpc_send(ident, "x")
    assert await asyncio.wait_for(ok, 10) == 1


async def test_rpc_deadline_raises_rpc_timeout(
    flavour: str, broker_url: str, options: dict[str, Any], names: Names
) -> None:
    release = threading.Event()
    comm = await open_comm(flavour, broker_url, **{**options, "rpc_timeout": 0.3})
    try:
        ident = names.identifier()
        await comm.add_rpc_subscriber(lambda _c, _b: release.wait(10), ident)
        future = await comm.rpc_send(ident, None)
        start = time.perf_counter()
        with pytest.raises(postage.RpcTimeout) as info:
            await asyncio.wait_for(future, 10)
        assert isinstance(info.value, TimeoutError)
        assert 0.1 < time.perf_counter() - start < 2.0
    finally:
        release.set()
        await comm.close()


async def test_remove_rpc_subscriber_stops_delivery(comm: Comm, names: Names) -> None:
    calls: list[Any] = []
    ident = names.identifier()
    await comm.add_rpc_subscriber(lambda _c, b: calls.append(b) or len(calls), ident)
    assert await asyncio.wait_for(await comm.rpc_send(ident, "a"), 10) == 1
    await comm.remove_rpc_subscriber(ident)
    with pytest.raises(postage.Unroutable):
        await comm.rpc_send(ident, "b")
    assert calls == ["a"]
    with pytest.raises(ValueError, match="no subscriber"):
        await comm.remove_rpc_subscriber(ident)


async def test_remove_rpc_subscriber_by_callback(comm: Comm, names: Names) -> None:
    def echo(_c: Any, body: Any) -> Any:
        return body

    ident = names.identifier()
    await comm.add_rpc_subscriber(echo, ident)
    await comm.remove_rpc_subscriber(echo)
    with pytest.raises(postage.Unroutable):
        await comm.rpc_send(ident, 1)


async def test_duplicate_rpc_identifier_refused(comm: Comm, names: Names) -> None:
    ident = names.identifier()
    await comm.add_rpc_subscriber(lambda _c, b: b, ident)
    with pytest.raises(postage.ConfigurationError):
        await comm.add_rpc_subscriber(lambda _c, b: b, ident)


async def test_subscriber_may_answer_with_a_future(comm: Comm, names: Names, kind: str) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        if kind == "plain":
            def later(_c: Any, body: Any) -> Any:
                return pool.submit(lambda: body + 1)
            subscriber: Any = later
        else:
            async def later_async(_c: Any, body: Any) -> Any:
                future = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_later(0.01, future.set_result, body + 1)
                return future
            subscriber = later_async
        ident = names.identifier()
        await comm.add_rpc_subscriber(subscriber, ident)
        assert await asyncio.wait_for(await comm.rpc_send(ident, 1), 10) == 2
    finally:
        pool.shutdown()


async def test_many_rpcs_in_flight(comm: Comm, names: Names) -> None:
    async def slow_echo(_c: Any, body: Any) -> Any:
        await asyncio.sleep(0.05)
        return body

    ident = names.identifier()
    await comm.add_rpc_subscriber(slow_echo, ident)
    futures = [await comm.rpc_send(ident, i) for i in range(100)]
    results = await asyncio.wait_for(asyncio.gather(*futures), 20)
    assert results == list(range(100))


def test_blocking_subscriber_may_call_the_communicator(broker_url: str, names: Names) -> None:
    """A plain subscriber runs in a worker thread, so it may make blocking calls itself."""
    with postage.connect(broker_url) as comm:
        inner, outer = names.identifier("inner"), names.identifier("outer")
        comm.add_rpc_subscriber(lambda _c, b: b + 1, inner)
        comm.add_rpc_subscriber(lambda c, b: c.rpc_send(inner, b).result(10) * 10, outer)
        assert comm.rpc_send(outer, 1).result(10) == 20


def test_forty_concurrent_nested_calls_do_not_starve(broker_url: str, names: Names) -> None:
    """Each of 40 concurrent requests makes a blocking RPC to another subscriber of the same
    communicator from its worker thread: the worker pool grows instead of starving."""
    with postage.connect(broker_url) as comm:
        inner, outer = names.identifier("inner"), names.identifier("outer")

        def slow_inner(_c: Any, b: int) -> int:
            time.sleep(0.2)
            return b + 1

        comm.add_rpc_subscriber(slow_inner, inner)
        comm.add_rpc_subscriber(lambda c, b: c.rpc_send(inner, b).result(20) * 10, outer)
        futures = [comm.rpc_send(outer, i) for i in range(40)]
        results = [f.result(30) for f in futures]
    assert results == [(i + 1) * 10 for i in range(40)]


async def test_one_server_per_identifier(comm: Comm, comm2: Comm, names: Names) -> None:
    """RPC queues are exclusive: a second communicator cannot serve the same identifier."""
    ident = names.identifier()
    await comm.add_rpc_subscriber(lambda _c, b: b, ident)
    with pytest.raises(postage.ChannelError):
        await comm2.add_rpc_subscriber(lambda _c, b: b, ident)
    # the refusal does not disturb the second communicator nor the first server
    assert await asyncio.wait_for(await comm2.rpc_send(ident, "still"), 10) == "still"


async def test_a_subscriber_removing_itself_still_answers(comm: Comm, names: Names) -> None:
    """Removing a subscriber from inside its own handler neither waits for that handler
    (which waits for the removal) nor closes the channel its reply and ack need."""
    ident = names.identifier("self-removing")

    if comm.flavour == "async":
        async def stop(c: Any, _msg: Any) -> str:
            await c.remove_rpc_subscriber(ident)
            return "stopped"
    else:
        def stop(c: Any, _msg: Any) -> str:  # type: ignore[misc]
            c.remove_rpc_subscriber(ident)
            return "stopped"

    await comm.add_rpc_subscriber(stop, ident)
    started = time.monotonic()
    assert await asyncio.wait_for(await comm.rpc_send(ident, "x"), 10) == "stopped"
    assert time.monotonic() - started < 5
    with pytest.raises(postage.Unroutable):
        await comm.rpc_send(ident, "again")
