"""Fault tests disturb the broker, so they get a node of their own (never the shared one)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, _own_node
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


@pytest.fixture(scope="session")
def figures_log() -> Iterator[list[Figures]]:
    """Collects each scenario's figures; written as JSON when POSTAGE_FAULT_REPORT is set."""
    rows: list[Figures] = []
    yield rows
    path = os.environ.get("POSTAGE_FAULT_REPORT")
    if path and rows:
        Path(path).write_text(json.dumps([r.as_dict() for r in rows], indent=2))
