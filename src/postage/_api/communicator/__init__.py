"""The communicator (seed 004): kiwiPy's tasks, RPC and filtered broadcasts on the core.

``_async`` holds all the logic (:class:`AsyncCommunicator`); ``_sync`` is the blocking
facade on a portal (:class:`Communicator`, ``connect``); ``_wire`` maps the verbs onto
the Postage envelope; ``_filters`` has :class:`BroadcastFilter`.
"""

from .aio import AsyncCommunicator, AsyncTaskQueue, CommunicatorOptions, open_communicator
from .blocking import Communicator, TaskQueue, connect
from .filters import BroadcastFilter

__all__ = [
    "AsyncCommunicator",
    "AsyncTaskQueue",
    "BroadcastFilter",
    "Communicator",
    "CommunicatorOptions",
    "TaskQueue",
    "connect",
    "open_communicator",
]
