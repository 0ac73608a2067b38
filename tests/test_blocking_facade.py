"""The blocking facades are declared from their asyncio twins: each verb shows its twin's
signature and docstring, calls the twin's method of the same name, and waits by the one
outer-deadline rule (the twin's own bound + MARGIN)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from postage._api.communicator.aio import AsyncCommunicator, AsyncTaskQueue
from postage._api.communicator.blocking import Communicator, TaskQueue
from postage._api.kiwipy.communicator import RmqCommunicator
from postage._api.kiwipy.tasks import RmqTaskQueue
from postage._api.kiwipy.threadcomms import RmqThreadCommunicator, RmqThreadTaskQueue
from postage._blocking.facade import MARGIN, Facade, blocking, blocking_future, outer_deadline

PAIRS = [(Communicator, AsyncCommunicator), (TaskQueue, AsyncTaskQueue),
         (RmqThreadCommunicator, RmqCommunicator), (RmqThreadTaskQueue, RmqTaskQueue)]


def _declared(facade: type) -> list[str]:
    return [name for name, value in vars(facade).items()
            if callable(value) and hasattr(value, "__signature__")]


@pytest.mark.parametrize(("facade", "twin"), PAIRS)
def test_each_verb_has_its_twins_signature_and_docstring(facade: type, twin: type) -> None:
    names = _declared(facade)
    assert names  # the verbs are declarations, not hand-written copies
    for name in names:
        verb, source = getattr(facade, name), getattr(twin, name)
        assert list(inspect.signature(verb).parameters) == list(
            inspect.signature(source).parameters)
        assert (verb.__doc__ or "").startswith((source.__doc__ or "").rstrip())
        assert verb.__name__ == name


def test_every_async_verb_of_the_communicator_has_its_blocking_twin() -> None:
    public = {name for name, value in vars(AsyncCommunicator).items()
              if inspect.iscoroutinefunction(value) and not name.startswith("_")}
    # close and task_queue are written by hand (they wrap more than one call or an
    # object); run_until_signal and abort belong to the program's main loop
    assert public - {"close", "task_queue", "run_until_signal", "abort"} <= set(
        _declared(Communicator))


def test_futures_are_shown_as_concurrent_ones() -> None:
    assert "concurrent.futures.Future" in str(inspect.signature(Communicator.rpc_send))


class _Portal:
    """Records the outer deadline of each call and runs the coroutine on its own loop."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.loop = asyncio.new_event_loop()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any,
             timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return self.loop.run_until_complete(fn(*args))


class _Twin:
    async def plain(self, value: int) -> int:
        """Double ``value``."""
        return value * 2

    async def bounded(self, timeout: float = 30.0) -> float:
        return timeout

    async def future(self, value: int) -> asyncio.Future[int]:
        out: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        out.set_result(value)
        return out


class _Blocking(Facade):
    plain = blocking(_Twin.plain)
    bounded = blocking(_Twin.bounded, bound="timeout")
    future = blocking_future(_Twin.future)

    def __init__(self, portal: _Portal) -> None:
        self._aio = _Twin()
        self._portal = portal  # type: ignore[assignment]
        self._timeout = 7.0


def test_the_outer_deadline_rule() -> None:
    portal = _Portal()
    try:
        facade = _Blocking(portal)
        assert facade.plain(21) == 42
        assert facade.bounded(timeout=3.0) == 3.0
        assert facade.bounded() == 30.0
        assert portal.timeouts == [7.0 + MARGIN, 3.0 + MARGIN, 30.0 + MARGIN]
        assert outer_deadline(None, 7.0) == 7.0 + MARGIN
        result = facade.future(5)
        assert isinstance(result, concurrent.futures.Future) and result.result(1) == 5
    finally:
        portal.loop.close()


def test_a_guard_refuses_before_anything_is_sent() -> None:
    class Closed(_Blocking):
        def _guard(self) -> None:
            raise RuntimeError("closed")

    portal = _Portal()
    try:
        with pytest.raises(RuntimeError, match="closed"):
            Closed(portal).plain(1)
        assert portal.timeouts == []
    finally:
        portal.loop.close()
