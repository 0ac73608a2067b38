"""The examples of docs/reliability.md run (against the fault tests' own broker)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from postage._core.core import open_core
from tests.conftest import Broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("number", range(len(BLOCKS)))
async def test_reliability_example_runs(fault_broker: Broker, number: int) -> None:
    code = compile(BLOCKS[number], f"{DOC.name}[{number}]", "exec")
    namespace = {"URL": fault_broker.url, "__name__": "reliability_doc"}
    try:
        await asyncio.to_thread(exec, code, namespace)
    finally:
        core = await open_core(fault_broker.url)
        await core.transport.delete_queue("reliability-doc-quorum")
        await core.transport.delete_queue("reliability-doc-quorum.dlq")
        await core.close(2)
