"""Throwaway RabbitMQ nodes (postage._tooling.localbroker), ``postage broker`` and the fixtures."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from postage._tooling.cli import main
from postage._tooling.cli.broker import _plan_cluster
from postage._tooling.localbroker import (
    LocalBrokerError,
    LocalNode,
    find_free_ports,
    generate_tls_files,
    port_is_free,
    read_state,
    write_state,
)
from postage._tooling.localbroker.node import _remove_orphans
from postage._tooling.localbroker.runtime import INSTALLED, Rootfs, runtime_for
from tests.conftest import RUNTIME

SRC = Path(__file__).resolve().parents[1] / "src"


def postage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "postage", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def free_port_pair() -> int:
    """A free port P with P + 20000 (its dist port under ``postage broker``) free too."""
    for port in find_free_ports(50, low=10000, high=30000):
        if port_is_free(port + 20000):
            return port
    raise AssertionError("no free port pair")


def roundtrip(params: pika.ConnectionParameters | pika.URLParameters) -> bytes:
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"hello")
        for _ in range(50):
            _, _, body = channel.basic_get(queue, auto_ack=True)
            if body is not None:
                return body
            connection.sleep(0.05)
        raise AssertionError("message did not come back")
    finally:
        connection.close()


# --------------------------------------------------------------------------- no broker needed


def test_state_file_roundtrip(tmp_path: Path) -> None:
    node = LocalNode(
        tmp_path / "n",
        name="postage-5999",
        amqp_port=5999,
        dist_port=25999,
        tls_port=5998,
        plugins=["rabbitmq_management"],
    )
    write_state(tmp_path, [node])
    (back,) = read_state(tmp_path)
    assert back.to_dict() == node.to_dict()
    assert back.node_name == "postage-5999@localhost"
    assert back.url == "amqp://guest:guest@127.0.0.1:5999/"
    assert back.tls_url == "amqps://guest:guest@127.0.0.1:5998/"
    assert back.management_url == "http://guest:guest@127.0.0.1:15999/"
    assert read_state(tmp_path / "nothing") == []


def test_damaged_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(LocalBrokerError, match=r"state\.json"):
        read_state(tmp_path)


def test_cli_without_command_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 2
    assert main(["broker", "stop", "--dir", str(tmp_path)]) == 0
    assert main(["broker", "status", "--dir", str(tmp_path)]) == 1
    capsys.readouterr()
    assert main(["broker", "start", "--dir", str(tmp_path), "--port", "60000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postage: error: ") and err.count("\n") == 1, err


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = postage("broker", "start", "--dir", str(tmp_path), "--nodes", "0")
    assert proc.returncode == 2
    assert proc.stderr == "postage: error: --nodes must be at least 1\n"
    assert proc.stdout == ""


def test_a_port_in_use_is_refused_with_advice(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    [port] = find_free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert main(["broker", "start", "--dir", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"postage: error: port {port} is already in use"), err
    assert "--port 0" in err and err.count("\n") == 1
    assert not (tmp_path / "state.json").exists()


def test_port_0_picks_free_ports(tmp_path: Path) -> None:
    args = argparse.Namespace(nodes=3, port=0, tls=True, tls_port=0, management=True,
                              listen="127.0.0.1", rabbitmq="installed")
    cluster = _plan_cluster(args, tmp_path)
    ports = [p for n in cluster.nodes for p in (n.amqp_port, n.dist_port, n.tls_port,
                                                 n.management_port)]
    assert None not in ports and len(set(ports)) == 12
    assert all(port_is_free(p) for p in ports if p is not None)
    assert [n.amqp_port for n in cluster.nodes] == [args.port, args.port + 1, args.port + 2]
    assert 10000 <= args.port < 12000 and 12000 <= args.tls_port < 14000


def test_rabbitmq_4_runs_from_its_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """Paths and commands of a RabbitMQ 4 node, as the node inside its root sees them."""
    assert runtime_for(None) is runtime_for("installed") is INSTALLED
    with pytest.raises(LocalBrokerError, match=r"unknown RabbitMQ '3\.13'"):
        runtime_for("3.13")
    monkeypatch.setenv("POSTAGE_RABBITMQ4_ROOT", str(tmp_path / "r4"))
    runtime = runtime_for("4")
    assert isinstance(runtime, Rootfs) and runtime.root == tmp_path / "r4"
    assert not runtime.ready
    (tmp_path / "r4/etc").mkdir(parents=True)
    (tmp_path / "r4/etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                             "rabbitmq:x:101:102::/var/lib/rabbitmq:/bin/false\n")
    assert runtime.user() == (101, 102)  # the root's user, not the host's
    node = LocalNode(tmp_path / "dir", name="postage-5731", amqp_port=5731, dist_port=25731,
                     tls_port=5732, runtime=runtime)
    inner = "/" + str(node.data_dir.relative_to(tmp_path / "r4"))
    assert node.data_dir.parent == tmp_path / "r4/var/lib/postage-nodes"
    assert node.data_dir.name.startswith("postage-5731-")
    assert runtime.inner(node.pid_file) == f"{inner}/rabbitmq.pid"
    with pytest.raises(LocalBrokerError, match="out of reach"):
        runtime.inner(tmp_path / "elsewhere")
    env = node._env()
    assert env["RABBITMQ_CONFIG_FILE"] == f"{inner}/rabbitmq.conf"
    assert "deprecated_features.permit.transient_nonexcl_queues = false" in \
        runtime.config_lines()
    again = LocalNode.from_dict(node.to_dict())
    assert again.runtime == runtime and again.data_dir == node.data_dir
    # the same name (a port used again) in another directory is another node: its data
    # is not the first one's (a queue left there could stop the new node from booting)
    other = LocalNode(tmp_path / "dir2", name="postage-5731", amqp_port=5731,
                      dist_port=25731, runtime=runtime)
    assert other.data_dir != node.data_dir
    assert LocalNode(tmp_path / "dir", name="postage-5731", amqp_port=5731,
                     dist_port=25731, runtime=runtime).data_dir == node.data_dir


def test_data_left_by_a_deleted_node_directory_is_removed(tmp_path: Path) -> None:
    """A shared runtime's data folder does not keep the data of every throwaway node."""
    nodes_dir = tmp_path / "nodes"
    old = time.time() - 2 * 3600

    def data(name: str, owner: Path | None, *, age: float = old) -> Path:
        d = nodes_dir / name
        (d / "mnesia").mkdir(parents=True)
        if owner is not None:
            (d / "owner").write_text(f"{owner}\n")
        os.utime(d, (age, age))
        return d

    kept_dir = tmp_path / "kept"
    kept_dir.mkdir()
    kept = data("kept", kept_dir)
    (kept_dir / "data").symlink_to(kept, target_is_directory=True)
    gone = data("gone", tmp_path / "deleted")
    relinked_dir = tmp_path / "relinked"  # its directory now leads to other data
    relinked_dir.mkdir()
    relinked = data("relinked", relinked_dir)
    (relinked_dir / "data").symlink_to(kept, target_is_directory=True)
    unowned = data("unowned", None)
    recent = data("recent", tmp_path / "deleted", age=time.time())
    _remove_orphans(nodes_dir)
    assert sorted(p.name for p in nodes_dir.iterdir()) == ["kept", "recent"]
    assert kept.exists() and recent.exists()
    assert not gone.exists() and not relinked.exists() and not unowned.exists()


def test_generated_certificates_verify(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path)
    for cert in (files.server_cert, files.client_cert):
        proc = subprocess.run(
            ["openssl", "verify", "-CAfile", str(files.ca_file), str(cert)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- real nodes


@pytest.mark.broker
@pytest.mark.slow
def test_cli_start_status_connect_stop(tmp_path: Path) -> None:
    # tmp_path is under pytest's 0700 directory: this also covers the data-dir fallback.
    port = free_port_pair()
    [tls_port] = find_free_ports(1)
    directory = str(tmp_path / "broker")
    started = postage("broker", "start", "--dir", directory, "--port", str(port), "--tls",
                      "--tls-port", str(tls_port), "--rabbitmq", RUNTIME.version)
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.splitlines()[0]
        assert url == f"amqp://guest:guest@127.0.0.1:{port}/"
        assert started.stdout.splitlines()[1] == f"amqps://guest:guest@127.0.0.1:{tls_port}/"
        # where the certificates are, to give a client (stderr: stdout lists only URLs)
        # what it did meanwhile (RabbitMQ takes about 10 s to start)
        assert started.stderr.startswith(f"starting postage-{port}@localhost (port {port})")
        assert "\nready in " in started.stderr
        said = [line for line in started.stderr.splitlines() if line.startswith("TLS files")]
        assert len(said) == 1 and "CA " in said[0], started.stderr
        ca = Path(said[0].split("CA ", 1)[1].split(",", 1)[0])
        assert ca.is_file()

        status = postage("broker", "status", "--dir", directory)
        assert status.returncode == 0, status.stderr
        assert f"postage-{port}@localhost running {url}" in status.stdout

        again = postage("broker", "start", "--dir", directory, "--port", str(port), "--tls",
                        "--tls-port", str(tls_port), "--rabbitmq", RUNTIME.version)
        assert (again.returncode, again.stdout) == (0, started.stdout)

        assert roundtrip(pika.URLParameters(url)) == b"hello"
        (node,) = read_state(Path(directory))
        assert node.is_running() and node.pid > 1
        assert "postage" not in node.ctl("list_queues", "name")
    finally:
        stopped = postage("broker", "stop", "--dir", directory)
    assert stopped.returncode == 0, stopped.stderr
    assert port_is_free(port)
    assert not node.is_running()
    shutil.rmtree(node.data_dir, ignore_errors=True)  # it may be in /tmp/postage-nodes
    after = postage("broker", "status", "--dir", directory)
    assert after.returncode == 1


def test_broker_fixture(broker, broker_url: str) -> None:
    assert broker_url == broker.url
    assert broker.node.is_running()
    assert broker.node.pid > 1
    assert broker.node_name in broker.ctl("eval", "node().")
    with pytest.raises(LocalBrokerError, match=r"no_such_command"):
        broker.ctl("no_such_command")
    assert roundtrip(pika.URLParameters(broker_url)) == b"hello"


def _tls_params(tls_broker, context: ssl.SSLContext) -> pika.ConnectionParameters:
    port = tls_broker.node.tls_port
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        ssl_options=pika.SSLOptions(context, "localhost"),
        connection_attempts=1,
        socket_timeout=10,
    )


def test_tls_with_the_generated_ca(tls_broker) -> None:
    assert tls_broker.tls_url.startswith("amqps://guest:guest@127.0.0.1:")
    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    assert roundtrip(_tls_params(tls_broker, context)) == b"hello"


def test_mutual_tls_with_the_client_certificate(tls_broker) -> None:
    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    context.load_cert_chain(str(tls_broker.client_cert), str(tls_broker.client_key))
    assert roundtrip(_tls_params(tls_broker, context)) == b"hello"


def test_tls_refused_with_a_wrong_ca(tls_broker, tmp_path: Path) -> None:
    other = generate_tls_files(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(other.ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        pika.BlockingConnection(_tls_params(tls_broker, context))


def test_tls_refuses_a_client_certificate_of_another_ca(tls_broker, tmp_path: Path) -> None:
    other = generate_tls_files(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    context.load_cert_chain(str(other.client_cert), str(other.client_key))
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError, ConnectionError)):
        roundtrip(_tls_params(tls_broker, context))


@pytest.mark.cluster
def test_cluster(cluster) -> None:
    names = sorted(n.node_name for n in cluster.nodes)
    assert sorted(cluster.running_nodes()) == names
    for url in cluster.urls:
        assert roundtrip(pika.URLParameters(url)) == b"hello"


def test_cli_version() -> None:
    import postage as package

    proc = postage("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"postage {package.__version__}")


def test_listeners_are_on_this_machine_unless_asked(tmp_path: Path) -> None:
    node = LocalNode(tmp_path / "n", name="postage-5790", amqp_port=5790, dist_port=25790,
                     tls_port=5791, plugins=["rabbitmq_management"])
    node._write_files()
    config = node.config_file.read_text()
    assert "listeners.tcp.default = 127.0.0.1:5790" in config
    assert "listeners.ssl.default = 127.0.0.1:5791" in config
    assert "management.tcp.ip = 127.0.0.1" in config
    env = node._env()
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "inet_dist_use_interface {127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    everywhere = LocalNode(tmp_path / "e", name="postage-5792", amqp_port=5792,
                           dist_port=25792, listen="0.0.0.0")
    everywhere._write_files()
    assert "listeners.tcp.default = 5792" in everywhere.config_file.read_text()
    assert "ERL_EPMD_ADDRESS" not in everywhere._env()
    assert LocalNode.from_dict(node.to_dict()).listen == "127.0.0.1"


def test_a_recorded_data_directory_must_be_private(tmp_path: Path) -> None:
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere, target_is_directory=True)
    node = LocalNode(tmp_path / "n", name="postage-5793", amqp_port=5793, dist_port=25793,
                     data_dir=link)
    with pytest.raises(LocalBrokerError, match="symbolic link"):
        _ = node.data_dir
    if os.getuid() == 0:  # a directory of another user is refused too
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 12345, 12345)
        node = LocalNode(tmp_path / "m", name="postage-5794", amqp_port=5794,
                         dist_port=25794, data_dir=foreign)
        with pytest.raises(LocalBrokerError, match="another user"):
            _ = node.data_dir


def test_an_unreachable_directory_gets_a_private_unpredictable_data_directory(
        tmp_path: Path) -> None:
    import pwd

    try:
        pwd.getpwnam("rabbitmq")
    except KeyError:
        pytest.skip("no rabbitmq user here")
    if os.getuid() != 0:
        pytest.skip("only root moves the data of a node")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    first = LocalNode(closed / "n", name="postage-5795", amqp_port=5795, dist_port=25795)
    second = LocalNode(closed / "n", name="postage-5795", amqp_port=5795, dist_port=25795)
    try:
        assert first.data_dir != second.data_dir  # not a name another user can plant
        assert first.data_dir.name.startswith("postage-postage-5795-")
        assert (first.data_dir.stat().st_mode & 0o077) == 0  # made private by mkdtemp
        assert LocalNode.from_dict(first.to_dict()).data_dir == first.data_dir  # recorded
    finally:
        shutil.rmtree(first.data_dir, ignore_errors=True)
        shutil.rmtree(second.data_dir, ignore_errors=True)
