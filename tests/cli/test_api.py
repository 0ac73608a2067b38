"""The API under the CLI: Core.gather, presence, classic gather_X, communicator rpc_gather,
and the monitor's management-API parsing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import postage
from postage._api.presence import PresenceAnnouncer, PresenceWatcher
from postage._core.core import Core, open_core
from postage._transport import Delivery
from postage.generic_application import GenericApplicationProducer

from .conftest import Components, Names, run_cli, wait_until


@pytest.fixture
async def core(vhost_url: str) -> AsyncIterator[Core]:
    c = await open_core(vhost_url)
    yield c
    await c.close()


async def _responders(core: Core, exchange: str, key: str, count: int) -> list[str]:
    """``count`` queues bound to ``key``, each answering with its index."""
    await core.declare_exchange(exchange, "direct", auto_delete=True)
    queues = []
    for i in range(count):
        queue = f"{exchange}.{i}"
        await core.declare_queue(queue, exclusive=True, auto_delete=True)
        await core.bind(queue, exchange, key)

        async def answer(delivery: Delivery, i: int = i) -> None:
            await core.reply(delivery, str(i).encode())
            await delivery.ack()

        await core.transport.consume(queue, answer)
        queues.append(queue)
    return queues


async def test_core_gather_collects_every_reply(core: Core) -> None:
    exchange = f"gather-{uuid.uuid4().hex[:8]}"
    await _responders(core, exchange, "all", 3)
    replies = await core.gather(exchange, "all", b"?", timeout=1.0)
    assert sorted(r.body for r in replies) == [b"0", b"1", b"2"]
    assert len({r.correlation_id for r in replies}) == 1
    # max_replies returns as soon as that many arrived, long before the deadline
    started = time.monotonic()
    replies = await core.gather(exchange, "all", b"?", timeout=10.0, max_replies=2)
    assert len(replies) == 2 and time.monotonic() - started < 5
    assert core.pending_calls == 0  # late replies are dropped, the entry is gone
    with pytest.raises(postage.Unroutable):
        await core.gather(exchange, "nobody", b"?", timeout=1.0)
    assert await core.gather(exchange, "nobody", b"?", timeout=0.2, mandatory=False) == []
    # a plain call still works next to gathers (the pending table is shared)
    assert (await core.call(exchange, "all", b"?", timeout=5)).body in {b"0", b"1", b"2"}


async def test_presence_online_heartbeat_offline_and_dead(core: Core, names: Names) -> None:
    seen: list[tuple[str, str]] = []
    watcher = PresenceWatcher(core, on_change=lambda s: seen.append(
        (str(s.fingerprint["name"]), s.status)))
    await watcher.start()
    try:
        fp_a = postage.Fingerprint(name=names("a"), type="t").as_dict()
        fp_b = postage.Fingerprint(name=names("b"), type="t").as_dict()
        a = PresenceAnnouncer(core, fp_a, interval=0.2, info=lambda: {"groups": ["x"]})
        b = PresenceAnnouncer(core, fp_b, interval=0.2)
        await a.start()
        await b.start()
        deadline = time.monotonic() + 10
        while {(fp_a["name"], "heartbeat"), (fp_b["name"], "heartbeat")} - set(seen):
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
        assert (fp_a["name"], "online") in seen
        assert {s.fingerprint["name"] for s in watcher.components()} >= {fp_a["name"],
                                                                          fp_b["name"]}
        state = watcher.get(fp_a)
        assert state is not None and state.info.get("groups") == ["x"]
        assert state.interval == 0.2
        await a.stop()  # clean: offline at once
        await b.stop(offline=False)  # as if killed: silence
        await asyncio.sleep(0.3)
        assert watcher.get(fp_a).status == "offline"  # type: ignore[union-attr]
        assert not watcher.get(fp_a).dead()  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # > 3 intervals of silence
        assert [s.fingerprint["name"] for s in watcher.dead()] == [fp_b["name"]]
        assert fp_b["name"] not in {s.fingerprint["name"] for s in watcher.components()}
        # a watcher started later learns who is there by probing
        c = PresenceAnnouncer(core, postage.Fingerprint(name=names("c")).as_dict(), interval=5)
        await c.start()
        late = PresenceWatcher(core)
        await late.start()
        assert await late.probe(0.5) >= 1
        assert names("c") in {s.fingerprint["name"] for s in late.components()}
        await late.stop()
        await c.stop()
    finally:
        await watcher.stop()


def test_classic_gather_and_communicator_rpc_gather(
        vhost_url: str, components: Components, names: Names,
        monkeypatch: pytest.MonkeyPatch) -> None:
    worker = names("worker")
    w1, w2 = components.start(worker), components.start(worker)
    monkeypatch.setenv("POSTAGE_URL", vhost_url)
    producer = GenericApplicationProducer()
    results = producer.gather_ping(_key=worker, _timeout=1.0)
    assert sorted(r.body["content"]["value"]["pid"] for r in results) == sorted(
        [w1.pid, w2.pid])
    assert all(r for r in results)  # success results are truthy
    assert len(producer.gather_ping(_key=worker, _timeout=10.0, _max_replies=1)) == 1
    assert producer.gather_ping(_key=names("nobody"), _timeout=0.5) == []
    assert "gather_ping" in dir(producer)

    with postage.connect(vhost_url, name=names("comm")) as comm:
        replies = comm.rpc_gather(worker, {"a": 1, "b": 2}, 1.0,
                                  exchange="generic-application-exchange", command="add")
        assert [r.value for r in replies] == [3, 3]
        assert {r.fingerprint["pid"] for r in replies} == {w1.pid, w2.pid}
        assert all(r.ok and 0 < r.rtt < 1.0 for r in replies)
        failed = comm.rpc_gather(worker, None, 1.0, exchange="generic-application-exchange",
                                 command="fail")
        assert [type(r.error) for r in failed] == [postage.RemoteError] * 2
        with pytest.raises(postage.RemoteError, match="failing on purpose"):
            failed[0].result()
        assert comm.rpc_gather(names("nobody"), 1, 0.5) == []
        # a communicator that opts in to presence is listed by `postage ping`
        comm.announce(interval=0.5)
        result = wait_until(lambda: (r := run_cli(vhost_url, "ping")).returncode == 0
                            and names("comm") in r.stdout and r)
        assert {w1.pid, w2.pid} <= result.pids()
    # closing said offline: it is gone from the presence ping
    assert names("comm") not in run_cli(vhost_url, "ping").stdout


class _FakeManagement(BaseHTTPRequestHandler):
    payload: bytes = b"[]"
    seen_auth: list[str] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_management() -> Iterator[str]:
    _FakeManagement.payload = json.dumps([
        {"name": "orders", "messages": 12, "consumers": 2,
         "message_stats": {"publish_details": {"rate": 3.5},
                           "deliver_get_details": {"rate": 1.25}}},
        {"name": "idle", "messages": 0, "consumers": 0},
        {"bogus": True},
    ]).encode()
    server = HTTPServer(("127.0.0.1", 0), _FakeManagement)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_monitor_uses_the_management_api_when_it_answers(
        vhost_url: str, fake_management: str) -> None:
    result = run_cli(vhost_url, "monitor", "--once", "--management-url", fake_management)
    assert result.returncode == 0, result
    assert f"queues from management API {fake_management}" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split()}
    assert rows["orders"][1:] == ["12", "2", "3.5", "1.2"]
    assert rows["idle"][1:] == ["0", "0", "-", "-"]
    assert _FakeManagement.seen_auth[-1].startswith("Basic ")
