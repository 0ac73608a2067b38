"""``postage dlq``: list, show, replay and purge a real dead-letter queue, as text and JSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pika

from postage import Properties, RetryPolicy
from postage._core.core import HandlingOptions, open_core
from postage._core.middleware import IncomingMessage

from .conftest import run_cli


async def _fill(url: str, queue: str, count: int) -> None:
    core = await open_core(url)
    try:
        await core.declare_queue(queue, durable=True)

        async def failing(message: IncomingMessage) -> None:
            raise ValueError(f"bad order {json.loads(message.delivery.body)['order']}")

        sub = await core.consume(queue, failing, HandlingOptions(RetryPolicy(max_attempts=1)))
        for order in range(1, count + 1):
            await core.publish("", queue, json.dumps({"order": order}).encode())
        async with asyncio.timeout(10):
            while (await core.queue_state(f"{queue}.dlq"))[0] < count:
                await asyncio.sleep(0.02)
        await sub.cancel()
    finally:
        await core.close(2)


def test_dlq_commands(vhost_url: str, names: Callable[[str], str]) -> None:
    queue = names("dlq-jobs")
    dead = f"{queue}.dlq"
    asyncio.run(_fill(vhost_url, queue, 3))

    listed = run_cli(vhost_url, "dlq", "list", dead)
    assert listed.returncode == 0, listed
    [header, row] = listed.stdout.splitlines()
    assert header.split() == ["QUEUE", "MESSAGES", "OLDEST"]
    assert row.split()[:2] == [dead, "3"] and row.split()[2].endswith("s")
    as_json = json.loads(run_cli(vhost_url, "dlq", "list", dead, "--json").stdout)
    assert as_json[0]["queue"] == dead and as_json[0]["messages"] == 3

    shown = run_cli(vhost_url, "dlq", "show", dead, "-n", "2")
    assert shown.returncode == 0, shown
    assert shown.stdout.startswith(f"{dead}: 3 messages, the first 2:")
    assert "reason: handler-failed   attempts: 1" in shown.stdout
    assert "error: ValueError: bad order 1" in shown.stdout
    assert (f"from: queue {queue!r}; its headers say it was sent to exchange '' with key "
            f"{queue!r} (the sender could have written those)") in shown.stdout
    assert 'body: {"order": 2}' in shown.stdout and "order\": 3" not in shown.stdout
    detail = json.loads(run_cli(vhost_url, "dlq", "show", dead, "--json").stdout)
    assert [s["body"] for s in detail["shown"]] == [
        '{"order": 1}', '{"order": 2}', '{"order": 3}']
    assert detail["shown"][0]["headers"]["x-postage-reason"] == "handler-failed"

    replayed = run_cli(vhost_url, "dlq", "replay", dead, "--where", "error~order 2")
    assert (replayed.returncode, replayed.stdout) == (
        0, f"{dead}: replayed 1, kept 2\n"), replayed
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        _method, props, body = connection.channel().basic_get(queue, auto_ack=True)
        assert body == b'{"order": 2}' and props.headers == {"x-postage-replays": 1}
    finally:
        connection.close()

    bad = run_cli(vhost_url, "dlq", "replay", dead, "--where", "os.system('x')")
    assert bad.returncode == 2 and "cannot read the condition" in bad.stderr

    purged = json.loads(run_cli(vhost_url, "dlq", "purge", dead, "--json").stdout)
    assert purged == {"queue": dead, "purged": 2}
    missing = run_cli(vhost_url, "dlq", "list")  # no names and no management API
    assert missing.returncode == 2 and "AMQP cannot list queues" in missing.stderr


def test_dlq_show_and_replay_read_a_message_with_undecodable_properties(
        vhost_url: str, names: Callable[[str], str]) -> None:
    """A message whose correlation_id is not UTF-8 sits in a dead-letter queue: show lists
    it (the property left out, the reason in the headers), replay sends it on."""
    import struct

    from tests.security.raw_properties import RawProperties

    queue = names("dlq-raw")
    dead = f"{queue}.dlq"
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.queue_declare(dead, durable=True)
        content_type = b"\x10application/json"
        raw = struct.pack(">H", 1 << 15 | 1 << 10) + content_type + b"\x02\xff\xfe"
        channel.basic_publish("", dead, b'{"raw": 1}', RawProperties(raw))
    finally:
        connection.close()
    shown = run_cli(vhost_url, "dlq", "show", dead, "--json")
    assert shown.returncode == 0, shown
    [message] = json.loads(shown.stdout)["shown"]
    assert message["body"] == '{"raw": 1}'
    assert "correlation_id" in message["headers"]["x-postage-undecodable-headers"]
    replayed = run_cli(vhost_url, "dlq", "replay", dead)
    assert (replayed.returncode, replayed.stdout) == (
        0, f"{dead}: replayed 1, kept 0\n"), replayed
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:  # back to the queue the dead-letter queue is named after
        _method, props, body = connection.channel().basic_get(queue, auto_ack=True)
        assert body == b'{"raw": 1}' and props.correlation_id is None
    finally:
        connection.close()


def test_purge_asks_for_force_on_a_queue_that_is_not_a_dead_letter_queue(
        vhost_url: str, names: Callable[[str], str]) -> None:
    queue = names("orders")
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_publish("", queue, b"keep me")
    finally:
        connection.close()
    refused = run_cli(vhost_url, "dlq", "purge", queue)
    assert refused.returncode == 2 and "--force" in refused.stderr
    shown = run_cli(vhost_url, "dlq", "show", queue, "--json")
    assert json.loads(shown.stdout)["messages"] == 1  # nothing dropped
    forced = json.loads(run_cli(vhost_url, "dlq", "purge", queue, "--force", "--json").stdout)
    assert forced == {"queue": queue, "purged": 1}


def test_replay_ignores_the_target_a_sender_wrote_in_the_headers(
        vhost_url: str, names: Callable[[str], str]) -> None:
    """A sender that may write only to ``shop`` forges x-postage-exchange and
    x-postage-routing-key naming ``payments``: the operator's replay sends the message back
    to ``shop``, its queue; only --to-original follows the headers."""
    shop, payments = names("shop"), names("payments")
    dead = f"{shop}.dlq"

    async def fail_once() -> None:
        core = await open_core(vhost_url)
        try:
            await core.declare_queue(shop, durable=True)
            await core.declare_queue(payments, durable=True)

            async def failing(_message: IncomingMessage) -> None:
                raise ValueError("out of stock")

            sub = await core.consume(shop, failing, HandlingOptions(RetryPolicy(max_attempts=1)))
            await core.publish("", shop, b"pay eve 1000000", Properties(headers={
                "x-postage-exchange": "", "x-postage-routing-key": payments}))
            async with asyncio.timeout(10):
                while (await core.queue_state(dead))[0] < 1:
                    await asyncio.sleep(0.02)
            await sub.cancel()
        finally:
            await core.close(2)

    asyncio.run(fail_once())
    shown = run_cli(vhost_url, "dlq", "show", dead)
    assert f"from: queue {shop!r}" in shown.stdout and "could have written" in shown.stdout
    assert run_cli(vhost_url, "dlq", "replay", dead).returncode == 0
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        counts = {q: channel.queue_declare(q, durable=True, passive=True).method.message_count
                  for q in (shop, payments)}
        assert counts == {shop: 1, payments: 0}
    finally:
        connection.close()
