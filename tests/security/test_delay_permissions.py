"""Delayed messages and permissions: a user who may use its own delay levels, but may not
write to a queue, cannot reach that queue through any delay, whatever routing key or ``CC``
it writes, and cannot use another user's levels."""

from __future__ import annotations

import asyncio
import re

import pytest

import postage
from postage import AsyncClient, Properties
from postage._core.delays import DelayNames
from postage._wire.delays import delay_key

from .conftest import Accounts


async def _ready(client: AsyncClient, queue: str) -> int:
    return (await client.core.transport.queue_state(queue))[0]


async def test_delays_reach_only_what_the_sender_may_write_to(accounts: Accounts) -> None:
    vhost = accounts.vhost()
    admin, admin_pw = accounts.user()
    accounts.permit(admin, vhost, ".*", ".*", ".*")
    user, password = accounts.user()
    mine = re.escape(DelayNames(user).prefix)
    # its own delay levels, and writing to "shop": not to "admin-commands"
    accounts.permit(user, vhost, f"^{mine}", f"^(shop|{mine}.*)$", f"^{mine}")
    async with AsyncClient(accounts.url(admin, admin_pw, vhost)) as boss:
        await boss.core.declare_queue("admin-commands", durable=True)
        await boss.core.declare_queue("shop", durable=True)
        # the admin's own delayed command binds admin-commands to the admin's levels
        await boss.core.publish("", "admin-commands", b"rotate keys", delay=0.2)
        async with AsyncClient(accounts.url(user, password, vhost)) as client:
            names = client.core.outbound.delays.names
            assert names.prefix == DelayNames(user).prefix != DelayNames(admin).prefix
            await client.core.publish("", "shop", b"order 1", delay=0.2)
            forged = delay_key(0.2, "q", "admin-commands")
            # on its own levels: a routing key, or a CC, naming the forbidden queue
            await client.core.transport.publish(
                names.entry, forged, b"pay eve 1000000", Properties(delivery_mode=2),
                mandatory=True, timeout=10)
            await client.core.transport.publish(
                names.entry, delay_key(0.2, "q", "shop"), b"order 2 (cc)",
                Properties(delivery_mode=2, headers={"CC": [forged]}), mandatory=True,
                timeout=10)
            await asyncio.sleep(1.5)
            # binding the forbidden queue to its levels is refused ...
            with pytest.raises(postage.AccessRefused):
                await client.core.publish("", "admin-commands", b"drop tables", delay=0.2)
        async with AsyncClient(accounts.url(user, password, vhost)) as client:
            # ... and so is writing to the admin's levels
            with pytest.raises(postage.AccessRefused):
                await client.core.transport.publish(
                    DelayNames(admin).entry, forged, b"sudo", Properties(), mandatory=True,
                    timeout=10)
        await asyncio.sleep(0.5)
        assert await _ready(boss, "admin-commands") == 1  # the admin's own, only
        assert await _ready(boss, "shop") == 2
        assert await _ready(boss, names.unrouted) == 1  # the forged key: no route of its
        got = await boss.core.transport.get("admin-commands")
        assert got is not None and got.body == b"rotate keys"
        await got.ack()


def test_user_names_cannot_share_a_prefix() -> None:
    assert DelayNames("svc").prefix == "postage.delay.svc."
    assert DelayNames("svc.billing").prefix == "postage.delay.svc%2Ebilling."
    assert DelayNames("é *#").prefix == "postage.delay.%C3%A9%20%2A%23."
    assert not DelayNames("svc.billing").prefix.startswith(DelayNames("svc").prefix)
