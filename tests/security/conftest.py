"""Fixtures for the security tests: users and virtual hosts made on the node and removed at
the end of the test."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pytest

from postage._tooling.localbroker import LocalBrokerError

from ..conftest import Broker


@dataclass
class Accounts:
    """Users and virtual hosts created with rabbitmqctl; deleted by the fixture."""

    broker: Broker
    users: list[str] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)

    def user(self, password: str | None = None) -> tuple[str, str]:
        name = f"test-user-{uuid.uuid4().hex[:8]}"
        password = password or f"pw-{secrets.token_hex(12)}"
        self.broker.ctl("add_user", name, password)
        self.users.append(name)
        return name, password

    def vhost(self) -> str:
        name = f"test-vhost-{uuid.uuid4().hex[:8]}"
        self.broker.ctl("add_vhost", name)
        self.vhosts.append(name)
        return name

    def permit(self, user: str, vhost: str, configure: str, write: str, read: str) -> None:
        self.broker.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def url(self, user: str, password: str, vhost: str = "/") -> str:
        sp = urlsplit(self.broker.url)
        host = sp.netloc.rpartition("@")[2]
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{credentials}@{host}/{quote(vhost, safe='')}"


@pytest.fixture
def accounts(broker: Broker) -> Iterator[Accounts]:
    acc = Accounts(broker)
    yield acc
    for user in acc.users:
        with contextlib.suppress(LocalBrokerError):
            broker.ctl("delete_user", user)
    for vhost in acc.vhosts:
        with contextlib.suppress(LocalBrokerError):
            broker.ctl("delete_vhost", vhost)
