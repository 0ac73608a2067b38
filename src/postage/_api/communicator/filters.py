"""Broadcast filters: deliver a broadcast to a subscriber only if its subject/sender match.

A filter value is a string (``*`` matches any run of characters, dots included, as in
kiwiPy; everything else is literal and the whole value must match), a compiled regular
expression (``fullmatch``), or any other value compared with ``==``. Several filters of
one kind are alternatives (any may match); subject and sender filters must both pass.
"""

from __future__ import annotations

__all__ = ["BroadcastFilter", "Matcher", "compile_filter"]

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[Any], bool]


def compile_filter(value: Any) -> Matcher:
    """A predicate for one subject or sender filter value."""
    if isinstance(value, str):
        pattern = re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)
        return lambda candidate: isinstance(candidate, str) and (
            pattern.fullmatch(candidate) is not None
        )
    if isinstance(value, re.Pattern):
        regex: re.Pattern[Any] = value
        return lambda candidate: isinstance(candidate, str | bytes) and (
            regex.fullmatch(candidate) is not None
        )
    return lambda candidate: bool(candidate == value)


class BroadcastFilter:
    """A broadcast subscriber that passes on only broadcasts whose subject/sender match.

    ``BroadcastFilter(callback, subject="log.*", sender=None)``; add more alternatives with
    :meth:`add_subject_filter` and :meth:`add_sender_filter`. ``callback`` has the broadcast
    signature ``(comm, body, sender, subject, msg_id)`` and may be ``async def``.
    A broadcast without a subject (or sender) does not match a subject (or sender) filter.
    """

    __slots__ = ("_sender_filters", "_subject_filters", "subscriber")

    # how one filter value becomes a predicate (``postage.kiwipy`` keeps kiwiPy's rules)
    _matcher: Callable[[Any], Matcher] = staticmethod(compile_filter)

    def __init__(self, subscriber: Callable[..., Any], subject: Any = None,
                 sender: Any = None) -> None:
        if not callable(subscriber):
            raise TypeError("BroadcastFilter needs a callable subscriber")
        self.subscriber = subscriber
        self._subject_filters: list[Matcher] = []
        self._sender_filters: list[Matcher] = []
        if subject is not None:
            self.add_subject_filter(subject)
        if sender is not None:
            self.add_sender_filter(sender)

    def add_subject_filter(self, subject_filter: Any) -> None:
        """Also accept broadcasts whose subject matches ``subject_filter``."""
        self._subject_filters.append(self._matcher(subject_filter))

    def add_sender_filter(self, sender_filter: Any) -> None:
        """Also accept broadcasts whose sender matches ``sender_filter``."""
        self._sender_filters.append(self._matcher(sender_filter))

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """True if the broadcast must NOT reach the subscriber."""
        if self._subject_filters and not any(m(subject) for m in self._subject_filters):
            return True
        return bool(self._sender_filters) and not any(m(sender) for m in self._sender_filters)

    def __call__(self, comm: Any, body: Any, sender: Any = None, subject: Any = None,
                 msg_id: Any = None) -> Any:
        """Call the subscriber unless filtered (for direct use; communicators check first)."""
        if self.is_filtered(sender, subject):
            return None
        return self.subscriber(comm, body, sender, subject, msg_id)

    def __repr__(self) -> str:
        return (f"BroadcastFilter({self.subscriber!r}, {len(self._subject_filters)} subject "
                f"filter(s), {len(self._sender_filters)} sender filter(s))")
