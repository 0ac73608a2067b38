"""Named memory brokers: ``memory://NAME`` URLs select a process-wide broker by name."""

from __future__ import annotations

__all__ = ["broker_name", "is_memory_url", "named_broker", "reset_named_brokers"]

import threading
from urllib.parse import unquote, urlsplit

from ..._exceptions import ConfigurationError
from .broker import MemoryBroker
from .model import SCHEME

# ---------------------------------------------------------------------------------------
# named brokers (memory://NAME)

_named: dict[str, MemoryBroker] = {}
_named_lock = threading.Lock()


def is_memory_url(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SCHEME


def broker_name(url: str) -> str:
    """The broker name of a ``memory://NAME`` URL (``memory://`` is the name ``""``)."""
    sp = urlsplit(url)
    if sp.scheme.lower() != SCHEME:
        raise ConfigurationError(f"not a memory:// URL: {url!r}")
    return unquote(sp.netloc + sp.path).strip("/")


def named_broker(name: str = "") -> MemoryBroker:
    """The process-wide broker called ``name``, created on first use."""
    with _named_lock:
        broker = _named.get(name)
        if broker is None:
            broker = _named[name] = MemoryBroker(name)
        return broker


def reset_named_brokers() -> None:
    """Forget every named broker (their connections keep the old ones until closed)."""
    with _named_lock:
        _named.clear()
