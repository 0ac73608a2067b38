"""Throwaway RabbitMQ nodes and clusters for tests, demos and ``postage broker``.

Standard library only. A node runs from its own directory (mnesia, logs, config, plugins
file, feature-flags file, pid file) under a unique Erlang node name (``postage-PORT@localhost``),
so several nodes and clusters can run side by side with a developer's own broker.

Started as root, ``rabbitmq-server`` switches to the ``rabbitmq`` user: the node directory is
chowned to that user, and when it lies somewhere that user cannot reach (``/root`` is ``0700``)
the node's data goes to ``/tmp/postage-nodes/`` instead (see :attr:`LocalNode.data_dir`).

    node = LocalNode(Path("/tmp/n1"), name="postage-5700", amqp_port=5700, dist_port=25700)
    node.start()
    node.url                      # amqp://guest:guest@127.0.0.1:5700/
    node.ctl("list_queues", "name", "messages")
    node.stop()

``DIR/state.json`` (see :func:`write_state` / :func:`read_state`) lets another process find
the nodes that ``postage broker start --dir DIR`` left running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from postage._exceptions import PostageError

__all__ = [
    "LocalBrokerError",
    "LocalCluster",
    "LocalNode",
    "TlsFiles",
    "find_free_ports",
    "generate_tls_files",
    "port_is_free",
    "read_state",
    "remove_state",
    "write_state",
]

STATE_FILE = "state.json"
_STATE_VERSION = 1
_WRAPPER = "rabbitmq-script-wrapper"  # Debian's root/rabbitmq-user switching wrapper
_DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")
_RABBITMQ_USER = "rabbitmq"


class LocalBrokerError(PostageError):
    """A local RabbitMQ node could not be started, stopped or reached."""


# --------------------------------------------------------------------------- tools


def _is_root() -> bool:
    return os.geteuid() == 0


def _rabbitmq_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(_RABBITMQ_USER)
    except KeyError:
        return None


def _tool(name: str) -> tuple[str, bool]:
    """Return ``(path, through_wrapper)`` for a RabbitMQ command-line tool.

    Debian's wrapper only lets root and the ``rabbitmq`` user run the tools; as root it
    re-runs them through ``su`` and a shell (so arguments need shell escaping). Any other
    user runs the real script in ``/usr/lib/rabbitmq/bin`` directly, as themself.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if found is None:
        raise LocalBrokerError(
            f"{name} is not installed (on Debian: apt-get install -y --no-install-recommends "
            "rabbitmq-server, or run scripts/bootstrap)"
        )
    if Path(found).resolve().name != _WRAPPER:
        return found, False
    if _is_root():
        return found, True
    direct = _DEBIAN_BIN / name
    return (str(direct), False) if direct.exists() else (found, False)


def _shell_escape_for_wrapper(arg: str) -> str:
    # The wrapper puts each argument in double quotes for `su -c` (escaping only '"'), so a
    # '$', '`' or '\' would be interpreted by that shell: escape them ourselves.
    return arg.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def _tool_command(name: str, args: Sequence[str]) -> list[str]:
    path, wrapped = _tool(name)
    if wrapped:
        return [path, *(_shell_escape_for_wrapper(a) for a in args)]
    return [path, *args]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    """Can a listener bind ``port`` (on 0.0.0.0 and 127.0.0.1), and nothing answers there?"""
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as servers do: connections in TIME_WAIT from a stopped node do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return not _port_open(port, timeout=0.2)


def find_free_ports(count: int = 1, *, low: int = 10000, high: int = 30000) -> list[int]:
    """Return ``count`` distinct TCP ports that are free now.

    They are chosen below Linux's ephemeral range (32768+), so outgoing connections do not
    take them between this call and the node's start.
    """
    ports: list[int] = []
    candidates = list(range(low, high))
    random.shuffle(candidates)
    for port in candidates:
        if port not in ports and port_is_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise LocalBrokerError(f"no {count} free TCP ports in {low}-{high}")


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Can ``user`` traverse every existing ancestor of ``path``?"""
    groups = {user.pw_gid, *(g for g in os.getgrouplist(user.pw_name, user.pw_gid))}
    for parent in path.resolve().parents:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _run(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalBrokerError(f"{' '.join(cmd)} timed out after {timeout:g} s") from exc


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`generate_tls_files`."""

    ca_file: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(args: Sequence[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise LocalBrokerError("openssl is not installed (apt-get install -y openssl)")
    proc = _run([exe, *args], timeout=60, cwd=cwd)
    if proc.returncode != 0:
        raise LocalBrokerError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def generate_tls_files(directory: Path, *, days: int = 3650) -> TlsFiles:
    """Make a CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate
    (CN ``guest``) in ``directory`` with the ``openssl`` command-line tool."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    ca_ext = d / "ca.ext"
    ca_ext.write_text(
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    server_ext = d / "server.ext"
    server_ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    client_ext = d / "client.ext"
    client_ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = clientAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    for key in ("ca", "server", "client"):
        _openssl(["genrsa", "-out", f"{key}.key", "2048"], d)
    # A self-signed CA, made as a CSR signed by its own key so the extensions come from file.
    _openssl(["req", "-new", "-key", "ca.key", "-subj", "/CN=Postage test CA", "-out", "ca.csr"], d)
    _openssl(
        [
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-signkey",
            "ca.key",
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            "ca.ext",
            "-out",
            "ca.pem",
        ],
        d,
    )
    for key, cn, ext in (("server", "localhost", "server.ext"), ("client", "guest", "client.ext")):
        _openssl(
            ["req", "-new", "-key", f"{key}.key", "-subj", f"/CN={cn}", "-out", f"{key}.csr"], d
        )
        _openssl(
            [
                "x509",
                "-req",
                "-in",
                f"{key}.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                str(random.getrandbits(63)),
                "-days",
                str(days),
                "-sha256",
                "-extfile",
                ext,
                "-out",
                f"{key}.pem",
            ],
            d,
        )
    for leftover in ("ca.csr", "server.csr", "client.csr"):
        (d / leftover).unlink(missing_ok=True)
    for f in d.iterdir():
        f.chmod(0o600 if f.suffix == ".key" else 0o644)
    return TlsFiles(
        ca_file=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


# --------------------------------------------------------------------------- nodes


class LocalNode:
    """One RabbitMQ node run from its own directory.

    ``directory`` holds everything of the node (unless unreachable by the ``rabbitmq`` user,
    see :attr:`data_dir`). Data survives :meth:`stop` / :meth:`start`; :meth:`wipe` deletes it.
    TLS is on when ``tls_port`` is given: certificates are made in ``DATA_DIR/tls``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        amqp_port: int,
        dist_port: int,
        tls_port: int | None = None,
        plugins: Sequence[str] = (),
        management_port: int | None = None,
        host: str = "localhost",
    ) -> None:
        self.directory = Path(directory).absolute()
        self.name = name
        self.host = host
        self.amqp_port = amqp_port
        self.dist_port = dist_port
        self.tls_port = tls_port
        self.plugins: tuple[str, ...] = tuple(plugins)
        if management_port is None and "rabbitmq_management" in self.plugins:
            management_port = amqp_port + 10000 if amqp_port + 10000 <= 65535 else None
            if management_port is None:
                raise LocalBrokerError("give management_port: amqp_port + 10000 is too large")
        self.management_port = management_port
        self._process: subprocess.Popen[bytes] | None = None

    # ---- construction from elsewhere

    @classmethod
    def attach(cls, node_name: str, url: str) -> LocalNode:
        """A handle on a node started elsewhere (e.g. by ``scripts/test``), for :meth:`ctl`,
        :attr:`pid`, :meth:`is_running`; its directory is unknown."""
        name, _, host = node_name.partition("@")
        port = urlsplit(url).port or 5672
        unknown = Path(tempfile.gettempdir()) / f"postage-attached-{node_name}"
        return cls(
            unknown,
            name=name,
            host=host or "localhost",
            amqp_port=port,
            dist_port=port + 20000 if port + 20000 <= 65535 else 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "name": self.name,
            "host": self.host,
            "amqp_port": self.amqp_port,
            "dist_port": self.dist_port,
            "tls_port": self.tls_port,
            "plugins": list(self.plugins),
            "management_port": self.management_port,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalNode:
        return cls(
            Path(data["directory"]),
            name=data["name"],
            host=data.get("host", "localhost"),
            amqp_port=int(data["amqp_port"]),
            dist_port=int(data["dist_port"]),
            tls_port=data.get("tls_port"),
            plugins=tuple(data.get("plugins", ())),
            management_port=data.get("management_port"),
        )

    def __repr__(self) -> str:
        return f"LocalNode({self.node_name!r}, url={self.url!r})"

    # ---- addresses and files

    @property
    def node_name(self) -> str:
        return f"{self.name}@{self.host}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def tls_url(self) -> str | None:
        """``amqps://`` URL (verify with :attr:`ca_file`), or None without TLS."""
        if self.tls_port is None:
            return None
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/"

    @property
    def management_url(self) -> str | None:
        if self.management_port is None:
            return None
        return f"http://guest:guest@127.0.0.1:{self.management_port}/"

    @property
    def data_dir(self) -> Path:
        """Where the node's files live: :attr:`directory`, or when running as root and the
        ``rabbitmq`` user cannot reach it, ``/tmp/postage-nodes/NAME-HASH``."""
        user = _rabbitmq_user()
        if not _is_root() or user is None or _reachable_by(user, self.directory):
            return self.directory
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / "postage-nodes" / f"{self.name}-{digest}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "rabbitmq.conf"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "rabbitmq.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log" / f"{self.node_name}.log"

    @property
    def _tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def _tls_required(self) -> Path:
        if self.tls_port is None:
            raise LocalBrokerError(f"{self.node_name} has no TLS listener (give tls_port)")
        return self._tls_dir

    @property
    def ca_file(self) -> Path:
        return self._tls_required() / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self._tls_required() / "client.pem"

    @property
    def client_key(self) -> Path:
        return self._tls_required() / "client.key"

    # ---- control

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """Run ``rabbitmqctl -q -n NODE ARGS...`` and return its standard output.

        Raises :class:`LocalBrokerError` with the tool's output when it fails.
        """
        return self._tool("rabbitmqctl", args, timeout=timeout)

    def _tool(self, tool: str, args: Sequence[str], *, timeout: float) -> str:
        cmd = _tool_command(tool, ["-q", "-n", self.node_name, *args])
        proc = _run(cmd, timeout=timeout)
        if proc.returncode != 0:
            detail = proc.stderr.strip() or proc.stdout.strip() or "no output"
            raise LocalBrokerError(
                f"{tool} -n {self.node_name} {' '.join(args)} failed "
                f"(exit {proc.returncode}): {detail}"
            )
        return proc.stdout

    @property
    def pid(self) -> int:
        """OS pid of the node's Erlang VM (``beam.smp``), e.g. for a ``kill -9`` fault test."""
        pid = self._pid_from_file()
        if pid is not None and _pid_alive(pid):
            return pid
        out = self.ctl("eval", "list_to_integer(os:getpid()).")
        try:
            return int(out.strip())
        except ValueError:
            raise LocalBrokerError(f"unexpected pid from {self.node_name}: {out!r}") from None

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        """Is the node's Erlang VM up? (Its AMQP listener may still be stopped by stop_app.)"""
        pid = self._pid_from_file()
        if pid is not None:
            return _pid_alive(pid)
        if self._process is not None:
            return self._process.poll() is None
        try:
            self.ctl("ping", timeout=15)
        except LocalBrokerError:
            return False
        return True

    # ---- lifecycle

    def wipe(self) -> None:
        """Delete the node's data (it must be stopped)."""
        if self.is_running():
            raise LocalBrokerError(f"{self.node_name} is running; stop it before wipe()")
        for sub in ("mnesia", "log", "tls"):
            shutil.rmtree(self.data_dir / sub, ignore_errors=True)
        for f in ("feature_flags", "rabbitmq.pid", "out.log"):
            (self.data_dir / f).unlink(missing_ok=True)

    def _write_files(self) -> None:
        d = self.data_dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if self.directory != d:  # leave a way from the given directory to the data
            self.directory.mkdir(parents=True, exist_ok=True)
            link = self.directory / "data"
            if not link.is_symlink():
                link.symlink_to(d, target_is_directory=True)
        (d / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (d / "rabbitmq-env.conf").write_text("# rabbitmq-env.conf of a Postage throwaway node\n")
        lines = [
            "# written by postage._tooling.localbroker: a throwaway node",
            f"listeners.tcp.default = {self.amqp_port}",
            "log.file.level = info",
            "log.console = false",
        ]
        if self.management_port is not None:
            lines += [f"management.tcp.port = {self.management_port}"]
        if self.tls_port is not None:
            tls = self._tls_dir
            if not (tls / "ca.pem").exists() or not (tls / "client.key").exists():
                generate_tls_files(tls)
            lines += [
                f"listeners.ssl.default = {self.tls_port}",
                f"ssl_options.cacertfile = {tls / 'ca.pem'}",
                f"ssl_options.certfile = {tls / 'server.pem'}",
                f"ssl_options.keyfile = {tls / 'server.key'}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")
        user = _rabbitmq_user()
        if _is_root() and user is not None:
            _chown_tree(d, user.pw_uid, user.pw_gid)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        d = self.data_dir
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.pid_file),
        )
        return env

    def start(self, timeout: float = 60) -> None:
        """Start the node and return once it accepts AMQP connections.

        Raises :class:`LocalBrokerError` (with the tail of the node's log) if it does not.
        """
        server_cmd = _tool_command("rabbitmq-server", [])
        if self.is_running():
            raise LocalBrokerError(f"{self.node_name} is already running")
        for port in (self.amqp_port, self.dist_port, self.tls_port, self.management_port):
            if port is not None and not port_is_free(port):
                raise LocalBrokerError(
                    f"cannot start {self.node_name}: port {port} is already in use"
                )
        if self._process is not None:  # the launcher of a node that died: reap it
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        self._write_files()
        self.pid_file.unlink(missing_ok=True)
        out = self.data_dir / "out.log"
        deadline = time.monotonic() + timeout
        with out.open("ab") as log:
            self._process = subprocess.Popen(
                server_cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.data_dir,
                start_new_session=True,  # = setsid
            )
        try:
            self._await_startup(deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _failure(self, why: str) -> LocalBrokerError:
        parts = [
            f"RabbitMQ node {self.node_name} (port {self.amqp_port}) {why} "
            f"[logs: {self.data_dir / 'out.log'}, {self.log_file}]"
        ]
        for f in (self.data_dir / "out.log", self.log_file):
            tail = _tail(f)
            if tail:
                parts.append(f"--- last lines of {f}:\n{tail}")
        return LocalBrokerError("\n".join(parts))

    def _await_startup(self, deadline: float) -> None:
        last_error = ""
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise self._failure(f"exited with status {self._process.returncode}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = self._failure("did not start in time")
                raise LocalBrokerError(f"{failure}\n--- rabbitmqctl: {last_error}")
            try:
                self.ctl(
                    "await_startup",
                    "--timeout",
                    str(max(1, int(remaining))),
                    timeout=remaining + 15,
                )
                break
            except LocalBrokerError as exc:
                last_error = str(exc)
                time.sleep(0.5)
        while not _port_open(self.amqp_port):
            if time.monotonic() > deadline:
                raise self._failure(f"started but does not accept connections on {self.amqp_port}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """Stop the node (a no-op if it is not running) and wait until its VM has exited."""
        pid = self._pid_from_file()
        if self.is_running():
            try:
                args = ["stop", str(self.pid_file)] if pid is not None else ["stop"]
                self.ctl(*args, timeout=timeout)
            except LocalBrokerError:
                if pid is not None and _pid_alive(pid):
                    _terminate(pid)
        if pid is not None and _pid_alive(pid):
            _terminate(pid)
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie or a recycled pid is not our node
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and b"beam" in cmd


def _terminate(pid: int, grace: float = 15) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while _pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- clusters


class LocalCluster:
    """``size`` local nodes, nodes 2..n joined to node 1.

    Node *i* (from 0) gets AMQP port ``base_port + i``, dist port ``base_dist_port + i`` and
    (when ``tls_base_port`` is given) TLS port ``tls_base_port + i``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size: int = 3,
        base_port: int = 5691,
        base_dist_port: int = 25691,
        tls_base_port: int | None = None,
        plugins: Sequence[str] = (),
        nodes: Sequence[LocalNode] | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        if nodes is not None:
            self.nodes: list[LocalNode] = list(nodes)
            return
        if size < 1:
            raise LocalBrokerError("a cluster needs at least one node")
        self.nodes = [
            LocalNode(
                self.directory / f"node{i + 1}",
                name=f"postage-{base_port + i}",
                amqp_port=base_port + i,
                dist_port=base_dist_port + i,
                tls_port=None if tls_base_port is None else tls_base_port + i,
                plugins=plugins,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def __repr__(self) -> str:
        return f"LocalCluster({[n.node_name for n in self.nodes]!r})"

    def start(self, timeout: float = 90) -> None:
        """Start every node (in parallel), then join nodes 2..n to node 1."""
        try:
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                for f in [pool.submit(n.start, timeout) for n in self.nodes]:
                    f.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("reset")
                node.ctl("join_cluster", first.node_name, timeout=timeout)
                node.ctl("start_app", timeout=timeout)
            for node in self.nodes:
                node.ctl("await_startup", timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def running_nodes(self) -> list[str]:
        """Node names the first node reports as running members of the cluster."""
        out = self.nodes[0].ctl("eval", "rabbit_nodes:all_running().")
        return [n for n in (x.strip(" []\n'") for x in out.split(",")) if n]

    def stop(self) -> None:
        """Stop every node, last first (so node 1 is the last to go)."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except LocalBrokerError as exc:
                errors.append(str(exc))
        if errors:
            raise LocalBrokerError("; ".join(errors))


# --------------------------------------------------------------------------- state files


def write_state(directory: Path, nodes: Iterable[LocalNode], *, cluster: bool = False) -> Path:
    """Record ``nodes`` in ``DIR/state.json`` for ``postage broker status|stop``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    data = {"version": _STATE_VERSION, "cluster": cluster, "nodes": [n.to_dict() for n in nodes]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_state(directory: Path) -> list[LocalNode]:
    """The nodes recorded in ``DIR/state.json`` (empty if there is none)."""
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LocalBrokerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        raise LocalBrokerError(f"{path} is not a Postage broker state file")
    try:
        return [LocalNode.from_dict(n) for n in data["nodes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LocalBrokerError(f"{path} is damaged: {exc}") from exc


def remove_state(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)
