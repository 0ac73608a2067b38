"""docs/classic.md: its ``file:`` blocks are written out and run; the ``output:`` blocks
must appear in the programs' output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "classic.md"
BLOCK = re.compile(r"<!-- (file|output): (\S+) -->\n```\w+\n(.*?)```", re.S)


def blocks(kind: str) -> dict[str, str]:
    return {name: text for k, name, text in BLOCK.findall(DOC.read_text()) if k == kind}


def test_doc_has_the_blocks() -> None:
    assert set(blocks("file")) == {"shared.py", "receive.py", "send.py"}
    assert set(blocks("output")) == {"send.py", "receive.py"}


@pytest.mark.slow
def test_doc_examples_run(env_url: str, tmp_path: Path) -> None:
    for name, text in blocks("file").items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, POSTAGE_URL=env_url, PYTHONUNBUFFERED="1",
               POSTAGE_DEBUG_MODE="true")
    receiver = subprocess.Popen([sys.executable, "receive.py"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.stderr is not None
        for line in receiver.stderr:  # wait until it consumes (or dies: EOF)
            if "consuming [" in line:
                break
        sender = subprocess.run([sys.executable, "send.py"], check=False, cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 0, err
    assert sender.stdout.splitlines() == blocks("output")["send.py"].splitlines()
    assert sorted(out.splitlines()) == sorted(blocks("output")["receive.py"].splitlines())
