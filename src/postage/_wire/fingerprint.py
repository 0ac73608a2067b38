"""Fingerprint: who sent a message. Values are collected from the OS. No I/O."""

from __future__ import annotations

__all__ = ["FINGERPRINT_KEYS", "PRIVATE_FINGERPRINT", "Fingerprint"]

import getpass
import os
import socket
from typing import Any

FINGERPRINT_KEYS = ("name", "type", "pid", "host", "user", "vhost")
# where a component runs: left out of what it answers to others unless asked for
PRIVATE_FINGERPRINT = frozenset({"pid", "host", "user"})


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or password database
        return None


class Fingerprint:
    """Identity of a component: name, type, pid, host, user and vhost.

    ``name`` and ``type`` are chosen by the program (``None`` when not given); the others
    are read from the OS unless passed. ``vhost`` defaults to ``POSTAGE_VHOST`` or ``/``.
    """

    __slots__ = FINGERPRINT_KEYS

    def __init__(
        self,
        name: str | None = None,
        type: str | None = None,
        pid: int | None = None,
        host: str | None = None,
        user: str | None = None,
        vhost: str | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.pid = os.getpid() if pid is None else pid
        self.host = socket.gethostname() if host is None else host
        self.user = _os_user() if user is None else user
        self.vhost = os.environ.get("POSTAGE_VHOST", "/") if vhost is None else vhost

    def as_dict(self) -> dict[str, Any]:
        """The dictionary form Postage attaches to messages."""
        return {key: getattr(self, key) for key in FINGERPRINT_KEYS}

    def as_tuple(self) -> tuple[Any, ...]:
        """The values in the order name, type, pid, host, user, vhost."""
        return tuple(getattr(self, key) for key in FINGERPRINT_KEYS)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fingerprint):
            return self.as_tuple() == other.as_tuple()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={getattr(self, key)!r}" for key in FINGERPRINT_KEYS)
        return f"Fingerprint({fields})"
