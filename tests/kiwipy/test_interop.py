"""postage.kiwipy and the real kiwiPy 0.9, in separate processes over one RabbitMQ: RPC
(plain, nested future, exception), a task with its result, and filtered broadcasts both
ways. ``peer.py`` is the same kiwiPy program run with either import."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ON_RABBITMQ_4

PEER = str(Path(__file__).with_name("peer.py"))

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def expected(prefix: str) -> dict[str, object]:
    return {
        "echo": {"echo": [1, "two", 3.0], "tuple": [1, 2]},
        "nested": {"nested": "n"},
        "fail": "failed on x",
        "task": [{"n": 7}, {"n": 7}],
        "broadcast": [["hello", "client", f"{prefix}.to-server", "c1"]],
    }


@pytest.mark.parametrize("mode", ["", "testing"])
@pytest.mark.parametrize(("server", "client"), [
    ("real", "postage"), ("postage", "real"), ("postage", "postage")])
def test_a_kiwipy_program_talks_across_implementations(
        broker_url: str, server: str, client: str, mode: str) -> None:
    if mode and "real" in (server, client) and ON_RABBITMQ_4:
        pytest.skip("kiwiPy 0.9's testing mode declares transient shared queues, which "
                    "RabbitMQ 4.3 refuses by default (postage.kiwipy declares them durable)")
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    serving = subprocess.Popen(
        [sys.executable, PEER, server, "serve", broker_url, prefix, mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serving.stdout is not None
        assert serving.stdout.readline().strip() == "ready", serving.stderr
        calling = subprocess.run(
            [sys.executable, PEER, client, "call", broker_url, prefix, mode],
            capture_output=True, text=True, timeout=60, check=False)
        assert calling.returncode == 0, calling.stderr[-3000:]
        assert json.loads(calling.stdout.strip().splitlines()[-1]) == expected(prefix)
    finally:
        try:
            serving.communicate("", timeout=30)
        except subprocess.TimeoutExpired:
            serving.kill()
            serving.communicate()
    assert serving.returncode == 0, serving.stderr
