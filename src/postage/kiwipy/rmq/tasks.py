"""kiwiPy's task queues (``kiwipy.rmq.tasks``)."""

from ..._api.kiwipy.tasks import (
    TASK_FINISHED,
    TASK_PENDING,
    TASK_PROCESSING,
    TASK_REQUEUED,
    RmqIncomingTask,
    RmqTaskPublisher,
    RmqTaskQueue,
    RmqTaskSubscriber,
)

__all__ = ["RmqIncomingTask", "RmqTaskPublisher", "RmqTaskQueue", "RmqTaskSubscriber"]

_ = (TASK_FINISHED, TASK_PENDING, TASK_PROCESSING, TASK_REQUEUED)
