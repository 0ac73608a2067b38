"""Helpers shared by the commands that talk to a broker (ping, send, call, control, monitor).

The broker comes from ``--url`` (before or after the command name) or the environment
(``POSTAGE_URL``, else ``POSTAGE_HOST``/``VHOST``/``USER``/``PASSWORD``), as everywhere in
Postage. Expected failures are :class:`~postage._exceptions.PostageError` (one line on
stderr, exit status 2, from the framework); credentials are never printed.
"""

from __future__ import annotations

__all__ = [
    "CLI_FINGERPRINT",
    "DEFAULT_EXCHANGE",
    "EXIT_FAILED",
    "add_url",
    "command_envelope",
    "connect",
    "format_table",
    "parse_parameters",
    "printable",
    "publish_command",
    "run",
    "url_of",
]

import argparse
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from postage._core.core import Core, open_core
from postage._exceptions import ConfigurationError, PostageError, Unroutable
from postage._settings import ConnectionSettings
from postage._wire.envelope import build_envelope
from postage._wire.fingerprint import Fingerprint

DEFAULT_EXCHANGE = "generic-application-exchange"  # GenericApplicationExchange.name
EXIT_FAILED = 1  # the command ran but the answer is "no" (remote error, nobody answered)
CONNECT_TIMEOUT = 5.0
CLI_FINGERPRINT = {"name": "postage-cli", "type": "cli"}


def add_url(parser: argparse.ArgumentParser) -> None:
    """``--url`` after the command name too (``postage ping --url ...``)."""
    parser.add_argument("--url", default=argparse.SUPPRESS,
                        help="broker URL (default: POSTAGE_URL or the POSTAGE_* variables)")


def url_of(args: argparse.Namespace) -> str | None:
    url = getattr(args, "url", None)
    return str(url) if url else None


def settings_of(args: argparse.Namespace) -> ConnectionSettings:
    return ConnectionSettings.from_url(url_of(args))


def fingerprint(settings: ConnectionSettings) -> dict[str, Any]:
    from urllib.parse import unquote, urlsplit

    path = urlsplit(settings.urls[0]).path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    return Fingerprint(name=CLI_FINGERPRINT["name"], type=CLI_FINGERPRINT["type"],
                       vhost=vhost).as_dict()


@asynccontextmanager
async def connect(args: argparse.Namespace, *, reconnect: bool = False
                  ) -> AsyncIterator[Core]:
    """A core for the command, closed at the end: not reconnecting (a CLI fails fast)
    unless ``reconnect`` (a long command that can go on where it was)."""
    _configure_logging(bool(getattr(args, "verbose", False)))
    url = ",".join(settings_of(args).urls)
    core = await open_core(url, reconnect=reconnect, connect_timeout=CONNECT_TIMEOUT)
    try:
        yield core
    finally:
        await core.close(2.0)


def _configure_logging(verbose: bool) -> None:
    """Library log records must not add lines to a command's one-line errors: without
    ``-v`` they are dropped; with it, warnings and worse go to stderr."""
    root = logging.getLogger()
    if root.handlers:
        return
    if verbose:
        logging.basicConfig(level=logging.WARNING, format="postage: %(name)s: %(message)s")
    else:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL + 1)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    return asyncio.run(main())


def parse_parameters(params: Sequence[str] | None, json_text: str | None) -> Any:
    """Command parameters: ``--json TEXT`` as given, else ``{k: v}`` from ``--param k=v``
    (each value parsed as JSON when it is valid JSON, else kept as a string)."""
    if json_text is not None:
        if params:
            raise ConfigurationError("give --param or --json, not both")
        try:
            return json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"--json is not valid JSON: {exc}") from None
    result: dict[str, Any] = {}
    for item in params or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--param wants KEY=VALUE, not {item!r}")
        try:
            result[key] = json.loads(text)
        except json.JSONDecodeError:
            result[key] = text
    return result


def command_envelope(command: str, parameters: Any, *, rpc: bool,
                     settings: ConnectionSettings) -> dict[str, Any]:
    """A classic MessageCommand / RpcCommand envelope from the command line."""
    return build_envelope("command", command, "rpc" if rpc else "message",
                          {"parameters": {} if parameters is None else parameters},
                          fingerprint(settings))


def nobody(exchange: str, key: str) -> PostageError:
    return PostageError(f"nobody receives key {key!r} on exchange {exchange!r} "
                        "(no such component, or it has stopped)")


async def publish_command(core: Core, exchange: str, key: str, command: str,
                          parameters: Any = None) -> None:
    """Send a command message (confirmed, mandatory): PostageError if nobody gets it."""
    envelope = command_envelope(command, parameters, rpc=False, settings=core.settings)
    try:
        await core.publish(exchange, key, core.encode(envelope), core.properties(),
                           mandatory=True, timeout=10.0)
    except Unroutable:
        raise nobody(exchange, key) from None


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x1B: "\\x1b"})


def printable(text: Any) -> str:
    """``text`` for a terminal: control characters (ESC, BEL, newlines...) escaped, so that
    what a message or a peer says cannot move the cursor, ring, or forge a line."""
    return str(text).translate(_CONTROL)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table (stable for scripts and tests); cells are escaped
    (:func:`printable`)."""
    cells = [[str(h) for h in headers], *[[printable(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    return "\n".join(lines)


