"""The asyncio face of the communicator: ``comm = await postage.aio.connect(url)``.

Same verbs as the blocking :class:`postage.Communicator`, as coroutines::

    async with postage.aio.connect("amqp://localhost") as comm:
        future = await comm.rpc_send("fib", 30)
        print(await future)

``connect(...)`` may be awaited (``comm = await connect(url)``, then ``await comm.close()``)
or used directly in ``async with``.
"""

from __future__ import annotations

__all__ = [
    "AsyncCommunicator",
    "AsyncTaskQueue",
    "BroadcastFilter",
    "CommunicatorOptions",
    "connect",
]

from collections.abc import Generator
from types import TracebackType
from typing import Any

from ._api.communicator import (
    AsyncCommunicator,
    AsyncTaskQueue,
    BroadcastFilter,
    CommunicatorOptions,
    open_communicator,
)


class _Connecting:
    """What ``connect`` returns: await it for the communicator, or ``async with`` it."""

    __slots__ = ("_comm", "_options", "_url")

    def __init__(self, url: str | None, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._comm: AsyncCommunicator | None = None

    def __await__(self) -> Generator[Any, None, AsyncCommunicator]:
        return open_communicator(self._url, **self._options).__await__()

    async def __aenter__(self) -> AsyncCommunicator:
        self._comm = await open_communicator(self._url, **self._options)
        return self._comm

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._comm is not None:
            await self._comm.close()


def connect(url: str | None = None, **options: Any) -> _Connecting:
    """Connect to the broker at ``url``: ``await`` it for an :class:`AsyncCommunicator`,
    or use it in ``async with`` (closing waits for running subscribers and confirms).

    Takes the options of :func:`postage.connect`.
    """
    return _Connecting(url, options)
