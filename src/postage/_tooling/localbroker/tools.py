"""Running RabbitMQ's tools as the right user; ports; small file helpers."""

from __future__ import annotations

__all__ = ['STATE_FILE', 'LocalBrokerError', 'find_free_ports', 'port_is_free']

import os
import pwd
import random
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from postage._exceptions import PostageError

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
