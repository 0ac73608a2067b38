"""Fault tests disturb the broker, so they get a node of their own (never the shared one)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, _own_node
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import Figures


@pytest.fixture(scope="session")
def fault_broker() -> Iterator[Broker]:
    node, directory = _own_node("postage-fault-broker-")
    node.start()
    try:
        yield Broker(node)
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def proxy(fault_broker: Broker) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the fault broker, which can cut every connection."""
    p = TcpProxy.for_url(fault_broker.url)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="session")
def figures_log() -> Iterator[list[Figures]]:
    """Collects each scenario's figures; written as JSON when POSTAGE_FAULT_REPORT is set."""
    rows: list[Figures] = []
    yield rows
    path = os.environ.get("POSTAGE_FAULT_REPORT")
    if path and rows:
        Path(path).write_text(json.dumps([r.as_dict() for r in rows], indent=2))
