"""Every seed example (demos/) as separate processes against the broker: seeds 000, 001, 003.

Each scenario of ``demos/run_all.py`` starts the receivers as OS processes, runs the
senders, checks the printed lines against the seeds and stops the receivers with the
default ``quit`` command (``basic_echo`` also restarts its receiver with ``restart``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMOS = Path(__file__).resolve().parents[2] / "demos"


def _run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("postage_demos_run_all", DEMOS / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_all = _run_all()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(run_all.SCENARIOS))
def test_demo(scenario: str, env_url: str) -> None:
    run_all.SCENARIOS[scenario](env_url)


def test_run_all_fails_loudly_without_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTAGE_DEMO_URL", raising=False)
    monkeypatch.delenv("POSTAGE_URL", raising=False)
    assert run_all.main([]) == 2
