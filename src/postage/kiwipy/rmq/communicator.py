"""kiwiPy's asyncio communicator (``kiwipy.rmq.communicator``)."""

from ..._api.kiwipy.communicator import (
    RmqCommunicator,
    RmqPublisher,
    RmqSubscriber,
    async_connect,
)

__all__ = ["RmqCommunicator", "async_connect"]

_ = (RmqPublisher, RmqSubscriber)
