"""Ctrl-C in a blocking communicator program whose subscriber is still running: the close
says what it waits for, a second Ctrl-C stops at once, and the program prints one short
traceback (the first KeyboardInterrupt's), not a chain through the close."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.names import Names

PROGRAM = textwrap.dedent("""\
    import signal, sys, time
    import postage
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    def slow(_comm, task):
        print("handler started", flush=True)
        time.sleep(120)
    with postage.connect(sys.argv[1], task_queue=sys.argv[2]) as comm:
        comm.add_task_subscriber(slow)
        comm.task_send("job", no_reply=True)
        if sys.argv[3] == "with":
            time.sleep(120)
        else:
            print("served until", comm.run_until_signal(), flush=True)
    print("exited", flush=True)
    """)


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path.read_text()!r}")


@pytest.mark.parametrize("how", ["with", "run_until_signal"])
def test_a_second_ctrl_c_stops_at_once(broker_url: str, names: Names, tmp_path: Path,
                                       how: str) -> None:
    queue = names.queue()
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", PROGRAM, broker_url, queue, how], stdout=stdout,
            stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(out, "handler started")
        process.send_signal(signal.SIGINT)
        said = _wait_for(err, "press Ctrl-C again")
        assert "waiting up to 30 s for 1 running subscriber to finish" in said
        time.sleep(0.5)
        assert process.poll() is None  # still waiting for the handler, as it said
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = process.wait(timeout=15)
        assert time.monotonic() - started < 5  # at once, not after the 30 s
    finally:
        process.kill()
        process.wait()
    errors = err.read_text()
    assert "closing now, without waiting for running subscribers" in errors
    assert "During handling" not in errors, errors
    if how == "with":  # the first Ctrl-C's own traceback, ending at the user's line
        assert code != 0 and errors.count("Traceback") == 1, errors
        assert errors.rstrip().endswith("KeyboardInterrupt"), errors
    else:  # run_until_signal returns the signal and the program goes on
        assert code == 0 and "Traceback" not in errors, errors
        assert "served until 2" in out.read_text() and "exited" in out.read_text()
