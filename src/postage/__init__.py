"""Postage: message-driven components over RabbitMQ.

Three ways to use one asyncio core and one wire format:

* the classic API of the original Postage (``postage.messaging``, ``postage.microthreads``,
  ``postage.generic_application``);
* the communicator (``postage.connect(url)``; ``postage.aio.connect`` for asyncio);
* the async client (``postage.AsyncClient``) for raw bodies on any exchange.
"""

from . import aio
from ._api.client import AsyncClient
from ._api.communicator import BroadcastFilter, Communicator, TaskQueue, connect
from ._api.gather import GatherReply
from ._api.presence import ComponentState, PresenceWatcher
from ._core.core import RetryPolicy
from ._core.middleware import IncomingMessage, Middleware, OutgoingMessage
from ._exceptions import (
    AccessRefused,
    AuthenticationError,
    ChannelError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionError,
    DeadLettered,
    DecodingError,
    DeliveryTimeout,
    EncodingError,
    MessageTooLarge,
    NotFound,
    OperationRefused,
    PostageError,
    PreconditionFailed,
    PublishError,
    PublishNacked,
    Reject,
    RemoteError,
    RpcBacklogFull,
    RpcTimeout,
    Unroutable,
    UnsupportedContentType,
    UnsupportedVersion,
    VhostNotFound,
    WrongThreadError,
)
from ._settings import ConnectionSettings, TlsOptions
from ._wire.encoding import Encoder, JsonEncoder
from ._wire.fingerprint import Fingerprint
from ._wire.properties import Properties

__version__ = "2.0.0.dev0"

__all__ = [
    "AccessRefused",
    "AsyncClient",
    "AuthenticationError",
    "BroadcastFilter",
    "ChannelError",
    "Communicator",
    "ComponentState",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionSettings",
    "DeadLettered",
    "DecodingError",
    "DeliveryTimeout",
    "Encoder",
    "EncodingError",
    "Fingerprint",
    "GatherReply",
    "IncomingMessage",
    "JsonEncoder",
    "MessageTooLarge",
    "Middleware",
    "NotFound",
    "OperationRefused",
    "OutgoingMessage",
    "PostageError",
    "PreconditionFailed",
    "PresenceWatcher",
    "Properties",
    "PublishError",
    "PublishNacked",
    "Reject",
    "RemoteError",
    "RetryPolicy",
    "RpcBacklogFull",
    "RpcTimeout",
    "TaskQueue",
    "TlsOptions",
    "Unroutable",
    "UnsupportedContentType",
    "UnsupportedVersion",
    "VhostNotFound",
    "WrongThreadError",
    "__version__",
    "aio",
    "connect",
]
