"""Encoders turn message bodies into bytes and back. No I/O here.

An encoder has a ``content_type`` and two methods, ``encode(obj) -> bytes`` and
``decode(data) -> object``. Decoding must be *total*: any byte string gives a value or a
:class:`~postage.DecodingError`, never another exception. Only data formats are allowed:
nothing that can build arbitrary objects (no pickle, no YAML object tags).
"""

from __future__ import annotations

__all__ = ["Encoder", "JsonEncoder", "default_encoder"]

import json
from typing import Any, Protocol, runtime_checkable

from ._exceptions import DecodingError, EncodingError

_orjson: Any
try:  # a faster JSON when installed; output is the same JSON text
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


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

    Tuples become lists, as JSON has no tuples; a value JSON cannot hold raises
    EncodingError. Decoding accepts exactly what the stdlib ``json`` module accepts.
    """

    content_type = "application/json"

    def __init__(self, *, use_orjson: bool | None = None) -> None:
        self._orjson = _orjson if use_orjson is not False else None
        if use_orjson and _orjson is None:
            raise EncodingError("orjson is not installed")

    def encode(self, data: Any) -> bytes:
        if self._orjson is not None:
            try:
                encoded: bytes = self._orjson.dumps(data)
                return encoded
            except TypeError:
                pass  # fall through for the precise stdlib error (and ints over 64 bits)
        try:
            return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodingError(f"cannot encode as JSON: {exc}") from None

    def decode(self, data: bytes) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodingError(f"expected bytes, got {type(data).__name__}")
        if self._orjson is not None:
            try:
                return self._orjson.loads(data)
            except self._orjson.JSONDecodeError:
                pass  # the stdlib gives the reference answer (e.g. integers over 64 bits)
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DecodingError(f"not valid UTF-8: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise DecodingError(f"not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(orjson={self._orjson is not None})"


default_encoder = JsonEncoder()
