"""The Postage message envelope, version 2. No I/O here.

On the wire a Postage message is an encoded object (JSON by default)::

    {"type": "command", "name": "ping", "category": "message", "version": "2",
     "fingerprint": {...}, "content": {...}, "_reserved": {...}}

``type`` is free-form (``command``, ``status`` and ``result`` are the usual ones),
``category`` is ``message`` (fire and forget) or ``rpc`` (a reply is expected).
Results carry ``content = {"type": "success"|"error"|"exception", "value": ..., "message": ...}``.
"""

from __future__ import annotations

__all__ = [
    "CATEGORIES",
    "ENVELOPE_KEYS",
    "RESULT_KINDS",
    "VERSION",
    "build_envelope",
    "decode_envelope",
    "encode_envelope",
    "result_content",
    "validate_envelope",
]

from collections.abc import Collection, Mapping
from typing import Any

from .._exceptions import (
    DecodingError,
    EncodingError,
    MessageTooLarge,
    UnsupportedContentType,
    UnsupportedVersion,
)
from .encoding import Encoder, default_encoder

VERSION = "2"
CATEGORIES = frozenset({"message", "rpc"})
RESULT_KINDS = frozenset({"success", "error", "exception"})
REQUIRED_KEYS = ("type", "name", "category", "version", "content")
ENVELOPE_KEYS = frozenset({*REQUIRED_KEYS, "fingerprint", "_reserved"})
DEFAULT_MAX_SIZE = 16 * 1024 * 1024


def build_envelope(
    type: str,
    name: str,
    category: str = "message",
    content: Any = None,
    fingerprint: Mapping[str, Any] | None = None,
    reserved: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a new envelope dictionary: one that :func:`decode_envelope` accepts, or an
    EncodingError (the builder and the decoder check the same rules)."""
    if category not in CATEGORIES:
        raise EncodingError(f"category must be 'message' or 'rpc', not {category!r}")
    if not isinstance(type, str) or not type:
        raise EncodingError(f"the type must be a non-empty string, not {type!r}")
    if not isinstance(name, str):
        raise EncodingError(f"the name must be a string, not {name!r}")
    content = {} if content is None else content
    if type == "result" and (not isinstance(content, dict)
                             or content.get("type") not in RESULT_KINDS):
        raise EncodingError("a result's content must be result_content(success|error|"
                            f"exception, ...), not {content!r}"[:300])
    return {
        "type": type,
        "name": name,
        "category": category,
        "version": VERSION,
        "fingerprint": dict(fingerprint) if fingerprint else {},
        "content": content,
        "_reserved": dict(reserved) if reserved else {},
    }


def result_content(kind: str, value: Any = None, message: str | None = None) -> dict[str, Any]:
    """The ``content`` of a result message."""
    if kind not in RESULT_KINDS:
        raise EncodingError(f"result kind must be success, error or exception, not {kind!r}")
    return {"type": kind, "value": value, "message": message}


def validate_envelope(obj: Any) -> dict[str, Any]:
    """Check that ``obj`` is a v2 envelope and return it; raise DecodingError if not."""
    if not isinstance(obj, dict):
        raise DecodingError(f"envelope must be an object, not {type(obj).__name__}")
    _check_version(obj)
    _check_keys(obj)
    _check_fields(obj)
    for key in ("fingerprint", "_reserved"):
        value = obj.setdefault(key, {})
        if value is None:
            obj[key] = {}
        elif not isinstance(value, dict):
            raise DecodingError(f"envelope {key!r} must be an object")
    if obj["type"] == "result":
        content = obj["content"]
        if not isinstance(content, dict) or content.get("type") not in RESULT_KINDS:
            raise DecodingError(
                "result content must be an object with type success/error/exception"
            )
    return obj


def _check_version(obj: dict[str, Any]) -> None:
    version = obj.get("version")
    if version != VERSION:
        if version is None:
            raise DecodingError("envelope has no 'version'")
        raise UnsupportedVersion(f"envelope version {version!r} is not supported (want '2')")


def _check_keys(obj: dict[str, Any]) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise DecodingError(f"envelope lacks {', '.join(missing)}")
    if len(obj) > len(ENVELOPE_KEYS) or not ENVELOPE_KEYS.issuperset(obj):
        extra = sorted(str(key) for key in obj if key not in ENVELOPE_KEYS)
        if extra:
            raise DecodingError(f"envelope has unknown keys: {', '.join(extra)}")


def _check_fields(obj: dict[str, Any]) -> None:
    if not isinstance(obj["type"], str) or not obj["type"]:
        raise DecodingError("envelope 'type' must be a non-empty string")
    if not isinstance(obj["name"], str):
        raise DecodingError("envelope 'name' must be a string")
    if obj["category"] not in CATEGORIES:
        raise DecodingError(f"envelope 'category' must be message or rpc, not {obj['category']!r}")


def encode_envelope(envelope: Mapping[str, Any], encoder: Encoder = default_encoder) -> bytes:
    """Encode an envelope (not validated: the builder made it)."""
    return encoder.encode(envelope)


def decode_envelope(
    body: bytes,
    content_type: str | None = None,
    encoder: Encoder = default_encoder,
    *,
    max_size: int | None = DEFAULT_MAX_SIZE,
    accept: Collection[str] | None = None,
) -> dict[str, Any]:
    """Decode and validate a message body. Total: returns an envelope or raises DecodingError.

    A missing content type is read with ``encoder`` (programs that do not set it still
    interoperate); any other content type must be the encoder's or listed in ``accept``.
    """
    if max_size is not None and len(body) > max_size:
        raise MessageTooLarge(f"body of {len(body)} bytes is over the limit of {max_size}")
    if content_type and content_type != encoder.content_type and (
        accept is None or content_type not in accept
    ):
        raise UnsupportedContentType(
            f"content type {content_type!r} is not accepted (expected {encoder.content_type!r})"
        )
    if not body:
        raise DecodingError("empty body")
    try:
        obj = encoder.decode(body)
    except DecodingError:
        raise
    except Exception as exc:  # a user encoder that breaks its contract
        raise DecodingError(f"{type(encoder).__name__} failed: {exc!r}") from None
    return validate_envelope(obj)
