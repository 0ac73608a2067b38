"""The ```python blocks of a docs page, each run in a process of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    """The code of each ```python block of ``docs/<page>``, in order."""
    text = (DOCS / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_block(code: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script (without ``POSTAGE_URL``); its exit status and output."""
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "POSTAGE_URL"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
