"""The guarantees of the blocking layer, on a real broker (docs/blocking.md): heartbeats
are never missed, deliveries arrive promptly while the caller is in its own code, many
threads share one connection, nested calls work, and a blocking call made inside the
event loop is refused. Any redesign of the portal must keep these passing."""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time
from typing import Any

import pytest

import postage
from postage import WrongThreadError
from postage._blocking.portal import BlockingPortal
from tests.names import Names


def _connect(url: str, names: Names, **options: Any) -> postage.Communicator:
    return postage.connect(url, task_queue=names.queue("tasks"),
                           broadcast_exchange=names.exchange("broadcast"), **options)


@pytest.mark.slow
def test_a_subscriber_sleeping_7s_with_heartbeat_2_loses_no_connection(
        broker_url: str, names: Names) -> None:
    with _connect(broker_url, names, heartbeat=2) as comm:
        def slow(_comm: Any, seconds: float) -> str:
            time.sleep(seconds)
            return "slept"

        comm.add_task_subscriber(slow)
        future = comm.task_send(7.0)
        assert future is not None
        assert future.result(timeout=30) == "slept"  # the waiting thread runs the loop
        assert comm.aio.core.transport.reconnections == 0


@pytest.mark.slow
def test_a_program_sleeping_10s_between_two_sends_loses_no_connection(
        broker_url: str, names: Names) -> None:
    with _connect(broker_url, names, heartbeat=2) as comm:
        got: list[Any] = []
        comm.add_broadcast_subscriber(lambda _c, body, *_: got.append(body))
        assert comm.broadcast_send("first")
        time.sleep(10)  # in the program's own code: nobody calls Postage
        assert comm.broadcast_send("second")
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == ["first", "second"]
        assert comm.aio.core.transport.reconnections == 0


def test_deliveries_arrive_promptly_while_the_caller_is_in_its_own_code(
        broker_url: str, names: Names) -> None:
    """After one call, the program only works in its own code; broadcasts published by
    another program reach its subscriber within a few milliseconds."""
    with _connect(broker_url, names) as comm:
        arrived: dict[int, float] = {}
        comm.add_broadcast_subscriber(
            lambda _c, body, *_: arrived.setdefault(body, time.perf_counter()))
        other = BlockingPortal("other-program")  # another program: a loop of its own
        try:
            with postage.connect(broker_url, portal=other,
                                 broadcast_exchange=comm.aio.options.broadcast_exchange,
                                 task_queue=comm.aio.options.task_queue) as sender:
                sent: dict[int, float] = {}
                for i in range(30):
                    comm.broadcast_send(-1)  # one call: this thread ran the loop...
                    time.sleep(0.005)  # ... and is now in its own code
                    sent[i] = time.perf_counter()
                    sender.broadcast_send(i)
                    time.sleep(0.02)
        finally:
            other.stop()
        deadline = time.monotonic() + 10
        while len(arrived) < 31 and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies = [arrived[i] - sent[i] for i in range(30) if i in arrived]
        assert len(latencies) == 30
        assert statistics.median(latencies) < 0.010  # the bound the docs state
        assert max(latencies) < 0.5


def test_16_threads_calling_at_once_on_one_connection(broker_url: str, names: Names) -> None:
    rpc_id = names.identifier()
    with _connect(broker_url, names) as comm:
        comm.add_rpc_subscriber(lambda _c, msg: [msg[0], msg[1] * 2], identifier=rpc_id)
        failures: list[BaseException] = []
        finished: list[int] = []

        def caller(thread: int) -> None:
            try:
                for i in range(40):
                    assert comm.rpc_send(rpc_id, [thread, i]).result(timeout=30) == [
                        thread, i * 2]
                    if i % 4 == 0:
                        assert comm.broadcast_send({"thread": thread, "i": i})
                finished.append(thread)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures
        assert sorted(finished) == list(range(16))  # nobody starved


def test_40_subscribers_making_blocking_rpcs_at_once(broker_url: str, names: Names) -> None:
    inner, outer = names.identifier("inner"), names.identifier("outer")
    with _connect(broker_url, names) as comm:
        comm.add_rpc_subscriber(lambda _c, n: n + 1, identifier=inner)

        def nested(c: Any, n: int) -> int:
            result: int = c.rpc_send(inner, n).result(timeout=30)  # a blocking call inside
            return result * 10

        comm.add_rpc_subscriber(nested, identifier=outer)
        futures = [comm.rpc_send(outer, n) for n in range(40)]
        _done, pending = concurrent.futures.wait(futures, timeout=60)
        assert not pending
        assert [f.result() for f in futures] == [(n + 1) * 10 for n in range(40)]


def test_a_blocking_call_inside_an_async_subscriber_is_refused(
        broker_url: str, names: Names) -> None:
    rpc_id = names.identifier()
    with _connect(broker_url, names) as comm:
        async def calls_blocking(c: Any, _msg: Any) -> str:
            try:
                c.broadcast_send("from inside the loop")
            except WrongThreadError:
                return "refused"
            return "ran"

        comm.add_rpc_subscriber(calls_blocking, identifier=rpc_id)
        assert comm.rpc_send(rpc_id, None).result(timeout=30) == "refused"
