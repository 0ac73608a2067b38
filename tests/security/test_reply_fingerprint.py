"""What a communicator's replies say about where it runs: its name and type, not its
pid, host or user, unless ``error_details`` asks for server internals."""

from __future__ import annotations

import json
import uuid

import pytest

import postage
from postage._api.communicator import wire as _wire
from postage._api.communicator.aio import open_communicator


@pytest.mark.parametrize("details", [False, True])
async def test_replies_leave_out_pid_host_and_user(broker_url: str, details: bool) -> None:
    ident = f"test.fp.{uuid.uuid4().hex[:8]}"
    comm = await open_communicator(broker_url, name="pricing", error_details=details)
    try:
        await comm.add_rpc_subscriber(lambda _c, n: n * 2, ident)
        async with postage.AsyncClient(broker_url) as client:
            for body in (21, "not a number"):
                request = _wire.request_envelope(_wire.RPC_TYPE, ident, body, reply=True,
                                                 fingerprint={"name": "caller"})
                raw = await client.rpc(comm.options.rpc_exchange, ident,
                                       json.dumps(request).encode(), timeout=10)
                fingerprint = json.loads(raw)["fingerprint"]
                assert fingerprint["name"] == "pricing"
                private = {"pid", "host", "user"} & fingerprint.keys()
                assert private == ({"pid", "host", "user"} if details else set())
    finally:
        await comm.close()
