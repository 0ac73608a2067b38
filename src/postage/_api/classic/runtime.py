"""Where classic objects get their connection: one shared Core per broker URL.

The classic constructors take a ``hup`` (host, user, password) and a virtual host; the
environment (``POSTAGE_URL`` first, else ``POSTAGE_HOST``/``VHOST``/``USER``/``PASSWORD``
and the older ``POSTAGE_RMQ_*`` names) fills in what they leave out. Every producer and
processor of a process that resolves to the same URL shares one Core, opened on the
process-wide :func:`~postage._blocking.portal.default_portal`, so the event loop in its thread keeps
serving heartbeats while user code blocks. Nothing here runs at import time.
"""

from __future__ import annotations

__all__ = [
    "close_all",
    "connection_url",
    "debug_mode",
    "global_vhost",
    "portal",
    "set_middleware",
    "shared_core",
]

import atexit
import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ..._blocking.facade import outer_deadline
from ..._blocking.portal import BlockingPortal, default_portal
from ..._core.core import Core, open_core
from ..._core.middleware import Middleware, check_middleware
from ..._exceptions import ConfigurationError
from ..._settings import split_urls, url_from_environment

log = logging.getLogger("postage.classic")

OPEN_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0

_cores: dict[str, Core] = {}
_lock = threading.Lock()
_atexit_registered = False
_debug_configured = False
_middleware: tuple[Middleware, ...] = ()

Hup = Mapping[str, Any] | Sequence[Any]


def debug_mode() -> bool:
    """True when ``POSTAGE_DEBUG_MODE`` is ``true`` (any case)."""
    return os.environ.get("POSTAGE_DEBUG_MODE", "").strip().lower() == "true"


def _vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def global_vhost() -> str:
    """The virtual host classic objects use by default.

    The vhost of ``POSTAGE_URL`` when it is set, else ``POSTAGE_VHOST``, else ``/``.
    """
    return _vhost_of(split_urls(url_from_environment())[0])


def _with_vhost(url: str, vhost: str) -> str:
    return urlsplit(url)._replace(path="/" + quote(vhost, safe="")).geturl()


def connection_url(hup: Hup | None = None, vhost: str | None = None) -> str:
    """The broker URL(s) for a classic ``hup`` and ``vhost`` (comma-separated)."""
    if hup is None:
        urls = list(split_urls(url_from_environment()))
    else:
        if isinstance(hup, Mapping):
            host = hup.get("host", "localhost")
            user = hup.get("user", "guest")
            password = hup.get("password", "guest")
        elif isinstance(hup, Sequence) and not isinstance(hup, str) and len(hup) == 3:
            host, user, password = hup
        else:
            raise ConfigurationError(
                "hup must be a dict with host/user/password or a (host, user, password) tuple"
            )
        host = str(host)
        if ":" not in host.rsplit("]", 1)[-1]:
            host = f"{host}:5672"
        base_vhost = vhost if vhost is not None else global_vhost()
        cred = f"{quote(str(user), safe='')}:{quote(str(password), safe='')}"
        urls = [f"amqp://{cred}@{host}/{quote(base_vhost, safe='')}"]
    if vhost is not None:
        urls = [_with_vhost(u, vhost) for u in urls]
    return ",".join(urls)


def configure_debug() -> None:
    """With ``POSTAGE_DEBUG_MODE=true``, send Postage's debug log to stderr (once)."""
    global _debug_configured
    if _debug_configured or not debug_mode():
        return
    _debug_configured = True
    logger = logging.getLogger("postage")
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logging.getLogger("postage.messaging").debug("global_vhost set to %s", global_vhost())


def set_middleware(middleware: Sequence[Middleware]) -> None:
    """Install ``middleware`` on the connections classic objects open from now on (call
    it before creating producers and processors; connections already open keep theirs)."""
    global _middleware
    _middleware = check_middleware(middleware)


def portal() -> BlockingPortal:
    return default_portal()


def shared_core(hup: Hup | None = None, vhost: str | None = None) -> Core:
    """The Core for ``hup``/``vhost``, opened on first use and shared by the process."""
    global _atexit_registered
    configure_debug()
    url = connection_url(hup, vhost)
    with _lock:
        core = _cores.get(url)
        if core is not None and not core.closed:
            return core
        core = portal().call(functools.partial(open_core, url, middleware=_middleware),
                             timeout=OPEN_TIMEOUT)
        _cores[url] = core
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True
        return core


def close_all(timeout: float = CLOSE_TIMEOUT) -> None:
    """Close every shared Core (letting handlers finish, waiting for confirms)."""
    with _lock:
        cores = list(_cores.values())
        _cores.clear()
    for core in cores:
        with contextlib.suppress(Exception):
            portal().call(functools.partial(core.close, timeout),
                          timeout=outer_deadline(timeout, timeout))
