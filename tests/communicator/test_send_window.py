"""The blocking communicator's opt-in send window: sends return before their confirm,
keep their order, and no failure is lost (futures fail, no-reply failures are raised
later, close waits for every confirm)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pika
import pytest

import postage

from .conftest import Names, pika_queue_state
from .conftest import pika_read as read


def _delete_queue(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


def test_send_window_is_checked(broker_url: str) -> None:
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(postage.ConfigurationError):
            postage.connect(broker_url, send_window=bad)
    with postage.connect(broker_url) as comm:
        assert comm.send_window == 0
        comm.flush()  # nothing to wait for
    with postage.connect(broker_url, send_window=8) as comm:
        assert comm.send_window == 8


def test_pipelined_tasks_keep_their_order_and_close_waits_for_every_confirm(
        broker_url: str, names: Names) -> None:
    name = names.queue("order")
    with postage.connect(broker_url, send_window=16) as comm:
        queue = comm.task_queue(name)
        for i in range(300):
            assert queue.task_send(i, no_reply=True) is None
    # close() returned: every task is confirmed, hence in the queue
    assert pika_queue_state(broker_url, name) == (300, 0)
    bodies = [json.loads(body) for _props, body in read(broker_url, name, 300)]
    assert [b["content"]["parameters"] for b in bodies] == list(range(300))


def test_pipelined_rpcs_and_tasks_return_futures_of_their_results(
        broker_url: str, names: Names) -> None:
    ident = names.identifier()
    with postage.connect(broker_url, send_window=8) as comm:
        comm.add_rpc_subscriber(lambda _c, body: body * 2, ident)
        queue = comm.task_queue(names.queue("results"))
        queue.add_task_subscriber(lambda _c, body: body + 1)
        rpcs = [comm.rpc_send(ident, i) for i in range(200)]
        tasks = [queue.task_send(i) for i in range(100)]
        assert [f.result(20) for f in rpcs] == [2 * i for i in range(200)]
        assert [f.result(20) for f in tasks if f is not None] == [i + 1 for i in range(100)]


def test_an_unroutable_rpc_fails_its_future_instead_of_raising(broker_url: str) -> None:
    with postage.connect(broker_url, send_window=4) as comm:
        future = comm.rpc_send("nobody-answers-this-identifier", 1)
        with pytest.raises(postage.Unroutable):
            future.result(10)
        comm.flush()  # the failure went to the future: nothing left to raise


def test_a_failed_no_reply_task_is_raised_by_flush_then_by_the_next_send(
        broker_url: str, names: Names) -> None:
    name = names.queue("gone")
    with postage.connect(broker_url, send_window=4) as comm:
        queue = comm.task_queue(name)
        _delete_queue(broker_url, name)  # the queue's binding goes with it
        queue.task_send("lost?", no_reply=True)
        with pytest.raises(postage.Unroutable):
            comm.flush()
        comm.flush()  # raised once
        queue.task_send("lost too?", no_reply=True)
        window = comm._window
        assert window is not None
        deadline = time.monotonic() + 10
        while window.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(postage.Unroutable):  # (and is not sent itself)
            queue.task_send("raises the earlier failure", no_reply=True)
        queue.task_send("lost again?", no_reply=True)
        with pytest.raises(postage.Unroutable):  # close() raises the last one
            comm.close()
        assert comm.is_closed()


def test_a_full_window_makes_the_next_send_wait(broker_url: str, names: Names) -> None:
    name = names.queue("full")
    release = threading.Event()
    with postage.connect(broker_url, send_window=2) as comm:
        window = comm._window
        assert window is not None
        queue = comm.task_queue(name)
        # hold the event loop: sends queue up unconfirmed, and the third one waits
        comm._portal.call_soon(release.wait, 10)
        queue.task_send(1, no_reply=True)
        queue.task_send(2, no_reply=True)
        assert window.inflight == 2
        sender = threading.Thread(target=queue.task_send, args=(3, True))
        sender.start()
        sender.join(0.3)
        assert sender.is_alive()  # blocked on the full window
        release.set()
        sender.join(10)
        assert not sender.is_alive()
    assert pika_queue_state(broker_url, name) == (3, 0)


def test_cancelling_a_pipelined_rpc_forgets_it(broker_url: str, names: Names) -> None:
    ident = names.identifier()
    release = threading.Event()
    calls: list[Any] = []

    def slow(_c: Any, body: Any) -> Any:
        calls.append(body)
        release.wait(10)
        return body

    with postage.connect(broker_url, send_window=4) as comm:
        comm.add_rpc_subscriber(slow, ident)
        future = comm.rpc_send(ident, "cancelled")
        assert future.cancel()
        core = comm.aio.core
        deadline = time.monotonic() + 10
        while (comm._window is not None and comm._window.inflight) or core.pending_calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        release.set()
        assert comm.rpc_send(ident, "next").result(10) == "next"


def test_window_calls_from_the_event_loop_are_refused(broker_url: str, names: Names) -> None:
    ident = names.identifier()
    with postage.connect(broker_url, send_window=4) as comm:
        queue = comm.task_queue(names.queue("loop"))

        async def subscriber(c: Any, _body: Any) -> list[str]:
            refused = []
            for call in (lambda: queue.task_send(1, no_reply=True), c.flush,
                         lambda: c.rpc_send(ident, 1)):
                try:
                    call()
                except postage.WrongThreadError:
                    refused.append("refused")
            return refused

        comm.add_rpc_subscriber(subscriber, ident)
        assert comm.rpc_send(ident, None).result(10) == ["refused"] * 3
