"""How communicator messages look on the wire (Postage envelope v2). No I/O.

* RPC request to subscriber X: exchange ``postage.rpc`` (direct), routing key X, envelope
  ``{type: "command", name: X, category: "rpc", content: {"parameters": body}}`` with
  ``reply_to``/``correlation_id`` -- the classic ``rpc_X`` request, so both APIs interoperate.
* Task to queue Q: exchange ``postage.tasks`` (direct), routing key Q, persistent,
  ``{type: "task", name: Q, category: "rpc" (or "message" when no reply is wanted),
  content: {"parameters": body}}``.
* Replies (RPC and task results): ``{type: "result", name: X or Q, category: "message",
  content: {"type": "success", "value": result}}``, or for an exception
  ``{"type": "exception", "value": <type name>, "message": str(exc)}`` with the remote
  traceback text in ``_reserved["traceback"]``.
* Broadcast: exchange ``postage.broadcast`` (topic), routing key = subject (or ``""``),
  ``{type: "status", name: subject or "", category: "message",
  content: {"body", "sender", "subject", "correlation_id"}}``; the correlation id is also
  the AMQP ``correlation_id`` property.
"""

from __future__ import annotations

__all__ = [
    "BROADCAST_TYPE",
    "RPC_TYPE",
    "TASK_TYPE",
    "broadcast_envelope",
    "exception_envelope",
    "parse_broadcast",
    "request_body",
    "request_envelope",
    "result_value",
    "success_envelope",
]

import traceback
from collections.abc import Mapping
from typing import Any

from ..._wire.envelope import build_envelope, result_content
from ..._wire.results import RESULT_TYPE, result_value

RPC_TYPE = "command"
TASK_TYPE = "task"
BROADCAST_TYPE = "status"
MAX_TRACEBACK = 16_000


def request_envelope(
    type: str, name: str, body: Any, *, reply: bool, fingerprint: Mapping[str, Any]
) -> dict[str, Any]:
    return build_envelope(type, name, "rpc" if reply else "message",
                          {"parameters": body}, fingerprint)


def request_body(envelope: Mapping[str, Any]) -> Any:
    """The body a subscriber receives: ``content["parameters"]`` (else the whole content)."""
    content = envelope["content"]
    if isinstance(content, dict) and "parameters" in content:
        return content["parameters"]
    return content


def success_envelope(name: str, value: Any, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    return build_envelope(RESULT_TYPE, name, "message", result_content("success", value),
                          fingerprint)


def exception_envelope(
    name: str, exc: BaseException, fingerprint: Mapping[str, Any], *, details: bool = False
) -> dict[str, Any]:
    """The reply telling a caller that ``exc`` was raised: its type and message; with
    ``details``, also the traceback and the server's fingerprint (opt-in)."""
    if not details:
        return build_envelope(RESULT_TYPE, name, "message",
                              result_content("exception", type(exc).__name__, str(exc)), {})
    text = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
    return build_envelope(
        RESULT_TYPE, name, "message",
        result_content("exception", type(exc).__name__, str(exc)),
        fingerprint, {"traceback": text},
    )


def broadcast_envelope(
    body: Any, sender: Any, subject: Any, correlation_id: Any, fingerprint: Mapping[str, Any]
) -> dict[str, Any]:
    content = {"body": body, "sender": sender, "subject": subject,
               "correlation_id": correlation_id}
    name = subject if isinstance(subject, str) else ""
    return build_envelope(BROADCAST_TYPE, name, "message", content, fingerprint)


def parse_broadcast(
    envelope: Mapping[str, Any], correlation_id: str | None
) -> tuple[Any, Any, Any, Any]:
    """(body, sender, subject, msg_id) of a broadcast; other messages (e.g. a classic
    status message) give their content as body and their name as subject."""
    content = envelope["content"]
    if isinstance(content, dict) and {"body", "sender", "subject"} <= content.keys():
        msg_id = content.get("correlation_id", correlation_id)
        return content["body"], content["sender"], content["subject"], msg_id
    fingerprint = envelope.get("fingerprint") or {}
    sender = fingerprint.get("name") if isinstance(fingerprint, dict) else None
    return content, sender, envelope["name"] or None, correlation_id
