"""A guard against header tables nested too deep: one message must not take a consumer down.

The AMQP frame decoder (pamqp) decodes a content header's ``headers`` table recursively.
A table nested about 500 levels deep makes it raise ``RecursionError`` inside the client's
frame reader: the connection dies, the message is delivered again on reconnect, and the
consumer reconnects forever. A table a little less deep decodes, but cannot be encoded
again (a retry, a dead letter) without the same error.

:func:`install` wraps ``pamqp.frame.unmarshal`` (the one function the client calls per
frame) for the pamqp versions in :data:`SUPPORTED`: a content header whose ``headers``
table cannot be decoded, or is nested deeper than :data:`MAX_DEPTH`, is decoded with the
table replaced by ``{"x-postage-undecodable-headers": why}`` (the table carries its own
length, so it is skipped without decoding it; every other property is kept). The inbound
pipeline dead-letters such a message with the reason ``undecodable``. Nothing else
changes: other frames, and headers within the limit, decode as before. A pamqp version
not in :data:`SUPPORTED` is left alone (logged once), and ``tests/security`` fails, so that
the guard is checked again before it is trusted on it.
"""

from __future__ import annotations

__all__ = ["HEADER_UNDECODABLE", "MAX_DEPTH", "SUPPORTED", "install", "installed"]

import logging
import struct
from collections.abc import Callable
from typing import Any

import pamqp
import pamqp.decode
import pamqp.encode
import pamqp.frame
import pamqp.header

from ..base import HEADER_UNDECODABLE

log = logging.getLogger("postage.transport")

MAX_DEPTH = 64  # nesting levels of a headers table (tables and arrays) accepted
SUPPORTED = ("4.0.", "3.3.")  # pamqp versions whose frame layout and decoder this was checked on
_FRAME_HEADER = 7  # type (1), channel (2), size (4)
_FRAME_HEADER_TYPE = 2
_HEADERS_FLAG = 1 << 13  # property flags: content_type 15, content_encoding 14, headers 13

Unmarshal = Callable[[bytes], tuple[int, int, Any]]
_original: Unmarshal | None = None


def installed() -> bool:
    return _original is not None


def install() -> bool:
    """Wrap pamqp's frame decoder (once); False when this pamqp version is not supported."""
    global _original
    if _original is not None:
        return True
    if not pamqp.__version__.startswith(SUPPORTED):
        log.warning("pamqp %s is not one the deep-headers guard was checked on (%s): "
                    "not installed", pamqp.__version__, ", ".join(SUPPORTED))
        return False
    _original = pamqp.frame.unmarshal
    setattr(pamqp.frame, "unmarshal", _guarded_unmarshal)  # noqa: B010 - typed as pamqp's
    return True


def _guarded_unmarshal(data: bytes) -> tuple[int, int, Any]:
    assert _original is not None
    if data[:1] != b"\x02":  # not a content header frame
        return _original(data)
    try:
        consumed, channel, frame = _original(data)
    except RecursionError:
        _, channel, frame = _original(
            _without_headers(data, "headers table nested too deep to decode"))
        (size,) = struct.unpack_from(">I", data, 3)
        return _FRAME_HEADER + size + 1, channel, frame  # what the original frame took
    except Exception:  # a property that cannot be decoded: keep what can be read
        return _salvage(data)
    if len(data) > 4 * MAX_DEPTH and isinstance(frame, pamqp.header.ContentHeader):
        headers = frame.properties.headers
        if headers and _depth(headers) > MAX_DEPTH:
            frame.properties.headers = {
                HEADER_UNDECODABLE: f"headers table nested deeper than {MAX_DEPTH} levels"}
    return consumed, channel, frame


def _depth(value: Any) -> int:
    """How deep tables and arrays nest in ``value`` (without recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, dict | list))
    return deepest


def _without_headers(data: bytes, why: str) -> bytes:
    """The content header frame ``data`` with its headers table replaced by the marker."""
    payload_start = _FRAME_HEADER + 12  # class id, weight, body size
    (flags,) = struct.unpack_from(">H", data, payload_start)
    offset = payload_start + 2
    word = flags
    while word & 1:  # continuation flag words (none in AMQP 0-9-1's Basic properties)
        (word,) = struct.unpack_from(">H", data, offset)
        offset += 2
    if not flags & _HEADERS_FLAG:
        raise ValueError("no headers table to replace")
    for bit in (1 << 15, 1 << 14):  # content_type, content_encoding: short strings
        if flags & bit:
            offset += 1 + data[offset]
    (length,) = struct.unpack_from(">I", data, offset)
    marker = pamqp.encode.field_table({HEADER_UNDECODABLE: why})
    (size,) = struct.unpack_from(">I", data, 3)
    end = _FRAME_HEADER + size  # the frame-end octet
    payload = data[_FRAME_HEADER:offset] + marker + data[offset + 4 + length:end]
    return data[:3] + struct.pack(">I", len(payload)) + payload + data[end:end + 1]


# Basic's properties in wire order: (flag bit, name, kind); s: short string, T: table,
# o: octet, t: 64-bit timestamp
_PROPERTIES = (
    (1 << 15, "content_type", "s"), (1 << 14, "content_encoding", "s"),
    (1 << 13, "headers", "T"), (1 << 12, "delivery_mode", "o"), (1 << 11, "priority", "o"),
    (1 << 10, "correlation_id", "s"), (1 << 9, "reply_to", "s"),
    (1 << 8, "expiration", "s"), (1 << 7, "message_id", "s"), (1 << 6, "timestamp", "t"),
    (1 << 5, "type", "s"), (1 << 4, "user_id", "s"), (1 << 3, "app_id", "s"),
    (1 << 2, "cluster_id", "s"),
)
_SIZES = {"o": 1, "t": 8}


def _field_end(data: bytes, offset: int, kind: str) -> int:
    if kind == "s":
        return offset + 1 + data[offset]
    if kind == "T":
        length: int = struct.unpack_from(">I", data, offset)[0]
        return offset + 4 + length
    return offset + _SIZES[kind]


_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "s": pamqp.decode.short_str, "T": pamqp.decode.field_table, "t": pamqp.decode.timestamp,
}  # an octet always decodes


def _readable(raw: bytes, kind: str) -> bool:
    """Whether pamqp's own decoder reads this one field."""
    decode = _DECODERS.get(kind)
    try:
        if decode is not None:
            decode(raw)
    except (Exception, RecursionError):
        return False
    return True


def _salvage(data: bytes) -> tuple[int, int, Any]:
    """Decode a content header frame one of whose properties pamqp cannot decode: that
    property is left out (an undecodable headers table becomes the marker alone), the
    others are kept, and the headers name what was left out, so that the pipeline
    dead-letters the message as ``undecodable`` instead of the connection dying."""
    (size,) = struct.unpack_from(">I", data, 3)
    end = _FRAME_HEADER + size
    consumed = end + 1  # what the original frame took
    payload_start = _FRAME_HEADER + 12  # class id, weight, body size
    (flags,) = struct.unpack_from(">H", data, payload_start)
    offset = payload_start + 2
    kept_flags, kept, lost = 0, [], []
    try:
        for bit, name, kind in _PROPERTIES:
            if not flags & bit:
                continue
            stop = _field_end(data, offset, kind)
            if stop > end:
                raise ValueError("a property runs past the end of the frame")
            raw = data[offset:stop]
            offset = stop
            if _readable(raw, kind):
                kept_flags |= bit
                kept.append(raw)
            else:
                lost.append(name)
    except (ValueError, IndexError, struct.error):
        lost.append("the rest of the properties")
    why = "undecodable properties: " + ", ".join(lost or ["(unknown)"])
    payload = (data[_FRAME_HEADER:payload_start] + struct.pack(">H", kept_flags)
               + b"".join(kept))
    rebuilt = data[:3] + struct.pack(">I", len(payload)) + payload + data[end:end + 1]
    try:
        _, channel, frame = _original(rebuilt)  # type: ignore[misc]
    except Exception:  # not even that: the body size and no property at all
        bare = data[_FRAME_HEADER:payload_start] + struct.pack(">H", 0)
        _, channel, frame = _original(  # type: ignore[misc]
            data[:3] + struct.pack(">I", len(bare)) + bare + data[end:end + 1])
    headers = frame.properties.headers
    frame.properties.headers = {**(headers if isinstance(headers, dict) else {}),
                                HEADER_UNDECODABLE: why}
    log.warning("a message's %s", why)
    return consumed, channel, frame
