"""kiwiPy's RabbitMQ communicators (``kiwipy.rmq``) on Postage."""

from .communicator import RmqCommunicator, async_connect
from .tasks import RmqIncomingTask, RmqTaskPublisher, RmqTaskQueue, RmqTaskSubscriber
from .threadcomms import RmqThreadCommunicator, RmqThreadTaskQueue, connect

__all__ = [
    "RmqCommunicator",
    "RmqIncomingTask",
    "RmqTaskPublisher",
    "RmqTaskQueue",
    "RmqTaskSubscriber",
    "RmqThreadCommunicator",
    "RmqThreadTaskQueue",
    "async_connect",
    "connect",
]
