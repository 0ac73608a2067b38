"""The classic Postage messaging API (seeds 000, 001, 003), on the asyncio core.

Messages (:class:`Message` and subclasses), exchanges (:class:`Exchange`), producers
(:class:`GenericProducer` with ``message_X``/``rpc_X``), consumers
(:class:`GenericConsumer`) and processors (:class:`MessageProcessor` with
``@MessageHandler``, ``@RpcHandler``, ``@MessageHandlerFullBody``, ``@MessageFilter`` and
:class:`Handler` classes). ``global_vhost`` is read from the environment when accessed
(``POSTAGE_URL``'s vhost, else ``POSTAGE_VHOST``, else ``/``); nothing is read, printed
or connected at import time. With ``POSTAGE_DEBUG_MODE=true`` the debug log (including
``postage.messaging: global_vhost set to /``) goes to stderr.

Every producer and processor of a process shares one connection per broker URL; blocking
calls wait on an event loop running in a background thread, so heartbeats are always
served. See ``docs/classic.md``.
"""

from __future__ import annotations

__all__ = [
    "Encoder",
    "Exchange",
    "Fingerprint",
    "GenericConsumer",
    "GenericProducer",
    "Handler",
    "JsonEncoder",
    "Message",
    "MessageCommand",
    "MessageFilter",
    "MessageHandler",
    "MessageHandlerFullBody",
    "MessageProcessor",
    "MessageResult",
    "MessageResultError",
    "MessageResultException",
    "MessageStatus",
    "RetryPolicy",
    "RpcCommand",
    "RpcHandler",
    "global_vhost",  # noqa: F822 - computed on access by __getattr__
    "set_middleware",
]

from typing import Any

from ._api.classic import runtime as _runtime
from ._api.classic.messages import (
    Exchange,
    Message,
    MessageCommand,
    MessageResult,
    MessageResultError,
    MessageResultException,
    MessageStatus,
    RpcCommand,
)
from ._api.classic.processor import (
    GenericConsumer,
    Handler,
    MessageFilter,
    MessageHandler,
    MessageHandlerFullBody,
    MessageProcessor,
    RpcHandler,
)
from ._api.classic.producer import GenericProducer
from ._core.core import RetryPolicy
from ._core.middleware import Middleware
from ._wire.encoding import Encoder, JsonEncoder
from ._wire.fingerprint import Fingerprint


def set_middleware(middleware: list[Middleware] | tuple[Middleware, ...]) -> None:
    """Install :class:`postage.Middleware` objects on the connections that classic
    producers and processors open from now on (first one outermost)."""
    _runtime.set_middleware(middleware)


def __getattr__(name: str) -> Any:
    if name == "global_vhost":
        return _runtime.global_vhost()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
