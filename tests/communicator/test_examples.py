"""The seed 004 examples (docs/examples/communicator/) run as separate processes.

Each file is the kiwiPy example with ``import postage as kiwipy`` as the only change; each
also runs with ``import postage.kiwipy as kiwipy`` (the drop-in, kiwiPy's wire format). The
examples hard-code ``amqp://localhost``; the test broker may listen elsewhere, and other
engineers share it, so the runner copies each file, replacing the literal URL with the
test broker's and the fixed names (``task_queue``, ``rpc_queue``) with unique ones. Nothing
else is touched, and the test checks the copies differ from the originals only there.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Names, pika_read

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "communicator"


class Example:
    """A running example process whose output lines can be awaited."""

    def __init__(self, path: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("POSTAGE_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at the end of the output
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Wait for an output line containing ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.01, remaining))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError(f"process ended before {text!r}: {self.lines}")
            if line:
                self.lines.append(line)
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s: {self.lines}")

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for the process to end by itself; its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        self._drain()
        return code

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl+C, as a user would; the ``with`` block closes the communicator."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


def assert_interrupted(example: Example) -> None:
    """Ctrl+C ends the example through KeyboardInterrupt only (the ``with`` block closes
    the communicator on the way out) and nothing else goes wrong."""
    code = example.interrupt()
    assert any("KeyboardInterrupt" in line for line in example.lines), example.lines
    assert code in (1, -signal.SIGINT, 128 + signal.SIGINT), (code, example.lines)
    errors = [line for line in example.lines
              if "Error" in line or "Exception" in line or "WARNING" in line]
    assert not errors, example.lines


@pytest.fixture(params=["postage", "postage.kiwipy"])
def flavour(request: pytest.FixtureRequest) -> str:
    """The module imported as ``kiwipy``."""
    return str(request.param)


@pytest.fixture
def examples(tmp_path: Path, broker_url: str, names: Names, flavour: str
             ) -> Iterator[dict[str, Path]]:
    """Copies of the examples: URL and fixed names replaced (and the import, for the
    drop-in), nothing else."""
    uid = uuid.uuid4().hex[:10]
    task_queue = f"test.comm.example.{uid}"
    names.queues.extend([task_queue, f"test.comm.example-default.{uid}"])
    replacements = {
        "'amqp://localhost'": repr(broker_url),
        "'task_queue'": repr(task_queue),
        "'rpc_queue'": repr(f"test.comm.example-rpc.{uid}"),
    }
    copies = {}
    for source in sorted(EXAMPLES.glob("*.py")):
        text = source.read_text()
        assert "import postage as kiwipy\n" in text
        assert "'amqp://localhost'" in text
        for old, new in replacements.items():
            text = text.replace(old, new)
        text = text.replace("import postage as kiwipy\n", f"import {flavour} as kiwipy\n")
        if source.name == "new_task_default_queue.py":  # isolate the default task queue
            text = text.replace(repr(broker_url),
                                f"{broker_url!r}, task_queue='test.comm.example-default.{uid}'")
        target = tmp_path / source.name
        target.write_text(text)
        copies[source.stem] = target
    yield copies


def test_examples_differ_from_kiwipy_only_in_the_import() -> None:
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert "kiwipy" not in text.replace("import postage as kiwipy", "").replace(
            "kiwipy.", ""), path
        assert text.count("import postage as kiwipy") == 1


def test_work_queue_example(examples: dict[str, Path], broker_url: str) -> None:
    worker = Example(examples["worker"])
    try:
        worker.expect("[*] Waiting for messages")
        sender = Example(examples["new_task"], "A", "task.")
        assert sender.expect("[x] Sent") == " [x] Sent 'A task.'"
        assert sender.finish() == 0
        assert worker.expect("[x] Received") == " [x] Received 'A task.'"
        worker.expect("[x] Done")
        assert_interrupted(worker)
    finally:
        worker.kill()


def test_default_task_queue_example(examples: dict[str, Path], broker_url: str,
                                    flavour: str) -> None:
    sender = Example(examples["new_task_default_queue"], "to", "the", "default")
    assert sender.expect("[x] Sent") == " [x] Sent 'to the default'"
    assert sender.finish() == 0
    text = examples["new_task_default_queue"].read_text()
    default_queue = text.split("task_queue='")[1].split("'")[0]
    [(_props, body)] = pika_read(broker_url, default_queue, 1)
    if flavour == "postage":
        assert json.loads(body)["content"] == {"parameters": "to the default"}
    else:  # kiwiPy's (task, no_reply) in YAML
        assert body == b"!!python/tuple\n- to the default\n- false\n"


def test_topics_example(examples: dict[str, Path]) -> None:
    uid = uuid.uuid4().hex[:8]
    receiver = Example(examples["receive_logs_topic"], f"kern{uid}.*", f"*.critical{uid}")
    try:
        receiver.expect("[*] Waiting for logs")
        for subject, message in [
            (f"kern{uid}.info", "kernel info"),
            (f"app{uid}.warning", "not for us"),
            (f"app.critical{uid}", "app critical"),
        ]:
            emitter = Example(examples["emit_log_topic"], subject, message)
            assert emitter.expect("[x] Sent") == f" [x] Sent {subject!r}:{message!r}"
            assert emitter.finish() == 0
        assert receiver.expect("kernel info") == f" [x] 'kern{uid}.info':'kernel info'"
        assert receiver.expect("app critical") == f" [x] 'app.critical{uid}':'app critical'"
        assert_interrupted(receiver)
        assert not any("not for us" in line for line in receiver.lines)
    finally:
        receiver.kill()


def test_topics_example_usage_error(examples: dict[str, Path]) -> None:
    receiver = Example(examples["receive_logs_topic"])
    receiver.expect("Usage:")
    assert receiver.finish() == 1


def test_rpc_example(examples: dict[str, Path]) -> None:
    server = Example(examples["rpc_server"])
    try:
        server.expect("[x] Awaiting RPC requests")
        client = Example(examples["rpc_client"])
        client.expect("[x] Requesting fib(30)")
        assert client.expect("[.] Got", timeout=60) == " [.] Got 832040"
        assert client.finish() == 0
        server.expect("[.] fib(30)")
        assert_interrupted(server)
    finally:
        server.kill()
