"""The ``postage`` command line, run as a subprocess against components in other processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from postage._core.core import open_core

from .conftest import HOST, Components, Names, run_cli, wait_until


def test_ping_lists_exactly_the_live_instances_for_each_kind_of_key(
        vhost_url: str, components: Components, names: Names) -> None:
    alpha, beta, gamma = names("alpha"), names("beta"), names("gamma")
    a1 = components.start(alpha, "g1")
    a2 = components.start(alpha)
    b1 = components.start(beta, "g1")
    everyone = {a1.pid, a2.pid, b1.pid}
    expectations = {
        alpha: {a1.pid, a2.pid},
        beta: {b1.pid},
        f"@{HOST}": everyone,
        f"{alpha}@{HOST}": {a1.pid, a2.pid},
        a2.key: {a2.pid},
        f"{alpha}#g1": {a1.pid},
        f"{beta}#g1": {b1.pid},
    }
    for target, pids in expectations.items():
        result = run_cli(vhost_url, "ping", target)
        assert result.returncode == 0, (target, result)
        assert result.pids() == pids, (target, result.stdout)
    # no target: every component announcing its presence
    result = wait_until(lambda: (r := run_cli(vhost_url, "ping")).pids() == everyone and r,
                        what="presence ping")
    header = result.stdout.splitlines()[0].split()
    assert header == ["NAME", "TYPE", "PID", "HOST", "USER", "VHOST", "RTT_MS"]
    row = next(r for r in result.rows() if int(r[2]) == b1.pid)
    assert row[0] == beta and row[1] == "test-component" and row[3] == HOST
    assert float(row[6]) < 1000
    # nobody there: exit status 1, one line on stderr
    result = run_cli(vhost_url, "ping", gamma)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"postage: nobody answered {gamma!r} within 1 s"]


def test_call_prints_the_result_or_the_remote_error(
        vhost_url: str, components: Components, names: Names) -> None:
    calc = names("calc")
    components.start(calc)
    result = run_cli(vhost_url, "call", f"{calc}/rr", "add", "--param", "a=20", "--param", "b=22")
    assert (result.returncode, result.stdout) == (0, "42\n"), result
    result = run_cli(vhost_url, "call", f"{calc}/rr", "add", "--json", '{"a": "x", "b": "y"}')
    assert json.loads(result.stdout) == "xy"
    result = run_cli(vhost_url, "call", f"{calc}/rr", "fail")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "remote error: ValueError: failing on purpose\n"
    # no handler answers: a timeout; nobody receives the key: an error; both exit 2
    result = run_cli(vhost_url, "call", f"{calc}/rr", "unknown", "--timeout", "0.5")
    assert result.returncode == 2
    assert result.stderr.startswith("postage: error: no reply from ")
    result = run_cli(vhost_url, "call", names("nobody"), "add")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f"nobody receives key {names('nobody')!r}" in result.stderr
    result = run_cli(vhost_url, "call", calc, "add", "--param", "oops")
    assert result.returncode == 2 and "--param wants KEY=VALUE" in result.stderr


def test_join_and_leave_group_and_send(
        vhost_url: str, components: Components, names: Names) -> None:
    grp = names("grp")
    c1 = components.start(grp)
    c2 = components.start(grp)
    assert run_cli(vhost_url, "ping", f"{grp}#night").returncode == 1
    result = run_cli(vhost_url, "join-group", c1.key, "night")
    assert (result.returncode, result.stdout) == (0, f"sent join_group night to {c1.key}\n")
    wait_until(lambda: run_cli(vhost_url, "ping", f"{grp}#night").pids() == {c1.pid})
    # 'send' is the general form of the same command
    assert run_cli(vhost_url, "send", c2.key, "join_group", "--param",
                   "group_name=night").returncode == 0
    wait_until(lambda: run_cli(vhost_url, "ping", f"{grp}#night").pids() == {c1.pid, c2.pid})
    assert run_cli(vhost_url, "leave-group", f"{grp}#night", "night").returncode == 0
    wait_until(lambda: run_cli(vhost_url, "ping", f"{grp}#night").returncode == 1)
    assert run_cli(vhost_url, "ping", grp).pids() == {c1.pid, c2.pid}


def test_quit_stops_only_the_targeted_instance(
        vhost_url: str, components: Components, names: Names) -> None:
    quitter = names("quitter")
    q1 = components.start(quitter)
    q2 = components.start(quitter)
    result = run_cli(vhost_url, "quit", q1.key)
    assert (result.returncode, result.stdout) == (0, f"sent quit to {q1.key}\n")
    q1.wait_line("bye")
    assert q1.process.wait(20) == 0
    assert q2.process.poll() is None
    assert run_cli(vhost_url, "ping", quitter).pids() == {q2.pid}
    # its presence said offline: the presence ping lists only the other one
    assert run_cli(vhost_url, "ping").pids() == {q2.pid}
    result = run_cli(vhost_url, "quit", q1.key)  # nobody there any more
    assert result.returncode == 2 and "nobody receives key" in result.stderr


def test_restart_reexecutes_the_component(
        vhost_url: str, components: Components, names: Names) -> None:
    phoenix = names("phoenix")
    r1 = components.start(phoenix)
    other = components.start(phoenix)
    before = json.loads(run_cli(vhost_url, "call", r1.key, "boot").stdout)
    assert before == {"boot": r1.boot, "pid": r1.pid}
    assert run_cli(vhost_url, "restart", r1.key).returncode == 0
    line = r1.wait_line("ready")  # the new process image started and consumes again
    pid, boot = int(line.split()[1]), line.split()[2]
    # os.execv keeps the process id: same pid, new program run (new boot id)
    assert pid == r1.pid and boot != r1.boot
    assert r1.process.poll() is None
    after = json.loads(run_cli(vhost_url, "call", r1.key, "boot").stdout)
    assert after == {"boot": boot, "pid": r1.pid}
    wait_until(lambda: run_cli(vhost_url, "ping", phoenix).pids() == {r1.pid, other.pid})
    assert run_cli(vhost_url, "call", other.key, "boot").stdout.strip() == json.dumps(
        {"boot": other.boot, "pid": other.pid})


def test_restart_in_spawn_mode_comes_back_with_a_new_pid(
        vhost_url: str, components: Components, names: Names) -> None:
    phoenix = names("phoenix")
    r1 = components.start(phoenix, restart_mode="spawn")
    assert run_cli(vhost_url, "restart", r1.key).returncode == 0
    line = r1.wait_line("ready")  # the new process writes to the same stdout
    pid, boot = int(line.split()[1]), line.split()[2]
    components.spawned.append(pid)
    assert pid != r1.pid and boot != r1.boot
    assert r1.process.wait(10) == 0  # the old run ended cleanly
    wait_until(lambda: run_cli(vhost_url, "ping", phoenix).pids() == {pid})
    assert json.loads(run_cli(vhost_url, "call", f"{pid}@{socket.gethostname()}",
                              "boot").stdout) == {"boot": boot, "pid": pid}
    assert run_cli(vhost_url, "quit", f"{pid}@{socket.gethostname()}").returncode == 0
    wait_until(lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split()[2] != "Z"


async def _fill(url: str, queue: str, count: int) -> None:
    core = await open_core(url)
    try:
        await core.declare_queue(queue, durable=True)
        for i in range(count):
            await core.publish("", queue, str(i).encode())
    finally:
        await core.close()


async def test_monitor_once_shows_components_and_queue_depths(
        vhost_url: str, components: Components, names: Names) -> None:
    watched, other, backlog = names("watched"), names("other"), names("backlog")
    m1 = components.start(watched, "blue")
    m2 = components.start(other)
    await _fill(vhost_url, backlog, 7)
    result = run_cli(vhost_url, "monitor", "--once", "--queue", backlog,
                     "--management-url", "http://127.0.0.1:9")  # AMQP figures
    assert result.returncode == 0, result
    out = result.stdout
    assert "2 live component(s)" in out and "queues from AMQP" in out
    head, _, tail = out.partition("\nqueues")
    comps = {line.split()[0]: line.split() for line in head.splitlines()[1:] if line.split()}
    lines = {line.split()[0]: line.split() for line in tail.splitlines() if line.split()}
    assert comps[watched][:6] == [watched, "test-component", str(m1.pid), HOST, "blue",
                                    "online"]
    assert comps[other][:3] == [other, "test-component", str(m2.pid)]
    assert lines[backlog][1:3] == ["7", "0"]  # depth 7, no consumer
    assert lines[m1.key][1:3] == ["0", "1"]
    assert lines[f"{watched}#blue"][1:3] == ["0", "1"]
    assert "guest:guest" not in out and "***" in out


async def test_monitor_shows_what_instrumented_components_handled(
        vhost_url: str, components: Components, names: Names) -> None:
    busy, plain = names("busy"), names("plain")
    components.start(busy, "g1", instrument=True)  # (a group: no empty column)
    components.start(plain, "g2")
    for i in range(4):
        assert run_cli(vhost_url, "call", f"{busy}/rr", "add", "--param", f"a={i}",
                       "--param", "b=1").returncode == 0
    await asyncio.sleep(1.2)  # a heartbeat (0.5 s) carries the new totals
    result = run_cli(vhost_url, "monitor", "--once", "--management-url", "http://127.0.0.1:9")
    assert result.returncode == 0, result
    head = result.stdout.partition("\nqueues")[0]
    header = next(line for line in head.splitlines() if line.split()[:1] == ["NAME"])
    assert header.split()[8:11] == ["HANDLED", "MSG/S", "HANDLER"]
    rows = {line.split()[0]: line.split() for line in head.splitlines() if line.split()}
    assert rows[busy][8] == "4" and float(rows[busy][10]) >= 0  # handled, mean handler ms
    assert rows[plain][8:11] == ["-", "-", "-"]  # not instrumented


def test_activity_turns_status_totals_into_rates() -> None:
    from postage._api.presence import ComponentState
    from postage._tooling.cli.monitor import Activity, bar

    activity = Activity()
    fp = {"name": "worker", "host": "h", "pid": 1}

    def state(seen: float, handled: int, seconds: float) -> ComponentState:
        return ComponentState(fp, "heartbeat", 0.0, seen, 1.0,
                              {"messages_handled": handled, "handler_seconds": seconds})

    first = activity.update(state(10.0, 100, 2.0))
    assert (first.handled, first.rate, first.handler_ms) == (100, None, 20.0)
    later = activity.update(state(12.0, 150, 3.0))
    assert (later.handled, later.rate, later.handler_ms) == (150, 25.0, 20.0)
    assert activity.update(state(12.0, 150, 3.0)) == later  # no new status yet
    idle = activity.update(state(13.0, 150, 3.0))
    assert (idle.rate, idle.handler_ms) == (0.0, None)
    plain = activity.update(ComponentState(fp, "online", 0.0, 1.0, 1.0, {}))
    assert (plain.handled, plain.rate) == (None, None)
    assert bar(25.0, 25.0) == "\u2588" * 16 and bar(None, 1.0) == "" and bar(1.0, 0.0) == ""


@pytest.mark.parametrize("case", ["unreachable", "password", "vhost"])
def test_connection_errors_are_one_line_and_exit_2(broker_url: str, case: str) -> None:
    from urllib.parse import urlsplit

    sp = urlsplit(broker_url)
    if case == "unreachable":
        url = sp._replace(netloc=f"{sp.username}:{sp.password}@127.0.0.1:1").geturl()
        expected = "connection to the broker failed"
    elif case == "password":
        url = sp._replace(netloc=f"{sp.username}:not-the-secret-pw@{sp.hostname}:{sp.port}"
                          ).geturl()
        expected = "wrong user name or password"
    else:
        url = sp._replace(path="/postage-no-such-vhost").geturl()
        expected = "refused virtual host 'postage-no-such-vhost'"
    for args in (["ping"], ["call", "x", "y"], ["quit", "x"], ["monitor", "--once"]):
        result = run_cli(url, *args)
        assert result.returncode == 2, (args, result)
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("postage: error: ") and expected in result.stderr
        assert "not-the-secret-pw" not in result.stderr and "Traceback" not in result.stderr
    # --url before or after the command wins over POSTAGE_URL
    result = run_cli(broker_url, "--url", url, "ping")
    assert result.returncode == 2 and expected in result.stderr
    result = run_cli(broker_url, "ping", "--url", url)
    assert result.returncode == 2 and expected in result.stderr
