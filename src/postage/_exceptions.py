"""Every error a Postage user can catch.

    PostageError
    ├── ConfigurationError            bad URL, option or argument
    ├── EncodingError                 a body could not be encoded
    ├── DecodingError                 a body is not a valid message
    │   ├── MessageTooLarge           over the configured size limit
    │   ├── UnsupportedContentType    content type the consumer does not accept
    │   └── UnsupportedVersion        an envelope version this library does not speak
    ├── ConnectionError               the broker cannot be reached or the link broke
    │   ├── AuthenticationError       wrong user name or password
    │   ├── VhostNotFound             the virtual host does not exist or is not allowed
    │   └── ConnectionClosed          used after close(), or closed by the broker
    ├── ChannelError                  the broker refused an operation on a channel
    │   ├── AccessRefused             the user lacks permission (403)
    │   ├── NotFound                  no such exchange or queue (404)
    │   ├── PreconditionFailed        redeclared with other flags (406)
    │   └── OperationRefused          refused by closing the connection (5xx hard errors)
    ├── PublishError                  a message was not accepted by the broker
    │   ├── Unroutable                mandatory message matched no queue
    │   └── PublishNacked             the broker nacked the message
    ├── DeliveryTimeout (TimeoutError) a wait passed its deadline
    │   └── RpcTimeout                no reply to an RPC in time
    ├── RemoteError                   the remote handler raised; carries its type and traceback
    ├── DeadLettered                  a message was moved to its dead-letter queue (the
    │                                 sender of a task learns it as a RemoteError of this type)
    ├── RpcBacklogFull                too many RPC calls pending
    ├── WrongThreadError              a blocking call made from the event loop's own thread
    └── Reject (control flow)         raised by a handler to dead-letter the message

Errors of the AMQP client are translated at the transport boundary, so users never need
to import the client library to catch what Postage raises.
"""

from __future__ import annotations

__all__ = [
    "AccessRefused",
    "AuthenticationError",
    "ChannelError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionError",
    "DeadLettered",
    "DecodingError",
    "DeliveryTimeout",
    "EncodingError",
    "MessageTooLarge",
    "NotFound",
    "OperationRefused",
    "PostageError",
    "PreconditionFailed",
    "PublishError",
    "PublishNacked",
    "Reject",
    "RemoteError",
    "RpcBacklogFull",
    "RpcTimeout",
    "Unroutable",
    "UnsupportedContentType",
    "UnsupportedVersion",
    "VhostNotFound",
    "WrongThreadError",
]

import builtins
import logging
from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


class PostageError(Exception):
    """Base class of every error Postage raises on purpose."""


class ConfigurationError(PostageError, ValueError):
    """A URL, option or argument is not valid."""


class EncodingError(PostageError, ValueError):
    """A value could not be encoded into a message body."""


class DecodingError(PostageError, ValueError):
    """A message body could not be decoded into a valid message."""


class MessageTooLarge(DecodingError):
    """A body is larger than the configured limit."""


class UnsupportedContentType(DecodingError):
    """A body has a content type this consumer was not told to accept."""


class UnsupportedVersion(DecodingError):
    """An envelope carries a version this library does not speak."""


class ConnectionError(PostageError, builtins.ConnectionError):
    """The broker cannot be reached, or the connection to it broke."""


class AuthenticationError(ConnectionError):
    """The broker refused the user name or password."""


class VhostNotFound(ConnectionError):
    """The virtual host does not exist or the user may not open it."""


class ConnectionClosed(ConnectionError):
    """The connection is closed: by close(), or by the broker for good."""


class ChannelError(PostageError):
    """The broker refused an operation (it closed the channel with an error code)."""

    def __init__(self, message: str, reply_code: int = 0) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class AccessRefused(ChannelError, PermissionError):
    """The user has no permission for this exchange or queue (AMQP 403)."""


class NotFound(ChannelError):
    """No such exchange or queue (AMQP 404)."""


class PreconditionFailed(ChannelError):
    """An exchange or queue exists with other flags or arguments (AMQP 406)."""


class OperationRefused(ChannelError):
    """The broker refused an operation by closing the whole connection (an AMQP hard error:
    NOT_ALLOWED 530, NOT_IMPLEMENTED 540, INTERNAL_ERROR 541 for a deprecated feature
    RabbitMQ 4 denies, COMMAND_INVALID 503 for an unknown exchange type...). It is raised
    at once, never retried: the same operation would be refused again. The connection is
    opened again for everything else."""


class PublishError(PostageError):
    """The broker did not accept a published message."""


class Unroutable(PublishError):
    """A mandatory message matched no queue and was returned by the broker."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str = "NO_ROUTE") -> None:
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} "
            f"was returned by the broker: {reply_text}"
        )
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_text = reply_text


class PublishNacked(PublishError):
    """The broker negatively acknowledged a published message."""


class DeliveryTimeout(PostageError, builtins.TimeoutError):
    """An operation did not finish before its deadline."""


class RpcTimeout(DeliveryTimeout):
    """No reply to an RPC call arrived before its deadline."""


class RemoteError(PostageError):
    """The remote handler raised an exception; its type, message and traceback travel here."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback


class RpcBacklogFull(PostageError):
    """Too many RPC calls are pending on this connection."""


class WrongThreadError(PostageError, RuntimeError):
    """A blocking call was made from the event loop's own thread, where it would deadlock."""


class DeadLettered(PostageError):
    """A message was moved to its dead-letter queue (``<queue>.dlq``) without a result."""


class Reject(PostageError):
    """Raised by a handler: the message is dead-lettered at once, without retries."""


def at_call_site(exc: _E) -> _E:
    """``exc`` ready to be raised at a user's call: a PostageError loses the library's
    internal frames and chained tracebacks (its message says what happened), unless the
    ``postage`` logger is at DEBUG level. Any other exception is left whole."""
    if isinstance(exc, PostageError) and not logging.getLogger("postage").isEnabledFor(
            logging.DEBUG):
        exc.__traceback__ = None
        exc.__suppress_context__ = True
        if exc.__cause__ is not None:
            exc.__cause__.__traceback__ = None
    return exc


for _name in __all__:  # tracebacks name them as users import them: postage.NotFound
    globals()[_name].__module__ = "postage"
del _name
