"""Opening one AMQP connection: the client URL, TLS, and what a refusal means."""

from __future__ import annotations

__all__ = ["connect_error", "open_connection", "ssl_context"]

import asyncio
import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import aiormq

from ..._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    PostageError,
    VhostNotFound,
)
from ..._settings import ConnectionSettings, redact_url
from .errors import translate_error
from .flow import quiet_connect_errors


async def open_connection(settings: ConnectionSettings, url: str) -> Any:
    """An aiormq connection to ``url``; a Postage error (user, vhost...) if refused."""
    sp = urlsplit(url)
    query = dict(parse_qsl(sp.query))
    for ours in ("cafile", "certfile", "keyfile", "no_verify_ssl", "connection_timeout"):
        query.pop(ours, None)
    query["heartbeat"] = str(settings.heartbeat)
    if settings.name:
        query["name"] = settings.name
    client_url = sp._replace(query=urlencode(query)).geturl()
    context = ssl_context(settings) if sp.scheme == "amqps" else None
    properties = {"product": "postage", **dict(settings.client_properties)}
    quiet_connect_errors()
    try:
        return await aiormq.connect(client_url, context=context, client_properties=properties)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        raise connect_error(url, exc) from None


def connect_error(url: str, exc: BaseException) -> PostageError:
    """The error to raise when connecting to ``url`` failed with ``exc``."""
    sp = urlsplit(url)
    error = translate_error(exc)
    where = f"{sp.hostname}:{sp.port or (5671 if sp.scheme == 'amqps' else 5672)}"
    user = unquote(sp.username or "guest")
    if isinstance(error, AuthenticationError):
        return AuthenticationError(
            f"the broker at {where} refused user {user!r}: wrong user name or "
            "password (ACCESS_REFUSED)")
    if isinstance(error, VhostNotFound):
        vhost = unquote(sp.path[1:]) if len(sp.path) > 1 else "/"
        return VhostNotFound(
            f"the broker at {where} refused virtual host {vhost!r} for user {user!r}: "
            "it does not exist or the user has no permission on it")
    return ConnectionError(f"{redact_url(url)}: {error}")


def ssl_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """The TLS context of ``settings.tls`` (ConfigurationError if its files are bad)."""
    tls = settings.tls
    try:
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls is not None:
            if tls.cert_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            if not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif not tls.check_hostname:
                context.check_hostname = False
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS files: {exc}") from None
    return context
