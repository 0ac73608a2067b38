"""Connection settings: broker URLs, TLS, timeouts, recovery. No I/O here.

A URL is ``amqp://user:password@host:port/vhost?heartbeat=30`` (or ``amqps://``). Several
brokers of one cluster are given as a list, as comma-separated URLs, or as comma-separated
hosts in one URL (``amqp://u:p@node1:5672,node2:5672/vhost``): Postage connects to the first
that answers and fails over to the others.
"""

from __future__ import annotations

__all__ = ["ConnectionSettings", "TlsOptions", "redact_url", "url_from_environment", "user_of"]

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ._exceptions import ConfigurationError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
_SCHEMES = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS for ``amqps://``: a CA to trust, an optional client certificate, name checks."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Everything needed to open (and reopen) a connection. Build it with :meth:`from_url`."""

    urls: tuple[str, ...] = (DEFAULT_URL,)
    heartbeat: int = 60
    connect_timeout: float = 10.0
    tls: TlsOptions | None = None
    name: str | None = None
    reconnect: bool = True
    reconnect_delay: float = 0.2
    reconnect_max_delay: float = 5.0
    recovery_timeout: float = 60.0
    publish_timeout: float = 30.0
    client_properties: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str | Sequence[str] | None = None, **options: Any) -> ConnectionSettings:
        """Settings for ``url`` (or ``POSTAGE_URL`` and the ``POSTAGE_*`` variables when None).

        Query options understood: ``heartbeat``, ``connection_timeout`` and
        ``publish_timeout`` (seconds), ``name``, ``cafile``, ``certfile``, ``keyfile``,
        ``no_verify_ssl``.
        Keyword ``options`` override fields of the settings.
        """
        if url is None:
            url = url_from_environment()
        urls = split_urls(url)
        query = dict(parse_qsl(urlsplit(urls[0]).query))
        values: dict[str, Any] = {"urls": urls}
        try:
            if "heartbeat" in query:
                values["heartbeat"] = int(query["heartbeat"])
            if "connection_timeout" in query:
                values["connect_timeout"] = float(query["connection_timeout"])
            if "publish_timeout" in query:
                values["publish_timeout"] = float(query["publish_timeout"])
                if not values["publish_timeout"] > 0:
                    raise ValueError("publish_timeout must be more than 0")
        except ValueError as exc:
            raise ConfigurationError(f"bad query option in {redact_url(urls[0])}: {exc}") from None
        if "name" in query:
            values["name"] = query["name"]
        if urls[0].startswith("amqps:") or {"cafile", "certfile", "keyfile"} & query.keys():
            values["tls"] = TlsOptions(
                ca_file=query.get("cafile"),
                cert_file=query.get("certfile"),
                key_file=query.get("keyfile"),
                verify=query.get("no_verify_ssl", "0") in ("0", "false"),
            )
        settings = cls(**values)
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(f"unknown connection options: {', '.join(sorted(unknown))}")
        return replace(settings, **options) if options else settings

    def __repr__(self) -> str:
        urls = ", ".join(redact_url(u) for u in self.urls)
        return f"ConnectionSettings(urls=[{urls}], heartbeat={self.heartbeat})"


def split_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """One URL per broker node, each complete."""
    items = [url] if isinstance(url, str) else list(url)
    if not items:
        raise ConfigurationError("no broker URL given")
    parts: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"broker URL must be a string, not {type(item).__name__}")
        for piece in (p.strip() for p in item.split(",")):
            if piece:
                parts.append(_complete(piece, parts[-1] if parts else None))
    if len(parts) > 1:
        parts = _share_path(parts)
    for part in parts:
        _check_url(part)
    return tuple(parts)


def _complete(piece: str, previous: str | None) -> str:
    """``piece`` as a full URL; a bare host takes the previous URL's scheme, user, path."""
    if "://" in piece:
        return piece
    if previous is None:
        raise ConfigurationError(f"not a broker URL: {redact_url(piece)!r}")
    prev = urlsplit(previous)
    userinfo = prev.netloc.rpartition("@")[0]
    host, slash, rest = piece.partition("/")
    netloc = f"{userinfo}@{host}" if userinfo else host
    prev_tail = prev.path + (f"?{prev.query}" if prev.query else "")
    tail = slash + rest if slash else prev_tail
    return f"{prev.scheme}://{netloc}{tail}"


def _share_path(parts: list[str]) -> list[str]:
    """"amqp://u:p@h1:1,h2:2/vh" split at the comma leaves the path on the last host only:
    give it to the others."""
    last = urlsplit(parts[-1])
    tail = last.path + (f"?{last.query}" if last.query else "")
    fixed = []
    for part in parts:
        sp = urlsplit(part)
        fixed.append(part if sp.path or sp.query else f"{sp.scheme}://{sp.netloc}{tail}")
    return fixed


def _check_url(url: str) -> None:
    raw = _raw_userinfo(url)
    if raw is not None and any(c in raw for c in "#/?"):
        raise ConfigurationError(
            f"the user name or password in {redact_url(url)} contains '#', '/' or '?', "
            "which end that part of a URL: percent-encode them (# as %23, / as %2F, "
            "? as %3F; urllib.parse.quote(password, safe='') does it)")
    try:
        sp = urlsplit(url)
        sp.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigurationError(f"bad broker URL {redact_url(url)}: {exc}") from None
    if sp.scheme == "memory":  # memory://NAME: an in-memory broker (postage.testing)
        return
    if sp.scheme not in _SCHEMES:
        raise ConfigurationError(
            "broker URL must start with amqp://, amqps:// or memory://, "
            f"not {sp.scheme or 'nothing'}://"
        )
    if not sp.hostname:
        raise ConfigurationError(f"broker URL has no host: {redact_url(url)}")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe to log or print.

    Read from the text itself, not from a URL parser, so that a password with an
    unencoded ``#``, ``/``, ``?`` or ``@`` (which a parser cuts elsewhere) is hidden too:
    everything between ``://`` and the last ``@`` is user information.
    """
    userinfo = _raw_userinfo(url)
    if userinfo is None:
        return "<not a URL>" if "://" not in url and "@" in url else url
    scheme, _, rest = url.partition("://")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}{rest[len(userinfo):]}"


def _raw_userinfo(url: str) -> str | None:
    """The text between ``://`` and the last ``@`` (None when there is none)."""
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    return rest[:at] if at >= 0 else None


def url_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """``POSTAGE_URL`` if set, else a URL from ``POSTAGE_HOST``, ``POSTAGE_VHOST``,
    ``POSTAGE_USER`` and ``POSTAGE_PASSWORD`` (older ``POSTAGE_RMQ_*`` names still read)."""
    env = os.environ if environ is None else environ
    if env.get("POSTAGE_URL"):
        return env["POSTAGE_URL"]
    host = env.get("POSTAGE_HOST") or env.get("POSTAGE_RMQ_HOST") or "localhost"
    vhost = env.get("POSTAGE_VHOST") or "/"
    user = env.get("POSTAGE_USER") or env.get("POSTAGE_RMQ_USER") or "guest"
    password = env.get("POSTAGE_PASSWORD") or env.get("POSTAGE_RMQ_PASSWORD") or "guest"
    if ":" not in host.rsplit("]", 1)[-1]:
        host = f"{host}:5672"
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{credentials}@{host}/{quote(vhost, safe='')}"


def user_of(url: str) -> str:
    """The broker user a connection URL logs in as (``guest``, AMQP's default, when the
    URL names none: with EXTERNAL authentication, name the certificate's user in the URL,
    ``amqps://alice@host/?auth_mechanism=external``, to get that user's delay levels)."""
    return unquote(urlsplit(url).username or "guest")
