"""``kiwipy.connect``: a communicator for a URI."""

from __future__ import annotations

from typing import Any

from .._api.kiwipy.threadcomms import RmqThreadCommunicator

__all__ = ["connect"]

DEFAULT_COMM_URI = "amqp://guest:guest@127.0.0.1/"


def connect(uri: str = DEFAULT_COMM_URI, **kwargs: Any) -> RmqThreadCommunicator:
    """A blocking communicator connected to the broker at ``uri`` (``amqp://`` or
    ``amqps://``; also Postage's ``memory://``); keyword arguments as ``rmq.connect``."""
    if not uri.startswith(("amqp", "memory://")):
        raise ValueError(f"Unknown communicator uri '{uri}'")
    from .rmq import connect as rmq_connect

    return rmq_connect(connection_params=uri, **kwargs)
