"""Run every classic demo (seeds 000, 001, 003) as separate processes and check them.

Usage: ``POSTAGE_DEMO_URL=amqp://... python demos/run_all.py [scenario ...]`` (``scripts/demo``
starts a throwaway broker and does this). Receivers run as their own OS processes with
``POSTAGE_URL`` set from ``POSTAGE_DEMO_URL``; their output is shown prefixed by process
name. Each scenario runs the senders, checks that the outputs contain what the seeds say,
then stops the receivers with the default ``quit`` command. Everything is bounded by
timeouts; the exit status is non-zero when a check fails. The test suite calls the same
scenarios (``tests/classic/test_demos.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
READY = "consuming ["  # the processor's debug line once its consumers are running
STEP_TIMEOUT = 30.0
_print_lock = threading.Lock()


def show(label: str, line: str) -> None:
    with _print_lock:
        print(f"[{label}] {line}", flush=True)


class Failure(AssertionError):
    """A demo did not print what the seed says."""


class Proc:
    """A demo program in its own process, its output collected and shown line by line."""

    def __init__(self, label: str, demo: str, *args: str, url: str, debug: bool = False,
                 quiet: bool = False) -> None:
        env = dict(os.environ, POSTAGE_URL=url, PYTHONUNBUFFERED="1")
        env.pop("POSTAGE_DEBUG_MODE", None)
        if debug:
            env["POSTAGE_DEBUG_MODE"] = "true"
        script = HERE / demo
        self.label = label
        self.quiet = quiet
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            [sys.executable, script.name, *args], cwd=script.parent, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.popen.pid
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out, False),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err, True),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str], is_err: bool) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.rstrip("\n")
            with self._changed:
                lines.append(line)
                self._changed.notify_all()
            if not self.quiet and not (is_err and line.startswith("postage.")):
                show(self.label + ("!" if is_err else ""), line)

    def count(self, text: str, stream: str = "out") -> int:
        lines = self.out if stream == "out" else self.err
        with self._changed:
            return sum(text in line for line in lines)

    def wait_for(self, text: str, n: int = 1, stream: str = "out",
                 timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count(text, stream) < n:
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._changed.wait(0.2)):
                    raise Failure(f"{self.label}: waited for {n} x {text!r} in std{stream}; "
                                  f"got {self.count(text, stream)}")
                self._changed.wait(min(left, 0.5))

    def ready(self, n: int = 1) -> Proc:
        self.wait_for(READY, n, stream="err")
        return self

    def finish(self, timeout: float = STEP_TIMEOUT) -> int:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure(f"{self.label} did not exit within {timeout:g} s") from None
        self._close()
        return rc

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._close()


def run(label: str, demo: str, *args: str, url: str) -> Proc:
    """Run a sender to completion; it must exit with status 0."""
    proc = Proc(label, demo, *args, url=url)
    rc = proc.finish()
    if rc != 0:
        raise Failure(f"{label} exited with status {rc}: {proc.err[-5:]}")
    return proc


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failure(what)


def send_command(url: str, exchange_name: str, key: str, command: str) -> None:
    """Send a bare command (``quit``, ``restart``) as any classic program would."""
    os.environ["POSTAGE_URL"] = url
    from postage import messaging

    exchange = type("DemoExchange", (messaging.Exchange,), {"name": exchange_name})
    producer = messaging.GenericProducer(messaging.Fingerprint("run_all").as_dict())
    producer.forward(messaging.MessageCommand(command).body, _eks=[(exchange, key)])


def stop_all(procs: list[Proc], url: str, exchange: str, key: str) -> None:
    send_command(url, exchange, key, "quit")
    for proc in procs:
        rc = proc.finish()
        expect(rc == 0, f"{proc.label} exited with status {rc} after quit")


# ---------------------------------------------------------------------------------------
# scenarios: each raises Failure


def basic_echo(url: str) -> None:
    """Seed 001 'A basic echo server', then restart and quit through the default handlers."""
    receiver = Proc("echo_receive", "basic_echo/echo_receive.py", url=url, debug=True)
    try:
        receiver.ready()
        run("echo_send", "basic_echo/echo_send.py", url=url)
        receiver.wait_for("A test message")
        send_command(url, "echo-exchange", "echo-rk", "restart")
        receiver.ready(2)  # a new run of the same program, consuming again
        expect(receiver.count("global_vhost set to", "err") == 2, "restart: no second start")
        run("echo_send", "basic_echo/echo_send.py", url=url)
        receiver.wait_for("A test message", 2)
        stop_all([receiver], url, "echo-exchange", "echo-rk")
    finally:
        receiver.kill()


def advanced_echo(url: str) -> None:
    """Seed 001 'An advanced echo server': round robin on a shared queue, fanout to private."""
    receivers = [Proc(f"echo_receive{i}", "advanced_echo/echo_receive.py", url=url, debug=True)
                 for i in (1, 2)]
    try:
        for receiver in receivers:
            receiver.ready()
        for _ in range(2):
            run("echo_send", "advanced_echo/echo_send.py", url=url)
        for receiver in receivers:
            receiver.wait_for("A fanout test message", 2)
        single = [r.count("A single test message") for r in receivers]
        expect(single == [1, 1], f"round robin: the two receivers got {single} single messages")
        for receiver in receivers:
            receiver.wait_for("Message fingerprint: %s {'name': 'echo_send', "
                              "'type': 'application'", 3)
        stop_all(receivers, url, "echo-exchange", "echo-fanout-rk")
    finally:
        for receiver in receivers:
            receiver.kill()


def rpc_echo(url: str) -> None:
    """Seed 001 'An RPC echo server'."""
    receiver = Proc("echo_receive", "rpc_echo/echo_receive.py", url=url, debug=True)
    try:
        receiver.ready()
        sender = run("echo_send", "rpc_echo/echo_send.py", url=url)
        expect(sender.out == ["RPC message received"], f"rpc answer: {sender.out}")
        receiver.wait_for("RPC test message")
        stop_all([receiver], url, "echo-exchange", "echo-rk")
    finally:
        receiver.kill()


def ping(url: str) -> None:
    """Seed 000: the full ping example (commands, parameters, RPC, all kinds of handlers)."""
    receiver = Proc("receive_ping", "ping/receive_ping.py", url=url, debug=True)
    try:
        receiver.ready()
        sender = run("send_ping", "ping/send_ping.py", url=url)
        expect(sender.out == ["Answer: Pong"], f"send_ping printed {sender.out}")
        for line in (
            "Got a ping!",
            f"Got a ping from ping_sender running on {socket.gethostname()} with pid "
            f"{sender.pid}",
            "Got a ping - processed by <class '__main__.PingReceiver.MsgPing'> "
            "hosted by <class '__main__.PingReceiver'>",
            "Got a timed ping! Time is ",
            "Got a custom ping! The custom value is ['Just ping me', 1]",
            "Got a ping! Answering...",
        ):
            receiver.wait_for(line)
        stop_all([receiver], url, "ping-exchange", "ping_rk")
    finally:
        receiver.kill()


def _routing_and_groups(hello: Callable[..., None], producer: Any, a: Proc, b: Proc,
                        host: str, url: str) -> None:
    """The GenericApplication checks: every key form, ping, runtime join and leave, quit."""
    both = one_each = [1, 1]
    only_a, only_b, just_one = [1, 0], [0, 1], None
    hello("demoapp", both)
    hello("demoapp/rr", just_one)
    hello("demoapp/rr", one_each, times=2)
    hello(f"@{host}", both)
    hello(f"demoapp@{host}", both)
    hello(f"demoapp@{host}/rr", just_one)
    hello(f"{a.pid}@{host}", only_a)
    hello(f"{b.pid}@{host}", only_b)
    hello("demoapp#g1", only_a)
    hello("demoapp#g1/rr", [2, 0], times=2)
    sender = run("send", "generic_application/send.py", f"{b.pid}@{host}", "ping", url=url)
    expect(sender.out == [f"ping answered by demoapp pid {b.pid} on {host}"],
           f"ping: {sender.out}")
    run("send", "generic_application/send.py", f"{b.pid}@{host}", "join", "g1", url=url)
    b.wait_for(READY, 1, stream="err")
    hello("demoapp", both)  # the join command was handled before this
    hello("demoapp#g1", both)
    hello("demoapp#g1/rr", one_each, times=2)
    producer.message_leave_group("g1", _key=f"{b.pid}@{host}")
    hello("demoapp", both)
    hello("demoapp#g1", only_a)
    hello("demoapp#g1/rr", [2, 0], times=2)
    producer.message_quit(_key="demoapp")
    for app in (a, b):
        expect(app.finish() == 0, f"{app.label} did not quit cleanly")
        app.wait_for("quit")


def generic_application(url: str) -> None:
    """Seed 003 GenericApplication: two instances of one name, one in group g1."""
    os.environ["POSTAGE_URL"] = url
    from postage import generic_application as ga

    host = socket.gethostname()
    a = Proc("app_a", "generic_application/app.py", "demoapp", "g1", url=url, debug=True)
    b = Proc("app_b", "generic_application/app.py", "demoapp", url=url, debug=True)
    apps = [a, b]
    producer = ga.GenericApplicationProducer()
    serial = iter(range(1000))

    def hello(key: str, expected: list[int] | None, times: int = 1) -> None:
        """Send ``times`` hellos to ``key``; [a, b] counts must be ``expected``
        (None: exactly one of the two apps got it)."""
        tag = f"#{next(serial)} {key}"
        for _ in range(times):
            producer.message_hello(tag, _key=key)
        barrier = f"#{next(serial)} barrier"
        producer.message_hello(barrier, _key="demoapp")
        for app in apps:
            app.wait_for(f"got hello: {barrier}")
        # The barrier travels on another queue than some keys, so it may be handled first:
        # give the tagged messages a bounded moment to land.
        deadline = time.monotonic() + 5
        while True:
            counts = [app.count(f"got hello: {tag}") for app in apps]
            ok = sorted(counts) == [0, 1] if expected is None else counts == expected
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        expect(ok, f"key {key!r} x{times} reached [a, b] = {counts}")

    try:
        for app in apps:
            app.ready()
        _routing_and_groups(hello, producer, a, b, host, url)
    finally:
        for app in apps:
            app.kill()


SCENARIOS: dict[str, Callable[[str], None]] = {
    "basic_echo": basic_echo,
    "advanced_echo": advanced_echo,
    "rpc_echo": rpc_echo,
    "ping": ping,
    "generic_application": generic_application,
}


def main(argv: list[str]) -> int:
    url = os.environ.get("POSTAGE_DEMO_URL") or os.environ.get("POSTAGE_URL")
    if not url:
        print("run_all: set POSTAGE_DEMO_URL to the broker URL", file=sys.stderr)
        return 2
    names = argv or list(SCENARIOS)
    failures = 0
    for name in names:
        show("run_all", f"=== {name}: {SCENARIOS[name].__doc__}")
        started = time.monotonic()
        try:
            SCENARIOS[name](url)
        except Failure as exc:
            failures += 1
            show("run_all", f"FAILED {name}: {exc}")
        else:
            show("run_all", f"ok {name} ({time.monotonic() - started:.1f} s)")
    show("run_all", f"{len(names) - failures} of {len(names)} demos passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
