"""Every ```python block of docs/client.md runs, as its own process, against the broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Names, pika_cleanup

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
EXPECTED = [
    ["b'woof' b'wif'", "unroutable: message to exchange 'docs.animals' with routing key "
     "'cat.big' was returned by the broker: NO_ROUTE"],
    ["b'2cf24dba5fb0'"],
    ["[b'0', b'1', b'4', b'9', b'16']", "nobody listens to cube"],
]


def test_every_block_is_checked() -> None:
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_doc_example_runs(index: int, broker_url: str, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    env = {**os.environ, "POSTAGE_URL": broker_url}
    names = Names("client")
    names.queues += ["docs.dogs", "docs.sum", "docs.square"]
    names.exchanges += ["docs.animals", "docs.tools", "docs.math"]
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )
    finally:
        pika_cleanup(broker_url, names)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED[index]
