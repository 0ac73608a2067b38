"""Shared test fixtures.

RabbitMQ (all session-scoped, started lazily by the first test that asks for them):

``broker``      a :class:`Broker` (``.url``, ``.node_name``, ``.ctl(*args)``, ``.node``). Reuses
                the node named by ``POSTAGE_TEST_URL`` + ``POSTAGE_TEST_NODE`` when both are set
                (``scripts/test`` sets them); otherwise starts a throwaway node on free ports
                and stops it at the end. A broker that cannot start is an error, never a skip.
``broker_url``  ``broker.url``.
``tls_broker``  a separate :class:`Broker` with a TLS listener (``.tls_url``, ``.ca_file``,
                ``.client_cert``, ``.client_key``); the server asks for a client certificate
                and verifies it when given, but does not require one.
``cluster``     a 3-node :class:`postage._tooling.localbroker.LocalCluster` (``.urls``, ``.nodes``).

``POSTAGE_TEST_RABBITMQ=4`` runs them all on RabbitMQ 4 (``postage broker start --rabbitmq 4``,
with RabbitMQ 4.3's defaults): the nodes the fixtures start, and the one they attach to.

Tests that use these fixtures are marked ``broker`` (and ``cluster``) automatically, so
``pytest -m "not broker"`` runs without RabbitMQ.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postage._tooling.localbroker import LocalCluster, LocalNode, find_free_ports
from postage._tooling.localbroker.runtime import Rootfs, runtime_for

_BROKER_FIXTURES = frozenset({"broker", "broker_url", "tls_broker", "cluster"})
_CLUSTER_FIXTURES = frozenset({"cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _BROKER_FIXTURES:
            item.add_marker(pytest.mark.broker)
        if names & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)


@dataclass
class Broker:
    """A running RabbitMQ node for tests."""

    node: LocalNode

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def node_name(self) -> str:
        return self.node.node_name

    @property
    def tls_url(self) -> str:
        url = self.node.tls_url
        assert url is not None, "this broker has no TLS listener"
        return url

    @property
    def ca_file(self) -> Path:
        return self.node.ca_file

    @property
    def client_cert(self) -> Path:
        return self.node.client_cert

    @property
    def client_key(self) -> Path:
        return self.node.client_key

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """``rabbitmqctl -q -n NODE ARGS...``: returns stdout, raises LocalBrokerError."""
        return self.node.ctl(*args, timeout=timeout)


RUNTIME = runtime_for(os.environ.get("POSTAGE_TEST_RABBITMQ"))
ON_RABBITMQ_4 = isinstance(RUNTIME, Rootfs)


def _scratch_dir(prefix: str) -> Path:
    # Not tmp_path: pytest's base directory is 0700, out of reach of the rabbitmq user.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)  # mkdtemp's 0700 would hide node subdirectories from it too
    return directory


def _own_node(prefix: str, *, tls: bool = False, listen: str = "127.0.0.1"
              ) -> tuple[LocalNode, Path]:
    ports = find_free_ports(3 if tls else 2)
    directory = _scratch_dir(prefix)
    node = LocalNode(
        directory,
        name=f"postage-test-{ports[0]}",
        amqp_port=ports[0],
        dist_port=ports[1],
        tls_port=ports[2] if tls else None,
        listen=listen,
        runtime=RUNTIME,
    )
    return node, directory


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    url = os.environ.get("POSTAGE_TEST_URL")
    node_name = os.environ.get("POSTAGE_TEST_NODE")
    if url and node_name:
        node = LocalNode.attach(node_name, url, RUNTIME)
        node.ctl("await_startup", "--timeout", "30", timeout=45)  # fails loudly if absent
        yield Broker(node)
        return
    node, directory = _own_node("postage-test-broker-")
    node.start()
    try:
        yield Broker(node)
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def broker_url(broker: Broker) -> str:
    return broker.url


@pytest.fixture(scope="session")
def tls_broker() -> Iterator[Broker]:
    # every interface: the server-name test reaches it as 127.0.0.2, an address that is
    # not in its certificate
    node, directory = _own_node("postage-test-tls-broker-", tls=True, listen="0.0.0.0")
    node.start()
    try:
        yield Broker(node)
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    ports = find_free_ports(6)
    amqp, dist = ports[:3], ports[3:]
    directory = _scratch_dir("postage-test-cluster-")
    nodes = [
        LocalNode(
            directory / f"node{i + 1}",
            name=f"postage-test-{amqp[i]}",
            amqp_port=amqp[i],
            dist_port=dist[i],
            runtime=RUNTIME,
        )
        for i in range(3)
    ]
    local_cluster = LocalCluster(directory, nodes=nodes)
    local_cluster.start()
    try:
        yield local_cluster
    finally:
        local_cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
