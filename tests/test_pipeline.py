"""SendWindow without a broker: order, depth, failures kept for the sender, callbacks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from postage import ConfigurationError, DeliveryTimeout, WrongThreadError
from postage._blocking.portal import BlockingPortal
from postage._blocking.window import SendWindow


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    p = BlockingPortal("test-window")
    yield p
    p.stop()


def test_depth_must_be_positive(portal: BlockingPortal) -> None:
    with pytest.raises(ConfigurationError):
        SendWindow(portal, 0, 1.0)


def test_sends_run_in_order_and_flush_waits_for_all(portal: BlockingPortal) -> None:
    window = SendWindow(portal, 4, 5.0)
    seen: list[int] = []

    async def send(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 3))  # finish out of order; start in order
        seen.append(i)

    started: list[int] = []

    async def tracked(i: int) -> None:
        started.append(i)
        await send(i)

    for i in range(50):
        window.submit(tracked, (i,))
        assert window.inflight <= 4
    window.flush()
    assert started == list(range(50))
    assert sorted(seen) == list(range(50))
    assert window.inflight == 0


def test_a_failure_is_raised_once_by_the_next_call(portal: BlockingPortal) -> None:
    window = SendWindow(portal, 2, 5.0)

    async def fail() -> None:
        raise RuntimeError("refused")

    def not_a_coroutine_function() -> Any:
        raise ValueError("raised before returning an awaitable")

    window.submit(fail, ())
    with pytest.raises(RuntimeError, match="refused"):
        window.flush()
    window.flush()  # once
    window.submit(not_a_coroutine_function, ())
    with pytest.raises(ValueError):
        window.flush()


def test_done_callbacks_get_the_task_and_the_slot_is_freed(portal: BlockingPortal) -> None:
    window = SendWindow(portal, 1, 5.0)
    outcomes: list[Any] = []
    finished = threading.Event()

    async def value(v: int) -> int:
        return v

    def done(task: asyncio.Future[Any]) -> None:
        outcomes.append(task.result())
        if len(outcomes) == 3:
            finished.set()

    for v in (1, 2, 3):
        window.submit(value, (v,), done)  # depth 1: each waits for the previous one
    assert finished.wait(5)
    assert outcomes == [1, 2, 3]
    window.flush()


def test_a_full_window_times_out(portal: BlockingPortal) -> None:
    window = SendWindow(portal, 1, 0.2)
    release = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    window.submit(blocked, ())
    with pytest.raises(DeliveryTimeout):
        window.submit(blocked, ())
    with pytest.raises(DeliveryTimeout):
        window.flush(0.1)
    portal.call_soon(release.set)
    window.flush()


def test_calls_from_the_loop_thread_are_refused(portal: BlockingPortal) -> None:
    window = SendWindow(portal, 1, 1.0)

    async def from_loop() -> list[str]:
        refused = []
        for call in (lambda: window.submit(asyncio.sleep, (0,)), window.flush):
            try:
                call()
            except WrongThreadError:
                refused.append("refused")
        return refused

    assert portal.call(from_loop) == ["refused", "refused"]


def test_a_full_window_wakes_its_sender_when_half_of_it_is_free(
    portal: BlockingPortal,
) -> None:
    window = SendWindow(portal, 8, 5.0)
    gates = [asyncio.Event() for _ in range(9)]

    async def gated(i: int) -> None:
        await gates[i].wait()

    for i in range(8):
        window.submit(gated, (i,))
    assert window.inflight == 8
    submitted = threading.Event()

    def ninth() -> None:
        window.submit(gated, (8,))
        submitted.set()

    sender = threading.Thread(target=ninth)
    sender.start()
    for i in range(3):  # 7, 6, 5 in flight: a slot is free, the sender still sleeps
        portal.call_soon(gates[i].set)
    assert not submitted.wait(0.3)
    assert window.inflight == 5
    portal.call_soon(gates[3].set)  # 4 in flight: half the window is free
    assert submitted.wait(5)
    sender.join(5)
    for gate in gates:
        portal.call_soon(gate.set)
    window.flush()
    assert window.inflight == 0
