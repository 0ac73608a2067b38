"""Opening one AMQP connection: the client URL, TLS, and what a refusal means."""

from __future__ import annotations

__all__ = ["close_socket", "connect_error", "open_connection", "ssl_context"]

import asyncio
import ssl
import weakref
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import aiormq
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory

from ..._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    PostageError,
    VhostNotFound,
)
from ..._settings import ConnectionSettings, redact_url, user_of
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
    streams = _KeptStreams(tls=sp.scheme == "amqps")
    try:
        connection = await aiormq.connect(client_url, context=context,
                                          client_properties=properties,
                                          transport_factory=streams)
    except asyncio.CancelledError:
        streams.close()
        raise
    except BaseException as exc:
        streams.close()
        raise connect_error(url, exc) from None
    _STREAMS[connection] = streams
    return connection


_STREAMS: weakref.WeakKeyDictionary[Any, _KeptStreams] = weakref.WeakKeyDictionary()


def close_socket(connection: Any) -> None:
    """Close the socket of a connection that is gone (aiormq 6.9 leaves it open when the
    broker closed the connection, until the garbage collector warns about it)."""
    streams = _STREAMS.get(connection)
    if streams is not None:
        streams.close()


class _KeptStreams(TransportFactory):
    """Opens a connection's socket as aiormq does (plain or TLS), keeping its writer so
    that Postage can close the socket of a lost connection (:func:`close_socket`)."""

    def __init__(self, *, tls: bool) -> None:
        self._inner = TLSTransportFactory() if tls else TCPTransportFactory()
        self._writer: asyncio.StreamWriter | None = None

    async def create(self, url: Any, **kwargs: Any) -> tuple[Any, Any]:
        reader, writer = await self._inner.create(url, **kwargs)
        self._writer = writer
        return reader, writer

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and not writer.is_closing():
            writer.close()


def connect_error(url: str, exc: BaseException) -> PostageError:
    """The error to raise when connecting to ``url`` failed with ``exc``."""
    sp = urlsplit(url)
    error = translate_error(exc)
    where = f"{sp.hostname}:{sp.port or (5671 if sp.scheme == 'amqps' else 5672)}"
    user = user_of(url)
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
