"""AMQP client errors translated into Postage errors: here and nowhere else."""

from __future__ import annotations

__all__ = ["is_link_failure", "refusal_of", "translate_error"]

import asyncio
import os
import ssl

from aiormq import exceptions as amqp_errors
from pamqp import commands as spec

from ..._exceptions import (
    AccessRefused,
    AuthenticationError,
    ChannelError,
    ConnectionError,
    DeliveryTimeout,
    NotFound,
    OperationRefused,
    PostageError,
    PreconditionFailed,
    VhostNotFound,
)
from ..base import refused

# channel-level refusals: (client error class, Postage error class, reply code)
_CHANNEL_ERRORS: tuple[tuple[type[BaseException], type[ChannelError], int], ...] = (
    (amqp_errors.ChannelAccessRefused, AccessRefused, 403),
    (amqp_errors.ChannelNotFoundEntity, NotFound, 404),
    (amqp_errors.ChannelPreconditionFailed, PreconditionFailed, 406),
    (amqp_errors.ChannelLockedResource, ChannelError, 405),
)


_REPLY_CODES = (("ACCESS_REFUSED", 403), ("NOT_FOUND", 404), ("RESOURCE_LOCKED", 405),
                ("PRECONDITION_FAILED", 406))


def translate_error(exc: BaseException) -> PostageError:
    """A Postage error for an exception of the AMQP client or the network."""
    if isinstance(exc, PostageError):
        return exc
    for translate in (_channel_error, _refusal, _tls_error):
        error = translate(exc)
        if error is not None:
            return error
    if isinstance(exc, asyncio.TimeoutError):
        return DeliveryTimeout("the broker did not answer in time")
    return ConnectionError(f"connection to the broker failed: {_reply_text(exc)}")


def _refusal(exc: BaseException) -> PostageError | None:
    """The broker refused the connection: user, password or virtual host."""
    if isinstance(exc, amqp_errors.AuthenticationError | amqp_errors.ProbableAuthenticationError):
        return AuthenticationError(
            "the broker refused the user name or password (ACCESS_REFUSED)"
        )
    if isinstance(exc, amqp_errors.ConnectionNotAllowed):
        return VhostNotFound(f"the broker does not allow this virtual host: {_reply_text(exc)}")
    if isinstance(exc, amqp_errors.InvalidFrameError) and "Connection.Close" in str(exc):
        # aiormq reports a refused Connection.Open as an unexpected frame
        return VhostNotFound("the broker refused to open the virtual host")
    return _closed_while_opening(exc)


def _closed_while_opening(exc: BaseException) -> PostageError | None:
    """Older aiormq (6.9) reports a refused open as an internal error carrying the
    broker's close frame."""
    close = next((a for a in exc.args if isinstance(a, spec.Connection.Close)), None)
    if close is None:
        return None
    text = close.reply_text or "refused"
    if close.reply_code == 530:  # NOT_ALLOWED
        return VhostNotFound(f"the broker does not allow this virtual host: {text}")
    if close.reply_code == 403:
        return AuthenticationError(f"the broker refused the connection: {text}")
    return ConnectionError(f"the broker closed the connection: {text}")


def _channel_error(exc: BaseException) -> ChannelError | None:
    if not isinstance(exc, amqp_errors.ChannelClosed):
        return None
    for client_error, error, code in _CHANNEL_ERRORS:
        if isinstance(exc, client_error):
            return error(_reply_text(exc), code)
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    text = _reply_text(exc)
    if not code:  # older aiormq keeps only the broker's text: its name says the code
        code = next((c for name, c in _REPLY_CODES if text.startswith(name)), 0)
        for _client_error, error, known in _CHANNEL_ERRORS:
            if known == code and code:
                return error(text, code)
    return ChannelError(text, code)


def _tls_error(exc: BaseException) -> ConnectionError | None:
    tls_error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(tls_error, ssl.SSLCertVerificationError):  # aiormq wraps OSErrors
        return ConnectionError(
            f"TLS certificate verification failed: {tls_error.verify_message or tls_error}"
        )
    if isinstance(tls_error, ssl.SSLError):
        return ConnectionError(f"TLS handshake failed: {tls_error.reason or tls_error}")
    return None


def _reply_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:  # the system's words, as the client says them
        return os.strerror(exc.errno)
    parts = [str(a) for a in exc.args if not isinstance(a, int)]
    return " ".join(parts) or type(exc).__name__


# AMQP's hard errors: the broker closes the whole connection to refuse the operation in flight
_HARD_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (amqp_errors.ConnectionFrameError, 501),
    (amqp_errors.ConnectionSyntaxError, 502),
    (amqp_errors.ConnectionCommandInvalid, 503),
    (amqp_errors.ConnectionChannelError, 504),
    (amqp_errors.ConnectionUnexpectedFrame, 505),
    (amqp_errors.ConnectionResourceError, 506),
    (amqp_errors.ConnectionNotAllowed, 530),
    (amqp_errors.ConnectionNotImplemented, 540),
    (amqp_errors.ConnectionInternalError, 541),
)


def refusal_of(exc: BaseException) -> OperationRefused | None:
    """The refusal ``exc`` carries when the broker closed the connection with a hard error
    while an operation was in flight (that operation would be refused again: not a lost
    link to wait out); None for any other failure."""
    code = next((c for cls, c in _HARD_ERRORS if isinstance(exc, cls)), 0)
    return refused(_reply_text(exc), code) if code else None


def is_link_failure(exc: BaseException) -> bool:
    """True when ``exc`` means the connection (not one operation) failed."""
    return isinstance(
        exc,
        amqp_errors.AMQPConnectionError
        | amqp_errors.ChannelInvalidStateError
        | OSError
        | RuntimeError
        | asyncio.IncompleteReadError,
    ) and not isinstance(exc, amqp_errors.AuthenticationError)
