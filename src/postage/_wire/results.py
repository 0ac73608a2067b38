"""Reading a result envelope (the reply to an RPC or a task), once for every API. No I/O.

A result's ``content`` is ``{type: success|error|exception, value, message}``; an error or
exception result becomes a :class:`~postage.RemoteError` carrying the remote type name (the
``value`` of an exception result), its message and the remote traceback text
(``_reserved["traceback"]``).
"""

from __future__ import annotations

__all__ = ["RESULT_TYPE", "remote_error", "result_value"]

from collections.abc import Mapping
from typing import Any

from .._exceptions import DecodingError, RemoteError

RESULT_TYPE = "result"


def remote_error(envelope: Mapping[str, Any]) -> RemoteError | None:
    """The RemoteError of an error or exception result; None for a success."""
    content = envelope["content"]
    if content["type"] == "success":
        return None
    reserved = envelope.get("_reserved") or {}
    trace = reserved.get("traceback") if isinstance(reserved, Mapping) else None
    value = content.get("value")
    type_name = value if isinstance(value, str) and value else str(content["type"]).capitalize()
    message = content.get("message")
    return RemoteError(type_name, "" if message is None else str(message),
                       trace if isinstance(trace, str) else "")


def result_value(envelope: Mapping[str, Any]) -> Any:
    """The value of a result envelope; RemoteError for an error or exception result,
    DecodingError when it is not a result at all."""
    if envelope.get("type") != RESULT_TYPE:
        raise DecodingError(f"expected a result message, got type {envelope.get('type')!r}")
    error = remote_error(envelope)
    if error is not None:
        raise error
    return envelope["content"].get("value")
