"""The ```python blocks of docs/kiwipy.md run against the test broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docblocks import python_blocks, run_block

BLOCKS = python_blocks("kiwipy.md")
DOC_URL = "amqp://guest:guest@127.0.0.1/"


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 2
    assert all(DOC_URL in block for block in BLOCKS)


@pytest.mark.broker
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_kiwipy_doc_block_runs(index: int, tmp_path: Path, broker_url: str) -> None:
    result = run_block(BLOCKS[index].replace(DOC_URL, broker_url), tmp_path, f"block{index}")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = [line.split("# ")[-1].strip() for line in BLOCKS[index].splitlines()
                if "print(" in line and "# " in line]
    assert result.stdout.split() == expected
