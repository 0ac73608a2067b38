"""kiwiPy's communicator interface (``kiwipy.communications``)."""

from .._api.kiwipy.local import (
    BroadcastSubscriber,
    Communicator,
    CommunicatorHelper,
    RpcSubscriber,
    TaskSubscriber,
)
from .exceptions import *  # noqa: F403 - kiwiPy re-exports its exceptions here

__all__ = ["Communicator", "CommunicatorHelper"]

_ = (BroadcastSubscriber, RpcSubscriber, TaskSubscriber)
