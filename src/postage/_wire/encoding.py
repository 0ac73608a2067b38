"""Encoders turn message bodies into bytes and back. No I/O here.

An encoder has a ``content_type`` and two methods, ``encode(obj) -> bytes`` and
``decode(data) -> object``. Decoding must be *total*: any byte string gives a value or a
:class:`~postage.DecodingError`, never another exception. Only data formats are allowed:
nothing that can build arbitrary objects (no pickle, no YAML object tags).

JSON here is strict and lossless both ways, whichever library does the work: NaN and
infinities are refused (they are not JSON), integers of any size stay integers. orjson is
fast but writes NaN as ``null`` and reads integers outside 64 bits as floats, so the fast
path checks for both cheaply and hands such values to the stdlib.

A few common values that JSON has no type for are sent as JSON values, the same bytes with
or without orjson (one function, :func:`to_json_value`, formats them on both paths): a
``datetime``, ``date`` or ``time`` as ISO 8601 text (``datetime.isoformat()``), a ``UUID``
as its hyphenated text, an ``Enum`` member as its value, a dataclass instance as an object
of its fields. They arrive as that text or object: the receiver converts them back.
Anything else that JSON cannot hold (``bytes``, ``set``, ``Decimal``, other objects)
raises EncodingError on both paths.
"""

from __future__ import annotations

__all__ = ["Encoder", "JsonEncoder", "check_encoder", "default_encoder", "to_json_value"]

import dataclasses
import datetime
import enum
import json
import uuid
from typing import Any, NoReturn, Protocol, TypeVar, runtime_checkable

from .._exceptions import ConfigurationError, DecodingError, EncodingError

_orjson: Any
try:  # a faster JSON when installed; output is the same JSON text
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


# orjson reads integers outside 64 bits as floats, silently; a run of 19 digits is the
# shortest that can hold one (-9223372036854775809). Digits become "0", the rest " ",
# then one substring search: a fraction of the cost of parsing.
E = TypeVar("E")
# datetimes and dataclasses go through to_json_value, as on the stdlib path (orjson's own
# offsets with seconds differ from isoformat()); its UUIDs and enums already match
_ORJSON_OPTIONS = (
    0 if _orjson is None
    else _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
)
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19


def _non_finite(obj: Any) -> bool:
    """True if ``obj`` holds a NaN or an infinity (orjson would write ``null``)."""
    stack = [obj]
    pop, push, push_all = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or item is None or kind is int or kind is bool:
            continue  # the common leaves: settled with one look, no isinstance
        if kind is dict:
            push_all(item.values())
        elif kind is list or kind is tuple:
            push_all(item)
        elif kind is float:
            if item - item:  # 0.0 for finite values, NaN for NaN and infinities
                return True
        elif isinstance(item, float):
            push(float(item))
        elif isinstance(item, dict):
            push_all(item.values())
        elif isinstance(item, list | tuple):
            push_all(item)
    return False


def to_json_value(obj: Any) -> Any:
    """The JSON value sent for a ``datetime``/``date``/``time``, ``UUID``, ``Enum`` member
    or dataclass instance (see the module docstring); TypeError for anything else."""
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _refuse_constant(name: str) -> NoReturn:
    raise DecodingError(f"not valid JSON: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value:
        raise DecodingError(f"not valid JSON: {text[:40]} is out of the range of a float")
    return value


def check_encoder(encoder: E) -> E:
    """Return ``encoder`` if it declares a content type and both methods, else raise
    ConfigurationError: a consumer decides what it decodes by content type."""
    content_type = getattr(encoder, "content_type", None)
    if not isinstance(content_type, str) or "/" not in content_type:
        raise ConfigurationError(
            f"encoder {type(encoder).__name__} must declare a content_type such as "
            f"'application/json', not {content_type!r}"
        )
    if not callable(getattr(encoder, "encode", None)) or not callable(
        getattr(encoder, "decode", None)
    ):
        raise ConfigurationError(f"encoder {type(encoder).__name__} needs encode and decode")
    return encoder


@runtime_checkable
class Encoder(Protocol):
    """What Postage needs of an encoder."""

    content_type: str

    def encode(self, data: Any) -> bytes:
        """Return ``data`` as bytes; raise EncodingError if it cannot be represented."""
        ...

    def decode(self, data: bytes) -> Any:
        """Return the value in ``data``; raise DecodingError for anything invalid."""
        ...


class JsonEncoder:
    """JSON, UTF-8. Uses orjson when it is installed and the stdlib otherwise.

    Tuples become lists, as JSON has no tuples; dates, times, UUIDs, enums and dataclasses
    are sent as :func:`to_json_value` formats them; any other value JSON cannot hold (NaN
    and infinities included) raises EncodingError. Decoding accepts standard JSON (RFC 8259):
    the stdlib's ``NaN``/``Infinity`` extensions and numbers too large for a float raise
    DecodingError; integers keep every digit.
    """

    content_type = "application/json"

    def __init__(self, *, use_orjson: bool | None = None) -> None:
        self._orjson = _orjson if use_orjson is not False else None
        if use_orjson and _orjson is None:
            raise EncodingError("orjson is not installed")

    def encode(self, data: Any) -> bytes:
        if self._orjson is not None:
            try:
                encoded: bytes = self._orjson.dumps(
                    data, default=to_json_value, option=_ORJSON_OPTIONS)
            except TypeError:
                pass  # fall through for the precise stdlib error (and ints over 64 bits)
            else:
                # orjson writes NaN and infinities as null: look closer only then
                if b"null" not in encoded or not _non_finite(data):
                    return encoded
        try:
            return json.dumps(data, separators=(",", ":"), allow_nan=False,
                              default=to_json_value).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodingError(f"cannot encode as JSON: {exc}") from None

    def decode(self, data: bytes) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodingError(f"expected bytes, got {type(data).__name__}")
        if self._orjson is not None:
            raw: Any = data  # bytes-like; a memoryview has no translate()
            if isinstance(raw, memoryview):
                raw = bytes(raw)
            if _LONG_RUN not in raw.translate(_DIGITS):  # no integer orjson would round
                try:
                    return self._orjson.loads(raw)
                except self._orjson.JSONDecodeError:
                    pass  # the stdlib gives the reference answer (and the error text)
        try:
            return json.loads(
                bytes(data).decode("utf-8"),
                parse_constant=_refuse_constant, parse_float=_finite_float,
            )
        except DecodingError:
            raise
        except UnicodeDecodeError as exc:
            raise DecodingError(f"not valid UTF-8: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise DecodingError(f"not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(orjson={self._orjson is not None})"


default_encoder = JsonEncoder()
