"""Where a node's RabbitMQ comes from: the installed ``rabbitmq-server``, or RabbitMQ 4 run
from a Debian 13 root.

Debian 13 ships RabbitMQ 4.0 (on Erlang/OTP 27); it does not install on an older Debian,
but it runs from a Debian 13 root made by ``debootstrap`` from Debian's package mirror. The
root is made once (about 370 MB and a minute or two, progress on stderr) and kept in
``/var/cache/postage/rabbitmq-4`` (``POSTAGE_RABBITMQ4_ROOT`` names another place). Nodes
run in it through ``chroot``, as its ``rabbitmq`` user, which needs root. Their data lives
inside the root, in a directory of its own per node directory (never shared by two node
directories that give the same node name); the node directory keeps a ``data`` link to it.
"""

from __future__ import annotations

__all__ = ["INSTALLED", "RABBITMQ_VERSIONS", "Installed", "Rootfs", "runtime_for",
           "runtime_from_dict"]

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .tools import LocalBrokerError, _is_root, _rabbitmq_user, _tool_command

RABBITMQ_VERSIONS = ("installed", "4")
DEFAULT_ROOT = Path("/var/cache/postage/rabbitmq-4")
_SUITE = "trixie"  # Debian 13: rabbitmq-server 4.0
_MIRROR = "http://deb.debian.org/debian"
_PREPARE_TIMEOUT = 1200.0
_prepare_lock = threading.Lock()

# what RabbitMQ 4.3 denies by default, denied on every 4.x node started here
RABBITMQ_43_DEFAULTS = (
    "deprecated_features.permit.transient_nonexcl_queues = false",
    "deprecated_features.permit.global_qos = false",
)


@dataclass(frozen=True)
class Installed:
    """The ``rabbitmq-server`` installed on this machine."""

    version: str = "installed"

    def command(self, tool: str, args: Sequence[str]) -> list[str]:
        return _tool_command(tool, args)

    def user(self) -> tuple[int, int] | None:
        """(uid, gid) the node runs as when started as root (None: as whoever starts it)."""
        user = _rabbitmq_user()
        return None if user is None else (user.pw_uid, user.pw_gid)

    def inner(self, path: Path) -> str:
        """``path`` as the node sees it."""
        return str(path)

    def data_dir(self, name: str, directory: Path) -> Path | None:
        """Where the node ``name`` of ``directory`` must keep its data (None: in
        ``directory``)."""
        return None

    @property
    def nodes_dir(self) -> Path | None:
        """The folder holding the data of every node of this runtime (None: each node's own
        directory)."""
        return None

    def config_lines(self) -> list[str]:
        return []

    def prepare(self) -> None:
        """Nothing to prepare: the package is installed (or its absence is said at start)."""

    def to_dict(self) -> dict[str, str]:
        return {"rabbitmq": self.version}


INSTALLED = Installed()


@dataclass(frozen=True)
class Rootfs:
    """RabbitMQ 4 from a Debian 13 root at ``root`` (made by :meth:`prepare`)."""

    root: Path
    version: str = "4"

    @property
    def _tools(self) -> Path:
        return self.root / "usr/lib/rabbitmq/bin"

    @property
    def ready(self) -> bool:
        return (self._tools / "rabbitmq-server").exists() and (self.root / "etc/passwd").exists()

    def command(self, tool: str, args: Sequence[str]) -> list[str]:
        self._check_usable()
        uid, gid = self.user()
        return ["chroot", f"--userspec={uid}:{gid}", str(self.root), "/usr/bin/env",
                "HOME=/var/lib/rabbitmq", "LC_ALL=C.UTF-8",
                f"/usr/lib/rabbitmq/bin/{tool}", *args]

    def user(self) -> tuple[int, int]:
        """The root's own ``rabbitmq`` user (its ids, not the host's)."""
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == "rabbitmq":
                return int(fields[2]), int(fields[3])
        raise LocalBrokerError(f"{self.root} has no rabbitmq user: is it a RabbitMQ 4 root?")

    def inner(self, path: Path) -> str:
        try:
            return "/" + str(Path(path).absolute().relative_to(self.root))
        except ValueError:
            raise LocalBrokerError(
                f"{path} is outside {self.root}, out of reach of a RabbitMQ 4 node") from None

    def data_dir(self, name: str, directory: Path) -> Path:
        # keyed by the node directory too: a new directory is a new node, even when a
        # port (and so a name) is used again, as it is in the installed runtime
        digest = hashlib.sha256(str(Path(directory).absolute()).encode()).hexdigest()[:12]
        return self.nodes_dir / f"{name}-{digest}"

    @property
    def nodes_dir(self) -> Path:
        return self.root / "var/lib/postage-nodes"

    def config_lines(self) -> list[str]:
        return list(RABBITMQ_43_DEFAULTS)

    def to_dict(self) -> dict[str, str]:
        return {"rabbitmq": self.version, "root": str(self.root)}

    def _check_usable(self) -> None:
        if not _is_root():
            raise LocalBrokerError(
                "RabbitMQ 4 nodes run from a Debian 13 root through chroot, which needs root")
        if not self.ready:
            raise LocalBrokerError(
                f"{self.root} holds no RabbitMQ 4 (prepare it: postage broker start "
                "--rabbitmq 4)")
        if not (self.root / "proc/self").exists():  # Erlang reads /proc
            _run_checked(["mount", "-t", "proc", "proc", str(self.root / "proc")], 60)

    def prepare(self) -> None:
        """Make the root when it is missing (once; progress on stderr)."""
        with _prepare_lock:
            if self.ready:
                return
            if not _is_root():
                raise LocalBrokerError(
                    "preparing RabbitMQ 4 needs root (debootstrap and chroot)")
            _say(f"preparing RabbitMQ 4 in {self.root} (Debian 13 from {_MIRROR}, about "
                 "370 MB, once; later starts reuse it)")
            if shutil.which("debootstrap") is None:
                _say("installing debootstrap")
                _run_checked(["apt-get", "install", "-y", "--no-install-recommends",
                              "debootstrap"], _PREPARE_TIMEOUT, show=True)
            partial = self.root.with_name(self.root.name + ".partial")
            _remove_root(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            _run_checked(["debootstrap", "--variant=minbase", "--include=rabbitmq-server",
                          _SUITE, str(partial), _MIRROR], _PREPARE_TIMEOUT, show=True)
            _remove_root(self.root)
            partial.rename(self.root)  # whole or not at all: an interrupted one starts over
            _say(f"RabbitMQ 4 is ready in {self.root}")


def runtime_for(version: str | None) -> Installed | Rootfs:
    """The runtime of ``--rabbitmq VERSION`` (``installed``, the default, or ``4``)."""
    if version in (None, "", "installed"):
        return INSTALLED
    if version in ("4", "4.0"):
        return Rootfs(Path(os.environ.get("POSTAGE_RABBITMQ4_ROOT") or DEFAULT_ROOT))
    raise LocalBrokerError(
        f"unknown RabbitMQ {version!r}: choose {' or '.join(RABBITMQ_VERSIONS)}")


def runtime_from_dict(data: dict[str, object]) -> Installed | Rootfs:
    """The runtime a state file recorded for a node."""
    if data.get("rabbitmq", "installed") == "installed":
        return INSTALLED
    return Rootfs(Path(str(data["root"])))


def _remove_root(root: Path) -> None:
    """Delete a root, unmounting what is mounted in it first (never deleting through a
    mounted /proc or /sys)."""
    if not root.exists():
        return
    for sub in ("proc", "sys", "dev/pts"):
        if os.path.ismount(root / sub):
            _run_checked(["umount", "-l", str(root / sub)], 60)
    shutil.rmtree(root, ignore_errors=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_checked(cmd: list[str], timeout: float, *, show: bool = False) -> None:
    """Run ``cmd``; its output goes to stderr when ``show``; LocalBrokerError if it fails."""
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                              stdout=sys.stderr if show else subprocess.PIPE,
                              stderr=None if show else subprocess.STDOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalBrokerError(f"{' '.join(cmd)} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = "" if show else (proc.stdout or b"").decode(errors="replace")[-2000:]
        raise LocalBrokerError(f"{' '.join(cmd)} failed (exit {proc.returncode}) {detail}")
