"""Every ```python block of docs/communicator.md runs (in its own process, against the test
broker: the literal ``amqp://localhost`` is replaced by the broker's URL)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Names

DOC = Path(__file__).resolve().parents[2] / "docs" / "communicator.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
DOC_QUEUES = ("docs.thumbnails", "docs.aio-tasks", "docs.flaky", "docs.bulk", "docs.resize")


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.fixture
def doc_names(names: Names) -> Iterator[Names]:
    names.queues.extend(DOC_QUEUES)
    yield names


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index: int, broker_url: str, doc_names: Names, tmp_path: Path) -> None:
    code = BLOCKS[index].replace('"amqp://localhost"', repr(broker_url))
    script = tmp_path / f"block{index}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "POSTAGE_URL"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
