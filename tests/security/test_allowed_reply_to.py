"""``allowed_reply_to``: an RPC server writes replies only where its connection allows
(by default anywhere ``reply_to`` names, as every AMQP RPC server)."""

from __future__ import annotations

import asyncio
import uuid

import pika
import pytest

import postage
from postage import ConfigurationError
from postage._core.outbound import reply_to_rule


def test_the_rule() -> None:
    assert reply_to_rule(None) is None
    direct = reply_to_rule("direct")
    assert direct is not None
    assert direct.fullmatch("amq.rabbitmq.reply-to")
    assert direct.fullmatch("amq.rabbitmq.reply-to.g1h2AA.xyz")
    assert not direct.fullmatch("payments")
    with pytest.raises(ConfigurationError, match="not a pattern"):
        reply_to_rule("(")


@pytest.mark.parametrize("allowed", [None, "direct", r"replies\..*|amq\.rabbitmq\.reply-to\..*"])
async def test_replies_go_only_where_allowed(broker_url: str, allowed: str | None) -> None:
    uid = uuid.uuid4().hex[:8]
    queue, victim = f"test.replyto.server.{uid}", f"test.replyto.victim.{uid}"
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.queue_declare(victim, durable=True)
    try:
        async with postage.AsyncClient(broker_url, allowed_reply_to=allowed) as server, \
                postage.AsyncClient(broker_url) as caller:
            await server.receive("", "", queue, lambda body: body.upper())
            # a request whose reply_to names a queue the sender cannot read: the victim's
            await caller.publish("", queue, b"forged", properties=postage.Properties(
                reply_to=victim, correlation_id="x"))
            # a regular call (direct reply-to) is answered in every case
            assert await caller.rpc("", queue, b"call", timeout=10) == b"CALL"
            await asyncio.sleep(0.3)
        count = channel.queue_declare(victim, durable=True, passive=True).method.message_count
        assert count == (1 if allowed is None else 0)
    finally:
        channel.queue_delete(victim)
        connection.close()
