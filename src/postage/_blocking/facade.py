"""Blocking verbs declared once, from their asyncio twins.

A blocking API is a facade over an asyncio object (its *twin*) on a portal. Each verb is
one declaration::

    class Communicator(Facade):
        add_rpc_subscriber = blocking(AsyncCommunicator.add_rpc_subscriber)
        rpc_send = blocking_future(AsyncCommunicator.rpc_send, send=True)

The blocking verb has the twin's signature and docstring (``help()``, ``inspect`` and
type checkers see them: mypy binds the declared callable like a method), calls the twin's
method of the same name on the facade's twin object, and waits for it on the portal with
the one outer-deadline rule of :func:`outer_deadline`.
"""

from __future__ import annotations

__all__ = ["MARGIN", "Facade", "blocking", "blocking_future", "outer_deadline"]

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from .futures import ReplyFuture, follow
from .portal import BlockingPortal
from .window import SendWindow

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

MARGIN = 5.0
"""Seconds a blocking caller waits beyond the deadline the asyncio call keeps itself: the
async call's own error (clearer) is what the caller sees, and a call that somehow never
ends still returns."""


def outer_deadline(bound: float | None, operation_timeout: float) -> float:
    """How long a blocking caller waits for an asyncio call that bounds itself to
    ``bound`` seconds (None: the facade's ``operation_timeout``): that bound + MARGIN."""
    return (operation_timeout if bound is None else bound) + MARGIN


Follow = Callable[["asyncio.Future[Any]", BlockingPortal], "concurrent.futures.Future[Any]"]


class Facade:
    """What every blocking facade holds: its twin, its portal and its operation timeout.

    ``_twin_name`` names the attribute holding the twin; :meth:`_guard` runs before every
    verb (a closed facade refuses); ``_follow`` turns an asyncio future of the loop into
    the caller's future (made on the loop); ``_window`` is the opt-in send window."""

    _portal: BlockingPortal
    _timeout: float
    _window: SendWindow | None = None
    _twin_name = "_aio"
    _follow: Follow = staticmethod(follow)

    def _guard(self) -> None:
        """Called before each verb; raise to refuse it."""

    def _twin_method(self, name: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
        """The twin's method ``name``, with ``kwargs`` bound, once the guard let it be."""
        self._guard()
        method: Callable[..., Any] = getattr(getattr(self, self._twin_name), name)
        return functools.partial(method, **kwargs) if kwargs else method

    def _deadline(self, bound: float | None = None) -> float:
        return outer_deadline(bound, self._timeout)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any,
              bound: float | None = None) -> T:
        return self._portal.call(fn, *args, timeout=self._deadline(bound))

    def _future(self, fn: Callable[..., Awaitable[asyncio.Future[T] | None]], *args: Any
                ) -> concurrent.futures.Future[T] | None:
        # the caller's future is made on the loop: a callback added to an asyncio future
        # from another thread could be lost, or run late
        follow, portal = self._follow, self._portal

        async def run() -> concurrent.futures.Future[T] | None:
            future = await fn(*args)
            return None if future is None else follow(future, portal)

        return portal.call(run, timeout=self._deadline())

    def _send(self, window: SendWindow, fn: Callable[..., Awaitable[Any]],
              args: tuple[Any, ...], no_reply: bool) -> concurrent.futures.Future[Any] | None:
        """A send handed to the send window: returns at once (a failure then fails the
        future, or with ``no_reply`` is raised by a later send, flush() or close())."""
        if no_reply:
            window.submit(fn, args)
            return None
        out: ReplyFuture[Any] = ReplyFuture(None, self._portal)
        window.submit(fn, args, out.follow_send)
        return out


def _signature(twin: Callable[..., Any], returns: str | None) -> inspect.Signature:
    signature = inspect.signature(twin)
    if returns is not None:
        signature = signature.replace(return_annotation=returns)
    return signature


def _declare(twin: Callable[..., Any], verb: Callable[..., Any], returns: str | None
             ) -> None:
    functools.update_wrapper(verb, twin)
    del verb.__wrapped__  # type: ignore[attr-defined]  # the signature is set below
    verb.__signature__ = _signature(twin, returns)  # type: ignore[attr-defined]
    verb.__doc__ = (twin.__doc__ or "").rstrip() + (
        "\n\n(Blocking: waits for the asyncio verb of the same name on the portal.)")


def _bound_of(twin: Callable[..., Any], bound: str | Callable[..., float | None] | None
              ) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], float | None] | None:
    """``bound`` as a function of (facade, args, kwargs): a parameter name of the twin
    (its value bounds the call), or a function given the facade and that value."""
    if bound is None:
        return None
    if isinstance(bound, str):
        name, compute = bound, None
    else:
        name, compute = bound.__name__.lstrip("_").removeprefix("bound_"), bound
    params = list(inspect.signature(twin).parameters.values())[1:]
    index = next(i for i, p in enumerate(params) if p.name == name)
    default = params[index].default

    def value(facade: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
        given = args[index] if len(args) > index else kwargs.get(name, default)
        return given if compute is None else compute(facade, given)

    return value


def blocking(twin: Callable[Concatenate[Any, P], Awaitable[R]], *,
             bound: str | Callable[..., float | None] | None = None,
             ) -> Callable[Concatenate[Any, P], R]:
    """The blocking verb of the asyncio method ``twin``: its result, waited for.

    ``bound``: what bounds the call, when not the operation timeout: the name of one of
    its parameters (a timeout), or a function ``bound_<parameter>(facade, value)``."""
    name = twin.__name__
    bound_of = _bound_of(twin, bound)

    def verb(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        method = self._twin_method(name, kwargs)
        limit = None if bound_of is None else bound_of(self, args, kwargs)
        result: R = self._portal.call(method, *args, timeout=self._deadline(limit))
        return result

    _declare(twin, verb, None)
    return verb


@overload
def blocking_future(twin: Callable[Concatenate[Any, P], Awaitable[asyncio.Future[T]]], *,
                    send: bool = False,
                    ) -> Callable[Concatenate[Any, P], concurrent.futures.Future[T]]: ...
@overload
def blocking_future(
    twin: Callable[Concatenate[Any, P], Awaitable[asyncio.Future[T] | None]], *,
    send: bool = False,
) -> Callable[Concatenate[Any, P], concurrent.futures.Future[T] | None]: ...
def blocking_future(
    twin: Callable[Concatenate[Any, P], Awaitable[asyncio.Future[T] | None]], *,
    send: bool = False,
) -> Callable[Concatenate[Any, P], concurrent.futures.Future[T] | None]:
    """The blocking verb of the asyncio method ``twin``, which returns an asyncio future
    (or None): the caller gets a ``concurrent.futures.Future`` following it.

    ``send``: the verb sends a message, so a facade with a send window hands it to the
    window and returns at once (see :class:`SendWindow`); a ``no_reply`` parameter of the
    twin says when there is no future to return."""
    name = twin.__name__
    params = list(inspect.signature(twin).parameters.values())[1:]
    no_reply = next((i for i, p in enumerate(params) if p.name == "no_reply"), None)

    def verb(self: Any, /, *args: P.args, **kwargs: P.kwargs
             ) -> concurrent.futures.Future[T] | None:
        method = self._twin_method(name, kwargs)
        window = self._window if send else None
        if window is None:
            future: concurrent.futures.Future[T] | None = self._future(method, *args)
            return future
        quiet = no_reply is not None and bool(
            args[no_reply] if len(args) > no_reply else kwargs.get("no_reply", False))
        sent: concurrent.futures.Future[T] | None = self._send(window, method, args, quiet)
        return sent

    _declare(twin, verb, "concurrent.futures.Future[Any]")
    return verb
