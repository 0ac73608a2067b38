"""Transports: the interface (``base``) and its two siblings, ``amqp`` and ``memory``.

:func:`transport_for` is the one place a URL's scheme picks the implementation; the memory
broker is imported only when a ``memory://`` URL asks for it.
"""

from __future__ import annotations

__all__ = [
    "DIRECT_REPLY_TO",
    "HEADER_UNDECODABLE",
    "Consumer",
    "Delivery",
    "Transport",
    "transport_for",
]

from .._settings import ConnectionSettings
from .base import DIRECT_REPLY_TO, HEADER_UNDECODABLE, Consumer, Delivery, Transport


def transport_for(settings: ConnectionSettings) -> Transport:
    """The transport for ``settings``: the memory transport on a named broker for
    ``memory://NAME``, else the AMQP one."""
    if settings.urls[0].split(":", 1)[0].lower() == "memory":
        from .memory import MemoryTransport

        return MemoryTransport.for_settings(settings)
    from .amqp.transport import AmqpTransport

    return AmqpTransport(settings)
