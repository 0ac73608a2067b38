"""Scatter/gather results: who answered one request sent to a fanout key, and what.

:meth:`postage._core.core.Core.gather` returns raw reply deliveries; this module turns them into
:class:`GatherReply` values (the answering component's fingerprint, its result or the
remote error, the round-trip time) for the communicator's ``rpc_gather`` and the command
line. The request is an ordinary RPC envelope (type ``command``, category ``rpc``,
``content = {"parameters": ...}``), so classic ``@RpcHandler`` methods such as
GenericApplication's ``ping`` answer it unchanged.
"""

from __future__ import annotations

__all__ = ["GatherReply", "decode_reply", "gather_envelope", "gather_replies"]

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.core import Core
from .._exceptions import DecodingError, PostageError
from .._transport import Delivery
from .._wire.envelope import build_envelope
from .._wire.results import remote_error


@dataclass(frozen=True, slots=True)
class GatherReply:
    """One answer to a scatter/gather request.

    ``fingerprint``: the envelope fingerprint of the component that answered (name, type,
    pid, host, user, vhost); ``value``: its result when it succeeded; ``error``: a
    :class:`~postage.RemoteError` (remote exception or error result) or a
    :class:`~postage.DecodingError` (a malformed reply), else None; ``rtt``: seconds from
    sending the request to receiving this reply.
    """

    fingerprint: Mapping[str, Any]
    value: Any = None
    error: PostageError | None = None
    rtt: float = 0.0
    reserved: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Any:
        """The value; raises the error of a failed reply."""
        if self.error is not None:
            raise self.error
        return self.value


def gather_envelope(command: str, parameters: Any,
                    fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The RPC request envelope: ``command`` with ``content = {"parameters": ...}``."""
    return build_envelope("command", command, "rpc", {"parameters": parameters}, fingerprint)


def decode_reply(core: Core, delivery: Delivery, rtt: float) -> GatherReply:
    try:
        envelope = core.decode_envelope(delivery)
    except DecodingError as exc:
        return GatherReply({}, None, exc, rtt)
    raw_fp = envelope.get("fingerprint")
    fingerprint = dict(raw_fp) if isinstance(raw_fp, Mapping) else {}
    raw_reserved = envelope.get("_reserved")
    reserved = dict(raw_reserved) if isinstance(raw_reserved, Mapping) else {}
    if envelope.get("type") != "result":
        bad = DecodingError(f"expected a result message, got type {envelope.get('type')!r}")
        return GatherReply(fingerprint, None, bad, rtt, reserved)
    error = remote_error(envelope)
    if error is None:
        return GatherReply(fingerprint, envelope["content"].get("value"), None, rtt, reserved)
    return GatherReply(fingerprint, None, error, rtt, reserved)


async def gather_replies(
    core: Core, exchange: str, routing_key: str, command: str, parameters: Any = None, *,
    fingerprint: Mapping[str, Any], timeout: float, max_replies: int | None = None,
    mandatory: bool = True,
) -> list[GatherReply]:
    """Send ``command`` to ``exchange``/``routing_key`` and return every answer that
    arrives within ``timeout`` (at most ``max_replies``), in arrival order.

    Raises what :meth:`Core.gather` raises (Unroutable when nobody receives the request).
    """
    loop = asyncio.get_running_loop()
    arrived: dict[int, float] = {}

    def stamp(delivery: Delivery) -> None:
        arrived[id(delivery)] = loop.time()

    body = core.encode(gather_envelope(command, parameters, fingerprint))
    started = loop.time()
    deliveries = await core.gather(
        exchange, routing_key, body, core.properties(), timeout=timeout,
        max_replies=max_replies, mandatory=mandatory, on_reply=stamp,
    )
    return [decode_reply(core, d, arrived.get(id(d), started) - started) for d in deliveries]
