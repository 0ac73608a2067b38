"""What the AMQP client logs: flow control, and connection errors Postage raises itself.

A failed connection attempt is logged by the client at ERROR level before it raises; Postage
raises its own error for it (:func:`~postage._transport.amqp.connect.connect_error`), so
:func:`quiet_connect_errors` drops that record instead of printing it twice.

Flow control: what the broker says when it blocks a connection (a memory or disk alarm).

RabbitMQ sends ``connection.blocked`` (with the alarm as the reason) and
``connection.unblocked``; the AMQP client holds every frame meanwhile and reports both only
in its log. :class:`BlockedWatch` reads those log records (a logging filter that lets them
through unchanged) and tells the transport of each connection, so that a send that runs
out of time can say why. ``tests/faults/test_message_path.py`` checks this against a real
alarm: a change in the client's log text fails it.
"""

from __future__ import annotations

__all__ = ["BLOCKED_LOGGER", "quiet_connect_errors", "watch_flow"]

import logging
import weakref
from collections.abc import Callable
from typing import Any

BLOCKED_LOGGER = "aiormq.connection"
_BLOCKED = "Connection %r was blocked by: %r"
_UNBLOCKED = "Connection %r was unblocked"

Listener = Callable[[str | None], None]


class BlockedWatch(logging.Filter):
    """Routes the client's blocked/unblocked log records to the connection's listener."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: weakref.WeakKeyDictionary[Any, Listener] = weakref.WeakKeyDictionary()

    def watch(self, connection: Any, listener: Listener) -> None:
        self._listeners[connection] = listener

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in (_BLOCKED, _UNBLOCKED) or not isinstance(record.args, tuple):
            return True
        listener = self._listeners.get(record.args[0]) if record.args else None
        if listener is not None:
            listener(str(record.args[1]) if record.msg == _BLOCKED else None)
        return True


class _ConnectErrors(logging.Filter):
    """Drops the client's "error when creating transport" record (raised as a Postage
    ConnectionError at the caller's connect instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str)
                    and record.msg.lower().startswith(_CREATING_TRANSPORT))


_CREATING_TRANSPORT = "error when creating transport"
_watch: BlockedWatch | None = None
_quiet: _ConnectErrors | None = None


def quiet_connect_errors() -> None:
    """Install the filter that drops the client's log record of a failed connect (once)."""
    global _quiet
    if _quiet is None:
        _quiet = _ConnectErrors()
        logging.getLogger(BLOCKED_LOGGER).addFilter(_quiet)


def watch_flow(connection: Any, listener: Listener) -> None:
    """Call ``listener(reason)`` when the broker blocks ``connection``, ``listener(None)``
    when it unblocks it."""
    global _watch
    if _watch is None:
        _watch = BlockedWatch()
        logging.getLogger(BLOCKED_LOGGER).addFilter(_watch)
    _watch.watch(connection, listener)
