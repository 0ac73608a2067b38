"""What messages and peers say cannot take over the operator's terminal or the monitor:
control characters are escaped in every human-readable output, rich markup is not
interpreted, and a peer name no queue can have is skipped."""

from __future__ import annotations

import time
from typing import Any

from postage._api.presence import ComponentState
from postage._tooling.cli.common import format_table, printable
from postage._tooling.cli.monitor import component_queues

HOSTILE = "ok\x1b[2J\x07\nforged line\r\x9b"


def test_printable_escapes_control_characters() -> None:
    shown = printable(HOSTILE)
    assert shown == "ok\\x1b[2J\\x07\\nforged line\\r\\x9b"
    assert shown.isprintable()
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_tables_escape_their_cells() -> None:
    table = format_table(["NAME", "HOST"], [[HOSTILE, "h"]])
    assert len(table.splitlines()) == 2  # no forged line
    assert "\x1b" not in table and "\x07" not in table


def _state(name: Any, groups: Any = None) -> ComponentState:
    now = time.monotonic()
    return ComponentState({"name": name, "host": "h", "pid": 1}, "online", now, now, 10.0,
                          {"groups": groups or []})


def test_monitor_skips_queue_names_a_peer_cannot_have() -> None:
    states = [_state("good"), _state("x" * 300), _state("bad\nname"), _state("g", ["a\x1b"])]
    names = component_queues(states)
    assert "good" in names and "good@h" in names and "1@h" in names
    assert all(len(n) <= 255 and n.isprintable() for n in names)
    assert "g#a\x1b" not in names
