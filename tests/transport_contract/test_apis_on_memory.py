"""The three public APIs run unchanged on ``memory://``: the documented examples of the
async client and the communicator (same expected output as against RabbitMQ), and the
classic API in-process with ``POSTAGE_URL=memory://...``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import postage
from postage import Unroutable, messaging
from postage._api.classic import runtime as _runtime
from postage.testing import MemoryBroker
from tests.classic.conftest import running
from tests.classic.test_integration import Calls, exchange_cls, make_processor, producer_for
from tests.client import test_docs as client_docs
from tests.communicator import test_docs as communicator_docs


def _run(code: str, tmp_path: Path, env_url: str | None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "POSTAGE_URL"}
    if env_url is not None:
        env["POSTAGE_URL"] = env_url
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("index", range(len(client_docs.EXPECTED)))
def test_client_doc_example_on_memory(index: int, tmp_path: Path) -> None:
    proc = _run(client_docs.BLOCKS[index], tmp_path, "memory://docs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == client_docs.EXPECTED[index]


@pytest.mark.parametrize("index", range(len(communicator_docs.BLOCKS)))
def test_communicator_doc_example_on_memory(index: int, tmp_path: Path) -> None:
    if "subprocess" in communicator_docs.BLOCKS[index]:
        pytest.skip("talks to another process: a memory broker lives in one process")
    code = communicator_docs.BLOCKS[index].replace('"amqp://localhost"', '"memory://docs"')
    proc = _run(code, tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_communicator_on_memory(postage_url: str, postage_broker: MemoryBroker) -> None:
    with postage.connect(postage_url) as comm:
        comm.add_rpc_subscriber(lambda _comm, body: body * 2, "double")
        assert comm.rpc_send("double", 21).result(timeout=5) == 42
        received: list[Any] = []
        comm.add_broadcast_subscriber(lambda _comm, body, *_: received.append(body))
        comm.broadcast_send("hello")
        assert postage_broker.has_queue("postage.rpc.double")
    with postage.connect(postage_url) as other, pytest.raises(Unroutable):
        other.rpc_send("double", 1)  # the subscriber went with its communicator


async def test_async_client_on_memory(postage_url: str, postage_broker: MemoryBroker) -> None:
    async with postage.AsyncClient(postage_url) as client:
        await client.core.declare_queue("jobs")
        await client.publish("", "jobs", b'{"n": 1}')
        assert postage_broker.message_count("jobs") == 1

        async def shout(body: bytes) -> bytes:
            return body.upper()

        await client.receive("tools", "shout", "tools.shout", shout)
        reply = await client.core.call("tools", "shout", b"hi", timeout=5)
        assert reply.body == b"HI"
    async with postage.AsyncClient(postage_url) as client:  # another connection, same broker
        assert await client.core.transport.queue_state("jobs") == (1, 0)
        assert not postage_broker.has_queue("tools.shout")  # auto-delete: gone with its receiver


def test_classic_api_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"memory://classic-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("POSTAGE_URL", url)
    exchange = exchange_cls(uuid.uuid4().hex[:8])
    calls = Calls()
    try:
        with running(make_processor(exchange, "classic-q", calls)):
            producer = producer_for(exchange)
            producer.message_work(n=1)
            assert calls.wait_sync(1) == [("work", {"args": [], "kwds": {"n": 1}})]
            reply = producer.rpc_echo("x", k=2)
            assert isinstance(reply, messaging.MessageResult)
            assert reply.body["content"]["value"] == {"args": ["x"], "kwds": {"k": 2}}
    finally:
        _runtime.close_all()
