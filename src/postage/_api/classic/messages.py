"""Classic messages and exchanges: plain values, no I/O.

A :class:`Message` keeps its wire form in ``body``, the envelope v2 dictionary::

    {"type", "name", "category", "version": "2", "fingerprint", "content", "_reserved"}

Results are truthy only when they report success; two messages are equal when their
bodies are. Exchange classes describe an exchange with class attributes and expose them
as the ``parameters`` class property.
"""

from __future__ import annotations

__all__ = [
    "Exchange",
    "ExchangeType",
    "Message",
    "MessageCommand",
    "MessageResult",
    "MessageResultError",
    "MessageResultException",
    "MessageStatus",
    "RpcCommand",
    "jsonable",
    "message_from_body",
]

from collections.abc import Mapping
from typing import Any, ClassVar

from ..._wire.envelope import VERSION


def jsonable(value: Any) -> Any:
    """``value`` with sets and tuples turned into lists (JSON knows neither)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


class Message:
    """The base Postage message; its wire form is ``self.body``.

    ``Message(*args, **kwds)`` (what ``GenericProducer.message()`` sends) carries
    ``content = {"args": [...], "kwds": {...}}`` (each key only when non-empty).
    """

    type: ClassVar[str] = "none"
    name: ClassVar[str] = "none"
    category: ClassVar[str] = "message"
    boolean_value: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwds: Any) -> None:
        content: dict[str, Any] = {}
        if args:
            content["args"] = jsonable(args)
        if kwds:
            content["kwds"] = jsonable(kwds)
        self.body: dict[str, Any] = {
            "type": self.type,
            "name": self.name,
            "category": self.category,
            "version": VERSION,
            "fingerprint": {},
            "content": content,
            "_reserved": {},
        }

    def fingerprint(self, **kwds: Any) -> None:
        """Add ``kwds`` to the message's fingerprint."""
        self.body["fingerprint"].update(kwds)

    def __bool__(self) -> bool:
        return self.boolean_value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self.body == other.body
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by body

    def __str__(self) -> str:
        return str(self.body)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.body!r})"


class MessageCommand(Message):
    """A fire-and-forget command: ``content = {"parameters": parameters}``."""

    type = "command"

    def __init__(self, command: str, parameters: Any = None) -> None:
        super().__init__()
        self.body["name"] = str(command)
        self.body["content"]["parameters"] = jsonable({} if parameters is None else parameters)


class RpcCommand(MessageCommand):
    """A command that expects an answer (category ``rpc``)."""

    category = "rpc"


class MessageStatus(Message):
    """The status of a component; the status is the message's name."""

    type = "status"

    def __init__(self, status: Any) -> None:
        super().__init__()
        self.body["name"] = str(status)


class MessageResult(Message):
    """The successful result of an RPC: ``content = {"type": "success", "value", "message"}``."""

    type = "result"
    result_type: ClassVar[str] = "success"

    def __init__(self, value: Any, message: str = "") -> None:
        super().__init__()
        self.body["content"] = {
            "type": self.result_type,
            "value": jsonable(value),
            "message": message,
        }


class MessageResultError(MessageResult):
    """A foreseen, documented failure of a call; the value is None. Falsy."""

    result_type = "error"
    boolean_value = False

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class MessageResultException(MessageResult):
    """The remote code raised; the value is the exception's type name. Falsy."""

    result_type = "exception"
    boolean_value = False

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)


_RESULTS: dict[str, type[MessageResult]] = {
    "success": MessageResult,
    "error": MessageResultError,
    "exception": MessageResultException,
}


def message_from_body(body: Mapping[str, Any]) -> Message:
    """A Message object of the right class for a decoded envelope (the body is kept)."""
    cls: type[Message] = Message
    if body.get("type") == "result":
        content = body.get("content")
        kind = content.get("type") if isinstance(content, Mapping) else None
        cls = _RESULTS.get(kind, MessageResultError) if isinstance(kind, str) else (
            MessageResultError)
    elif body.get("type") == "command":
        cls = RpcCommand if body.get("category") == "rpc" else MessageCommand
    elif body.get("type") == "status":
        cls = MessageStatus
    message = cls.__new__(cls)
    message.body = dict(body)
    return message


class ExchangeType(type):
    """Metaclass of exchanges: gives every Exchange class a ``parameters`` property."""

    name: str
    exchange_type: str
    passive: bool
    durable: bool
    auto_delete: bool

    @property
    def parameters(cls) -> dict[str, Any]:
        """The exchange as ``exchange_declare()`` keyword arguments."""
        return {
            "exchange": cls.name,
            "exchange_type": cls.exchange_type,
            "passive": cls.passive,
            "durable": cls.durable,
            "auto_delete": cls.auto_delete,
        }

    def __repr__(cls) -> str:
        return f"<Exchange {cls.name!r} ({cls.exchange_type})>"


class Exchange(metaclass=ExchangeType):
    """An exchange declared by subclassing and setting class attributes."""

    name = "noname"
    exchange_type = "direct"
    passive = False
    durable = True
    auto_delete = False
