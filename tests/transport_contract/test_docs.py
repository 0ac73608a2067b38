"""Every ```python block of docs/testing.md runs: test modules with pytest (so with the
plugin, as a user's project would), scripts with python; none needs RabbitMQ."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
SCRIPT_OUTPUT = ["b'4'", "unroutable, as on RabbitMQ"]
# the pytest.ini the page tells users to write (nothing added: the page is what runs)
[PYTEST_INI] = re.findall(r"```ini\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_page_has_a_script_and_a_test_module() -> None:
    assert ["def test_" in b for b in BLOCKS] == [False, True]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    env = {k: v for k, v in os.environ.items() if k != "POSTAGE_URL"}
    if "def test_" in code:
        (tmp_path / "test_example.py").write_text(code, encoding="utf-8")
        (tmp_path / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    else:
        (tmp_path / "example.py").write_text(code, encoding="utf-8")
        command = [sys.executable, "example.py"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "def test_" in code:
        assert f"{code.count('def test_')} passed" in proc.stdout
    else:
        assert proc.stdout.splitlines() == SCRIPT_OUTPUT
