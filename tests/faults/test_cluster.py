"""Cluster failover: kill -9 the node leading a quorum queue while 10,000 messages flow."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from postage._core.core import open_core
from postage._tooling.localbroker import LocalCluster
from tests.faults.scenario import Figures, stream_through_faults

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _leader(cluster: LocalCluster, queue: str) -> str:
    out = cluster.nodes[0].ctl("list_queues", "name", "leader", "--no-table-headers")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return parts[1]
    raise AssertionError(f"no leader listed for {queue}: {out!r}")


async def test_kill_quorum_leader_during_stream(
    cluster: LocalCluster, figures_log: list[Figures]
) -> None:
    queue = f"fault.quorum.{uuid.uuid4().hex[:8]}"
    setup = await open_core(cluster.urls[0])
    await setup.declare_queue(queue, quorum=True, delivery_limit=10)
    await setup.close(2)
    leader_name = await asyncio.to_thread(_leader, cluster, queue)
    leader = next(n for n in cluster.nodes if n.node_name == leader_name)
    # put the leader first so both clients start on the node that dies
    urls = [leader.url] + [n.url for n in cluster.nodes if n is not leader]
    pub = await open_core(urls, reconnect_delay=0.1, connect_timeout=3)
    con = await open_core(urls, reconnect_delay=0.1, connect_timeout=3)
    await pub.declare_queue(queue, quorum=True, delivery_limit=10)
    await con.declare_queue(queue, quorum=True, delivery_limit=10)
    assert pub.transport.url == leader.url

    async def kill_leader() -> None:
        os.kill(leader.pid, signal.SIGKILL)

    try:
        fig = await stream_through_faults(
            "kill -9 quorum leader (3-node cluster)", pub, con, queue, count=10_000,
            fault=kill_leader, fault_after=(2000,), deadline=90, concurrency=128,
        )
        survivor = pub.transport.url
    finally:
        await pub.close(2)
        await con.close(2)
    print("\n" + fig.line())
    figures_log.append(fig)
    assert survivor != leader.url
    assert fig.publish_errors == 0
    assert fig.confirmed == 10_000
    assert fig.lost == 0
    cleanup = await open_core([n.url for n in cluster.nodes if n is not leader])
    await cleanup.transport.delete_queue(queue)
    await cleanup.close(2)


@pytest.fixture(autouse=True)
def _heal(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    """Bring a killed node back, so the session's cluster is whole for the next test."""
    yield
    for node in cluster.nodes:
        if not node.is_running():
            node.start(timeout=90)
    assert len(cluster.running_nodes()) == len(cluster.nodes)
