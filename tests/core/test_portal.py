"""The blocking portal: calls into the loop thread, deadlines, wrong-thread refusal."""

from __future__ import annotations

import asyncio
import threading

import pytest

from postage import DeliveryTimeout, WrongThreadError
from postage._portal import BlockingPortal


@pytest.fixture
def portal() -> BlockingPortal:
    p = BlockingPortal()
    yield p
    p.stop()


def test_call_runs_on_the_loop_thread(portal: BlockingPortal) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert portal.call(where) == "postage-loop"


def test_exceptions_propagate(portal: BlockingPortal) -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        portal.call(boom)


def test_deadline(portal: BlockingPortal) -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeliveryTimeout):
        portal.call(slow, timeout=0.1)
    with pytest.raises(TimeoutError):
        portal.call(slow, timeout=0.1)


def test_blocking_call_from_the_loop_thread_is_refused(portal: BlockingPortal) -> None:
    async def nested() -> None:
        async def inner() -> int:
            return 1

        portal.call(inner)

    with pytest.raises(WrongThreadError):
        portal.call(nested)


def test_loop_keeps_running_while_a_caller_blocks(portal: BlockingPortal) -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        for i in range(5):
            ticks.append(i)
            await asyncio.sleep(0.01)

    future = portal.submit(ticker())
    future.result(5)
    assert ticks == [0, 1, 2, 3, 4]
