"""Authentication and permissions on users and virtual hosts made for the test: each refusal
is a specific Postage error with a one-line message."""

from __future__ import annotations

import uuid

import pytest

import postage
from postage import AsyncClient
from postage._core.core import open_core

from .conftest import Accounts


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


async def test_wrong_password(accounts: Accounts) -> None:
    user, _ = accounts.user()
    with pytest.raises(postage.AuthenticationError) as info:
        await open_core(accounts.url(user, "not-the-password"))
    message = _one_line(info.value)
    assert user in message and "password" in message


async def test_unknown_user(accounts: Accounts) -> None:
    with pytest.raises(postage.AuthenticationError):
        await open_core(accounts.url(f"nobody-{uuid.uuid4().hex[:6]}", "x"))


async def test_unknown_vhost(accounts: Accounts) -> None:
    user, password = accounts.user()
    missing = f"no-such-vhost-{uuid.uuid4().hex[:6]}"
    with pytest.raises(postage.VhostNotFound) as info:
        await open_core(accounts.url(user, password, missing))
    assert missing in _one_line(info.value)


async def test_restricted_user_cannot_open_another_vhost(accounts: Accounts) -> None:
    mine, theirs = accounts.vhost(), accounts.vhost()
    owner, owner_pw = accounts.user()
    accounts.permit(owner, theirs, ".*", ".*", ".*")
    user, password = accounts.user()
    accounts.permit(user, mine, ".*", ".*", ".*")
    # the owner keeps a queue with a message in the other vhost
    async with AsyncClient(accounts.url(owner, owner_pw, theirs)) as owner_client:
        await owner_client.core.declare_queue("secrets", durable=True)
        await owner_client.publish("", "secrets", b"top secret")
        # the restricted user may use its own vhost ...
        async with AsyncClient(accounts.url(user, password, mine)) as client:
            await client.core.declare_queue("mine", auto_delete=True)
        # ... but cannot open the other one at all
        with pytest.raises(postage.VhostNotFound) as info:
            await open_core(accounts.url(user, password, theirs))
        assert theirs in _one_line(info.value)
        assert await owner_client.core.transport.queue_state("secrets") == (1, 0)


async def test_no_permission_on_exchange_or_queue(accounts: Accounts) -> None:
    vhost = accounts.vhost()
    admin, admin_pw = accounts.user()
    accounts.permit(admin, vhost, ".*", ".*", ".*")
    user, password = accounts.user()
    # may configure/write/read only names starting with "open." (and write to the default
    # exchange, through which RPC replies travel)
    accounts.permit(user, vhost, "^open\\..*", "^(open\\..*|amq\\.default)$", "^open\\..*")
    async with AsyncClient(accounts.url(admin, admin_pw, vhost)) as admin_client:
        await admin_client.core.declare_exchange("closed.x", "topic")
        await admin_client.core.declare_queue("closed.q")
        await admin_client.publish("", "closed.q", b"private")
        async with AsyncClient(accounts.url(user, password, vhost)) as client:
            with pytest.raises(postage.AccessRefused) as info:
                await client.core.declare_exchange("closed.mine", "topic")
            assert "closed.mine" in _one_line(info.value)
            with pytest.raises(postage.AccessRefused):
                await client.publish("closed.x", "k", b"x")

            async def handler(body: bytes) -> None:
                raise AssertionError("must never be called")

            with pytest.raises(postage.AccessRefused) as info:
                await client.core.subscribe("closed.q", lambda d: handler(d.body))
            _one_line(info.value)
            # what it may do still works after the refusals (channels were reopened)
            got: list[bytes] = []

            async def mine(body: bytes) -> bytes:
                got.append(body)
                return body

            await client.receive("open.x", "k", "open.q", mine)
            assert await client.rpc("open.x", "k", b"allowed", timeout=5) == b"allowed"
        assert await admin_client.core.transport.queue_state("closed.q") == (1, 0)
    assert isinstance(info.value, PermissionError)
