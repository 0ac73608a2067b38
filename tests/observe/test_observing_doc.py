"""Every ```python block of docs/observing.md runs, each in a process of its own (on the
in-memory broker; the first one only sets up tracing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docblocks import python_blocks, run_block

BLOCKS = python_blocks("observing.md")


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_observing_doc_block_runs(index: int, tmp_path: Path) -> None:
    result = run_block(BLOCKS[index], tmp_path, f"block{index}")
    assert result.returncode == 0, result.stdout + result.stderr
