"""Every ```python block of docs/failures.md runs, each in a process of its own (they use
the in-memory broker and its manual clock, so they need no RabbitMQ)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docblocks import python_blocks, run_block

BLOCKS = python_blocks("failures.md")


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_failures_doc_block_runs(index: int, tmp_path: Path) -> None:
    result = run_block(BLOCKS[index], tmp_path, f"block{index}")
    assert result.returncode == 0, result.stdout + result.stderr
