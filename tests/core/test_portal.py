"""The blocking portal: calls into the loop thread, deadlines, wrong-thread refusal."""

from __future__ import annotations

import asyncio
import threading

import pytest

from postage import DeliveryTimeout, WrongThreadError
from postage._blocking.portal import BlockingPortal


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


def test_a_timed_out_call_cancels_its_task(portal: BlockingPortal) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(DeliveryTimeout):
        portal.call(slow, timeout=0.1)
    assert cancelled.wait(5)
    assert portal.call(asyncio.sleep, 0, "still serving") == "still serving"


def test_a_function_failing_before_awaiting_raises_in_the_caller(portal: BlockingPortal) -> None:
    def not_async() -> None:
        raise ValueError("sync failure")

    with pytest.raises(ValueError, match="sync failure"):
        portal.call(not_async)  # type: ignore[arg-type]


@pytest.mark.parametrize("choice", ["asyncio", "uvloop", ""])
def test_postage_loop_chooses_the_loop(choice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if choice == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("POSTAGE_LOOP", choice)
    portal = BlockingPortal()
    try:
        async def loop_module() -> str:
            return type(asyncio.get_running_loop()).__module__

        module = portal.call(loop_module)
    finally:
        portal.stop()
    if choice == "asyncio":
        assert module.startswith("asyncio")
    elif choice == "uvloop":
        assert module.startswith("uvloop")


def test_postage_loop_refuses_what_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    from postage import ConfigurationError

    monkeypatch.setenv("POSTAGE_LOOP", "trio")
    with pytest.raises(ConfigurationError, match="POSTAGE_LOOP='trio': expected one of"):
        BlockingPortal()


def test_postage_loop_uvloop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from postage import ConfigurationError

    monkeypatch.setenv("POSTAGE_LOOP", "uvloop")
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        BlockingPortal()
