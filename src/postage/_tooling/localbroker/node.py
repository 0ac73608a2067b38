"""One throwaway RabbitMQ node: its directory, config, start, stop and rabbitmqctl."""

from __future__ import annotations

__all__ = ['LocalNode']

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .runtime import INSTALLED, Installed, Rootfs, runtime_from_dict
from .tls import generate_tls_files
from .tools import (
    LocalBrokerError,
    _chown_tree,
    _is_root,
    _port_open,
    _rabbitmq_user,
    _reachable_by,
    _run,
    _tail,
    port_is_free,
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
        listen: str = "127.0.0.1",
        data_dir: Path | None = None,
        runtime: Installed | Rootfs = INSTALLED,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.name = name
        self.host = host
        self.listen = listen
        self.runtime = runtime
        if data_dir is None:
            data_dir = runtime.data_dir(name, self.directory)
        self._data_dir = None if data_dir is None else Path(data_dir)
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
    def attach(cls, node_name: str, url: str,
               runtime: Installed | Rootfs = INSTALLED) -> LocalNode:
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
            runtime=runtime,
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
            "listen": self.listen,
            "data_dir": None if self._data_dir is None else str(self._data_dir),
            **self.runtime.to_dict(),
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
            listen=data.get("listen", "0.0.0.0"),
            data_dir=None if data.get("data_dir") is None else Path(data["data_dir"]),
            runtime=runtime_from_dict(data),
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
        ``rabbitmq`` user cannot reach it, a private directory made for this node under
        the system's temporary folder (an unpredictable name, made by ``mkdtemp``, never
        an existing path another user could have planted; recorded in the state file)."""
        if self._data_dir is not None:
            _check_private(self._data_dir, self.runtime.user())
            return self._data_dir
        user = _rabbitmq_user()
        if not _is_root() or user is None or _reachable_by(user, self.directory):
            return self.directory
        self._data_dir = Path(tempfile.mkdtemp(prefix=f"postage-{self.name}-"))
        return self._data_dir

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
        cmd = self.runtime.command(tool, ["-q", "-n", self.node_name, *args])
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
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(d, target_is_directory=True)
            (d / _OWNER_FILE).write_text(str(self.directory) + "\n")
        (d / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (d / "rabbitmq-env.conf").write_text("# rabbitmq-env.conf of a Postage throwaway node\n")
        lines = [
            "# written by postage._tooling.localbroker: a throwaway node",
            f"listeners.tcp.default = {self._address(self.amqp_port)}",
            "log.file.level = info",
            "log.console = false",
            *self.runtime.config_lines(),
        ]
        if self.management_port is not None:
            lines += [f"management.tcp.port = {self.management_port}"]
            if not self._listens_everywhere:
                lines += [f"management.tcp.ip = {self.listen}"]
        if self.tls_port is not None:
            tls = self._tls_dir
            if not (tls / "ca.pem").exists() or not (tls / "client.key").exists():
                generate_tls_files(tls)
            lines += [
                f"listeners.ssl.default = {self._address(self.tls_port)}",
                f"ssl_options.cacertfile = {self.runtime.inner(tls / 'ca.pem')}",
                f"ssl_options.certfile = {self.runtime.inner(tls / 'server.pem')}",
                f"ssl_options.keyfile = {self.runtime.inner(tls / 'server.key')}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        self.config_file.write_text("\n".join(lines) + "\n")
        user = self.runtime.user()
        if _is_root() and user is not None:
            _chown_tree(d, *user)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        d, inner = self.data_dir, self.runtime.inner
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=inner(d / "mnesia"),
            RABBITMQ_LOG_BASE=inner(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=inner(d / "enabled_plugins"),
            RABBITMQ_FEATURE_FLAGS_FILE=inner(d / "feature_flags"),
            RABBITMQ_CONFIG_FILE=inner(self.config_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=inner(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=inner(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=inner(self.pid_file),
        )
        if not self._listens_everywhere:  # Erlang distribution and epmd too
            env["ERL_EPMD_ADDRESS"] = self.listen
            if self._ipv4 is not None:
                env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = (
                    f"-kernel inet_dist_use_interface {{{','.join(self._ipv4)}}}")
        return env

    @property
    def _listens_everywhere(self) -> bool:
        return self.listen in ("0.0.0.0", "::", "")

    @property
    def _ipv4(self) -> list[str] | None:
        parts = self.listen.split(".")
        return parts if len(parts) == 4 and all(p.isdigit() for p in parts) else None

    def _address(self, port: int | None) -> str:
        """A listener: ``port`` alone (every interface) or ``ADDRESS:port``."""
        if self._listens_everywhere:
            return str(port)
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"{host}:{port}"

    def start(self, timeout: float = 60) -> None:
        """Start the node and return once it accepts AMQP connections.

        Raises :class:`LocalBrokerError` (with the tail of the node's log) if it does not.
        """
        server_cmd = self.runtime.command("rabbitmq-server", [])
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
        if self.runtime.nodes_dir is not None:
            _remove_orphans(self.runtime.nodes_dir)
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
                args = ["stop", self.runtime.inner(self.pid_file)] if pid is not None else ["stop"]
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


_OWNER_FILE = "owner"  # in a data directory kept apart: the node directory it belongs to
_ORPHAN_AGE = 3600.0  # never touch a data directory changed in the last hour


def _remove_orphans(nodes_dir: Path) -> None:
    """Delete the data directories in ``nodes_dir`` whose node directory is gone (its ``data``
    link no longer leads there) and whose node is not running, so that a shared runtime does
    not grow with every throwaway node. Recent directories are left alone: another process
    may be making one right now."""
    try:
        entries = list(nodes_dir.iterdir())
    except OSError:
        return
    now = time.time()
    for d in entries:
        try:
            if d.is_symlink() or not d.is_dir() or now - d.stat().st_mtime < _ORPHAN_AGE:
                continue
            owner = Path((d / _OWNER_FILE).read_text().strip())
            if (owner / "data").resolve() == d.resolve():
                continue
        except FileNotFoundError:  # no owner recorded: orphaned unless its node runs
            pass
        except OSError:
            continue
        try:
            pid: int | None = int((d / "rabbitmq.pid").read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is None or not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


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


def _check_private(path: Path, node_user: tuple[int, int] | None) -> None:
    """Refuse a recorded data directory that is a symlink, or that belongs to a user who
    is neither the one running this nor the node's (``rabbitmq``) user."""
    if path.is_symlink():
        raise LocalBrokerError(f"{path} is a symbolic link: refusing to use it")
    if not path.exists():
        return
    owner = path.stat().st_uid
    if owner not in {os.getuid(), *(() if node_user is None else (node_user[0],))}:
        raise LocalBrokerError(f"{path} belongs to another user (uid {owner}): refusing it")
