"""Fixtures of the CLI tests: a private vhost per test, components in other processes,
and the ``postage`` command run as a subprocess against them."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from ..conftest import Broker

COMPONENT = Path(__file__).with_name("component.py")
HOST = socket.gethostname()


def url_with_vhost(url: str, vhost: str) -> str:
    return urlsplit(url)._replace(path="/" + quote(vhost, safe="")).geturl()


@pytest.fixture(scope="session")
def vhost_url(broker: Broker) -> Iterator[str]:
    """A private virtual host for the CLI tests (rabbitmqctl takes seconds per call, so one
    per session). Each test kills its components at the end (their auto-delete queues go
    with their connections), so ``@host`` and presence reach only the running test's ones;
    names are unique per test anyway."""
    vhost = f"postage-cli-{uuid.uuid4().hex[:8]}"
    broker.ctl("add_vhost", vhost)
    user = urlsplit(broker.url).username or "guest"
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield url_with_vhost(broker.url, vhost)
    finally:
        broker.ctl("delete_vhost", vhost)


def cli_env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTAGE_")}
    if url is not None:
        env["POSTAGE_URL"] = url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def rows(self) -> list[list[str]]:
        """The rows of a ``ping`` table (without the header)."""
        lines = self.stdout.splitlines()
        return [line.split() for line in lines[1:] if line.strip()]

    def pids(self) -> set[int]:
        return {int(row[2]) for row in self.rows()}


def run_cli(url: str | None, *args: str, timeout: float = 60) -> Result:
    proc = subprocess.run([sys.executable, "-m", "postage", *args], env=cli_env(url),
                          capture_output=True, text=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[str]
    pid: int
    boot: str
    lines: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.pid}@{HOST}"

    def wait_line(self, prefix: str, timeout: float = 30) -> str:
        """The next stdout line starting with ``prefix`` (AssertionError at the deadline)."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.name}: no {prefix!r} line; got {self.lines}"
                if not selector.select(left):
                    continue
                line = stdout.readline()
                assert line, f"{self.name}: exited before {prefix!r}; got {self.lines}"
                self.lines.append(line.rstrip("\n"))
                if line.startswith(prefix):
                    return line.rstrip("\n")


class Components:
    def __init__(self, url: str) -> None:
        self.url = url
        self.started: list[Component] = []
        self.spawned: list[int] = []

    def start(self, name: str, *groups: str, restart_mode: str = "exec",
              instrument: bool = False) -> Component:
        env = {**cli_env(self.url), "COMPONENT_RESTART_MODE": restart_mode}
        if instrument:
            env["COMPONENT_INSTRUMENT"] = "1"
        process = subprocess.Popen(
            [sys.executable, str(COMPONENT), name, *groups], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        component = Component(name, process, 0, "")
        self.started.append(component)
        _, pid, boot = component.wait_line("ready").split()
        component.pid, component.boot = int(pid), boot
        assert component.pid == process.pid
        return component

    def stop_all(self) -> None:
        for pid in self.spawned:  # components restarted in a new process
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for component in self.started:
            if component.process.poll() is None:
                component.process.kill()
            component.process.wait(10)
            if component.process.stdout is not None:
                component.process.stdout.close()


Names = Callable[[str], str]


@pytest.fixture
def names() -> Names:
    """``names("alpha")`` -> ``alpha-<suffix>``, unique to the test."""
    suffix = uuid.uuid4().hex[:6]
    return lambda base: f"{base}-{suffix}"


@pytest.fixture
def components(vhost_url: str) -> Iterator[Components]:
    started = Components(vhost_url)
    try:
        yield started
    finally:
        started.stop_all()


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Call ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.2)
