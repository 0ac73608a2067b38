"""kiwiPy's blocking communicator (``kiwipy.rmq.threadcomms``)."""

from ..._api.kiwipy.threadcomms import (
    RmqThreadCommunicator,
    RmqThreadIncomingTask,
    RmqThreadTaskQueue,
    connect,
)

__all__ = ["RmqThreadCommunicator", "RmqThreadTaskQueue", "connect"]

_ = RmqThreadIncomingTask
