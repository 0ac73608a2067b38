"""AMQP message properties and topology descriptions, as plain Postage values. No I/O."""

from __future__ import annotations

__all__ = ["MAX_NAME_BYTES", "Binding", "ExchangeSpec", "Properties", "QueueSpec", "check_name",
           "portable"]

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._exceptions import ConfigurationError

MAX_NAME_BYTES = 255  # AMQP short strings: exchange and queue names, routing keys


def check_name(what: str, name: str) -> None:
    """ConfigurationError unless ``name`` fits in an AMQP short string (255 bytes of
    UTF-8): said before anything is sent, instead of a broken connection."""
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogatepass")) > \
            MAX_NAME_BYTES:
        raise ConfigurationError(
            f"{what} {name[:40]!r}... is {len(name.encode('utf-8', 'surrogatepass'))} bytes "
            f"long: AMQP allows at most {MAX_NAME_BYTES}")

PERSISTENT = 2
TRANSIENT = 1

_FLOAT32_MAX = 3.4028234663852886e38
_INT64 = 2 ** 63


def portable(value: Any, depth: int = 0) -> bool:
    """Whether a header value received from the broker can be written back as it is (a
    retry, a dead letter): strings, booleans, 64-bit integers, floats within a 32-bit
    float's range (how the AMQP encoder writes them), datetimes, None, and tables and
    arrays of those. Not: bytes (an invalid UTF-8 string decodes to them), a double
    beyond that range, anything nested deeper than 64 levels."""
    if value is None or isinstance(value, str | bool | datetime):
        return True
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    if isinstance(value, float):
        return math.isnan(value) or math.isinf(value) or abs(value) <= _FLOAT32_MAX
    if isinstance(value, dict) and depth < 64:
        return all(isinstance(k, str) and portable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple) and depth < 64:
        return all(portable(v, depth + 1) for v in value)
    return False


@dataclass(slots=True)
class Properties:
    """The basic properties of an AMQP message (all optional)."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None

    @classmethod
    def coerce(cls, value: Properties | Mapping[str, Any] | None) -> Properties:
        """Accept Properties, a mapping of property names, or None."""
        if value is None:
            return cls()
        if isinstance(value, Properties):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                names = ", ".join(sorted(unknown))
                raise ConfigurationError(f"unknown message properties: {names}")
            return cls(**value)
        raise ConfigurationError(
            f"properties must be Properties or a dict, not {type(value).__name__}"
        )

    @property
    def persistent(self) -> bool:
        return self.delivery_mode == PERSISTENT


def _frozen_args(arguments: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((arguments or {}).items()))


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare (and to declare again after a reconnection)."""

    name: str
    type: str = "direct"
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_name("exchange name", self.name)

    @classmethod
    def make(
        cls,
        name: str,
        type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> ExchangeSpec:
        if not isinstance(name, str):
            raise ConfigurationError(f"exchange name must be a string, not {type!r}")
        return cls(name, type, durable, auto_delete, internal, _frozen_args(arguments))


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue to declare (and to declare again after a reconnection)."""

    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_name("queue name", self.name)

    @classmethod
    def make(
        cls,
        name: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueSpec:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a queue needs a non-empty name")
        return cls(name, durable, exclusive, auto_delete, _frozen_args(arguments))


@dataclass(frozen=True, slots=True)
class Binding:
    """A queue bound to an exchange with a routing key; with ``to_exchange``, ``queue``
    names an exchange instead (an exchange-to-exchange binding: ``exchange`` is its
    source)."""

    queue: str
    exchange: str
    routing_key: str
    arguments: tuple[tuple[str, Any], ...] = ()
    to_exchange: bool = False

    def __post_init__(self) -> None:
        check_name("queue name", self.queue)
        check_name("exchange name", self.exchange)
        check_name("routing key", self.routing_key)
