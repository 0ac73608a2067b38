"""Broadcasts and BroadcastFilter (wildcards, subject and sender filters, removal)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any

import pytest

import postage

from .conftest import Comm, make_subscriber


class Inbox:
    """Thread-safe collector a test can wait on."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.items.append(args)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)

    async def wait(self, count: int, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.wait_for, count, timeout)


# -- BroadcastFilter without a broker ------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("log.info", "log.info", True),
        ("log.info", "log.info.more", False),  # the whole subject must match
        ("log.*", "log.info", True),
        ("log.*", "log.a.b", True),  # '*' spans dots, as in kiwiPy
        ("*.info", "anonymous.info", True),
        ("*.info", "info", False),
        ("*", "anything.at.all", True),
        ("a*c", "abbbc", True),
        ("a*c", "abd", False),
        ("a.c", "abc", False),  # '.' is literal
        ("log.[x]", "log.[x]", True),  # other regex characters are literal too
        ("log.*", None, False),  # no subject never matches a subject filter
    ],
)
def test_subject_wildcards(pattern: str, subject: str | None, matches: bool) -> None:
    assert postage.BroadcastFilter(Inbox(), subject=pattern).is_filtered(None, subject) is (
        not matches
    )


def test_filters_combine() -> None:
    inbox = Inbox()
    filt = postage.BroadcastFilter(inbox, subject="log.*", sender="worker-*")
    assert not filt.is_filtered("worker-1", "log.x")
    assert filt.is_filtered("manager", "log.x")
    assert filt.is_filtered("worker-1", "status")
    filt.add_subject_filter("status")  # alternatives of one kind: any may match
    assert not filt.is_filtered("worker-1", "status")
    filt.add_sender_filter(re.compile(r"mgr\d+"))
    assert not filt.is_filtered("mgr42", "status")
    assert filt.is_filtered("mgrX", "status")
    everything = postage.BroadcastFilter(inbox)
    assert not everything.is_filtered(None, None)
    # called directly, it passes on only what matches
    filt("comm", "body", "worker-1", "log.a", "id-1")
    filt("comm", "body", "nobody", "log.a", "id-2")
    assert inbox.items == [("comm", "body", "worker-1", "log.a", "id-1")]


def test_filter_needs_a_callable() -> None:
    with pytest.raises(TypeError):
        postage.BroadcastFilter("not callable")  # type: ignore[arg-type]


# -- against the broker --------------------------------------------------------------------


async def test_broadcast_reaches_every_subscriber(
    comm: Comm, comm2: Comm, kind: str
) -> None:
    first, second = Inbox(), Inbox()
    await comm.add_broadcast_subscriber(make_subscriber(kind, first))
    await comm2.add_broadcast_subscriber(make_subscriber(kind, second))
    assert await comm.broadcast_send({"k": [1, 2]}, sender="me", subject="news.today",
                                     correlation_id="c-1") is True
    [(c1, *got1)] = await first.wait(1)
    [(c2, *got2)] = await second.wait(1)
    assert got1 == got2 == [{"k": [1, 2]}, "me", "news.today", "c-1"]
    assert c1 is comm.callback_comm and c2 is comm2.callback_comm


async def test_broadcast_to_nobody_is_fine(comm: Comm) -> None:
    assert await comm.broadcast_send("into the void") is True


async def test_broadcast_filters_with_wildcards(comm: Comm, comm2: Comm, kind: str) -> None:
    logs, infos, by_sender = Inbox(), Inbox(), Inbox()
    await comm.add_broadcast_subscriber(
        postage.BroadcastFilter(make_subscriber(kind, logs), subject="log.*"))
    await comm.add_broadcast_subscriber(
        postage.BroadcastFilter(make_subscriber(kind, infos), subject="*.info"))
    await comm.add_broadcast_subscriber(
        postage.BroadcastFilter(make_subscriber(kind, by_sender), sender="svc-*"))
    sent = [
        ("one", "svc-a", "log.kern.info"),
        ("two", "other", "log.user"),
        ("three", "svc-b", "audit.info"),
        ("four", "other", "audit.warning"),
        ("last", "svc-z", "end"),
    ]
    for body, sender, subject in sent:
        await comm2.broadcast_send(body, sender=sender, subject=subject)
    assert [i[1] for i in await by_sender.wait(3)] == ["one", "three", "last"]
    # the last broadcast has been handled, so anything that passed the filters is here
    assert sorted(i[1] for i in logs.items) == ["one", "two"]
    assert sorted(i[1] for i in infos.items) == ["one", "three"]


async def test_remove_broadcast_subscriber_stops_delivery(comm: Comm) -> None:
    kept, removed = Inbox(), Inbox()
    await comm.add_broadcast_subscriber(kept, "kept")
    ident = await comm.add_broadcast_subscriber(removed)
    await comm.broadcast_send(1, subject="s")
    await kept.wait(1)
    await removed.wait(1)
    await comm.remove_broadcast_subscriber(ident)
    await comm.broadcast_send(2, subject="s")
    await kept.wait(2)  # the same delivery reaches both, so `removed` is now final
    assert [i[1] for i in removed.items] == [1]
    await comm.remove_broadcast_subscriber(kept)  # by callback; the last one: queue goes
    await comm.broadcast_send(3, subject="s")
    new = Inbox()
    await comm.add_broadcast_subscriber(new)
    await comm.broadcast_send(4, subject="s")
    assert [i[1] for i in await new.wait(1)] == [4]
    assert [i[1] for i in kept.items] == [1, 2]


async def test_failing_broadcast_subscriber_does_not_stop_others(comm: Comm, kind: str) -> None:
    inbox = Inbox()

    def broken(*_args: Any) -> None:
        raise RuntimeError("boom")

    await comm.add_broadcast_subscriber(make_subscriber(kind, broken))
    await comm.add_broadcast_subscriber(inbox)
    await comm.broadcast_send("a")
    await comm.broadcast_send("b")
    assert [i[1] for i in await inbox.wait(2)] == ["a", "b"]


async def test_broadcast_wire_format(comm: Comm, broker_url: str, options: dict[str, Any]) -> None:
    import pika

    def listen() -> tuple[Any, Any, bytes]:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            channel = connection.channel()
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, options["broadcast_exchange"], "wire.#")
            ready.set()
            for method, props, body in channel.consume(queue, auto_ack=True,
                                                       inactivity_timeout=10):
                return method, props, body
            raise AssertionError("unreachable")
        finally:
            connection.close()

    ready = threading.Event()
    task = asyncio.create_task(asyncio.to_thread(listen))
    assert await asyncio.to_thread(ready.wait, 10)
    await comm.broadcast_send([1], sender="s", subject="wire.test", correlation_id="x")
    method, props, body = await asyncio.wait_for(task, 15)
    assert method.routing_key == "wire.test"
    assert props.correlation_id == "x"
    envelope = json.loads(body)
    assert (envelope["type"], envelope["name"], envelope["category"]) == (
        "status", "wire.test", "message")
    assert envelope["content"] == {"body": [1], "sender": "s", "subject": "wire.test",
                                   "correlation_id": "x"}
