"""docs/cli.md: the session's commands are valid command lines of today's parser, and
its output has the shapes the CLI tests check (the live run is tests/cli/test_cli.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from postage._tooling.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_session_commands_parse() -> None:
    text = DOC.read_text()
    session = re.search(r"<!-- session -->\n```console\n(.*?)```", text, re.S)
    assert session is not None
    commands = [line[2:] for line in session.group(1).splitlines() if line.startswith("$ ")]
    assert len(commands) >= 15
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "postage"
        args = build_parser().parse_args(argv[1:])
        assert getattr(args, "handler", None) is not None, command
        seen.add(next(a for a in argv[1:] if not a.startswith("-") and "://" not in a))
    assert {"ping", "call", "send", "quit", "restart", "join-group", "leave-group",
            "monitor"} <= seen
    assert "guest:guest@127.0.0.1:5672/shop" not in session.group(1).replace(
        "POSTAGE_URL", "")
