"""The in-memory broker's own tests: its interface matches the real transport's, URLs,
recovery after ``drop_connections``, the pytest plugin as a user sees it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postage import ConfigurationError, ConnectionSettings, RetryPolicy
from postage._core.core import open_core
from postage._transport import Consumer, Delivery, Transport
from postage._transport.amqp.consumer import AmqpConsumer, AmqpDelivery
from postage._transport.amqp.transport import AmqpTransport
from postage._transport.memory import MemoryConsumer, MemoryDelivery, MemoryTransport, broker_name
from postage._transport.memory.model import headers_match, topic_matches
from postage.testing import MemoryBroker, forget_broker, fresh_broker, named_broker


@pytest.mark.parametrize(("base", "real", "fake"), [
    (Transport, AmqpTransport, MemoryTransport),
    (Consumer, AmqpConsumer, MemoryConsumer),
    (Delivery, AmqpDelivery, MemoryDelivery),
])
def test_both_transports_implement_the_interface_as_siblings(
    base: type, real: type, fake: type
) -> None:
    # every operation of the interface is implemented by both, and the test double is a
    # sibling of the real implementation, never a subclass of it
    for cls in (real, fake):
        assert issubclass(cls, base)
        assert not getattr(cls, "__abstractmethods__", None), cls.__abstractmethods__
    assert not issubclass(fake, real)
    assert not issubclass(real, fake)


def test_import_postage_loads_no_memory_broker_and_no_tooling() -> None:
    code = ("import sys, postage, postage.messaging, postage.generic_application; "
            "print(sorted(m for m in sys.modules if m.startswith('postage.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "postage._transport.memory" not in out
    assert "postage._tooling" not in out
    assert "postage._transport.base" in out


def test_delivery_attributes_match() -> None:
    names = {n for n in dir(Delivery) if not n.startswith("_")}
    assert names <= {n for n in dir(MemoryDelivery) if not n.startswith("_")}


def test_memory_urls() -> None:
    assert ConnectionSettings.from_url("memory://").urls == ("memory://",)
    assert broker_name("memory://") == ""
    assert broker_name("memory://unit-a/") == "unit-a"
    with pytest.raises(ConfigurationError, match="memory://"):
        ConnectionSettings.from_url("mem://x")


def test_named_and_fresh_brokers() -> None:
    assert named_broker("same") is named_broker("same")
    broker = fresh_broker()
    assert named_broker(broker.name) is broker
    forget_broker(broker)
    assert named_broker(broker.name) is not broker


@pytest.mark.parametrize(("pattern", "key", "hit"), [
    ("a.*", "a.b", True), ("a.*", "a", False), ("a.#", "a", True), ("#", "", True),
    ("*", "", False), ("#.b.#", "b", True), ("a.*.#.c", "a.x.c", True), ("a.b", "a.b.c", False),
])
def test_topic_matching(pattern: str, key: str, hit: bool) -> None:
    assert topic_matches(pattern, key) is hit


def test_headers_matching() -> None:
    assert headers_match({"x-match": "any", "a": 1, "b": 2}, {"b": 2})
    assert not headers_match({"a": 1, "b": 2}, {"b": 2})
    assert headers_match({"x-match": "all", "a": None}, {"a": "anything"})


async def test_core_on_an_explicit_transport() -> None:
    broker = MemoryBroker("private")
    core = await open_core("memory://unused", transport=MemoryTransport(broker))
    try:
        await core.declare_queue("q")
        await core.publish("", "q", b"x")
        assert broker.peek("q")[0][0] == b"x"
        assert not named_broker("unused").has_queue("q")
    finally:
        await core.close()


async def test_recovery_after_dropped_connections(postage_broker: MemoryBroker) -> None:
    core = await open_core(postage_broker.url)
    try:
        got: list[tuple[bytes, int]] = []
        hold = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append((d.body, d.headers.get("x-postage-redeliveries", 0)))
            if len(got) == 1:
                await hold.wait()

        await core.declare_queue("work")
        await core.declare_queue("mine", exclusive=True)
        await core.subscribe("work", handler, policy=RetryPolicy(1))
        await core.publish("", "work", b"job")
        while not got:
            await asyncio.sleep(0)
        postage_broker.drop_connections()
        hold.set()
        async with asyncio.timeout(5):
            while len(got) < 2:
                await asyncio.sleep(0.01)
        # the unacked one came again (the broker's redelivery, counted by the pipeline)
        assert got == [(b"job", 0), (b"job", 1)]
        assert core.transport.reconnections == 1
        assert postage_broker.has_queue("mine")  # declared again by its owner
        assert postage_broker.connection_count == 1
    finally:
        await core.close()
    assert postage_broker.connection_count == 0
    assert not postage_broker.has_queue("mine")


def test_plugin_fixtures_in_a_users_project(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import postage

        async def test_publish(postage_url, postage_broker):
            async with postage.AsyncClient(postage_url) as client:
                await client.core.declare_queue("inbox")
                await client.publish("", "inbox", b"hi")
            assert postage_broker.peek("inbox")[0][0] == b"hi"

        def test_each_test_has_its_own_broker(postage_broker):
            assert postage_broker.queue_names() == []
    '''))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\naddopts = --strict-markers\nfilterwarnings = error\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
