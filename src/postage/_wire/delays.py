"""Where a delayed message waits, without any broker plugin: names and routing keys only.

A delay is a number of ``UNIT`` (10 ms) ticks written in binary, most significant bit
first, as the first ``LEVELS`` words of the routing key: ``1.0.0.1...0.q.jobs``. The
message enters at the exchange of the highest level and walks down: the exchange of level
``L`` (topic) sends it to the queue of level ``L`` when bit ``L`` is 1 (a quorum queue
whose ``x-message-ttl`` is ``2**L`` ticks, dead-lettering at least once to the exchange of
level ``L - 1``), or straight on to that exchange when the bit is 0 (an
exchange-to-exchange binding). Below level 0 is the *deliver* exchange, where the rest of
the key names the target: ``q.<queue>`` (bound to that queue) or ``x.<exchange>`` (bound
to that exchange, with the target's own routing key in the ``CC`` header, which routing
and dead-lettering keep). Every level queue holds messages of one TTL only, so none waits
behind a longer one.

Each broker user has levels of its own (:class:`DelayNames`): ``postage.delay.<user>.``
then the level or ``deliver`` / ``unrouted``. RabbitMQ checks permissions when a target is
bound to a deliver exchange, so a user's deliver exchange reaches only targets that user
may write to, whatever routing key or ``CC`` a message on its levels carries.
"""

from __future__ import annotations

__all__ = [
    "LEVELS",
    "MAX_DELAY",
    "UNIT",
    "DelayNames",
    "delay_key",
    "level_pattern",
    "resolve_delay",
    "target_pattern",
    "ticks",
]

import datetime
import re
from dataclasses import dataclass

from .._exceptions import ConfigurationError

LEVELS = 28
UNIT = 0.01  # seconds per tick
MAX_DELAY = (2**LEVELS - 1) * UNIT  # about 31 days
_ANY_LEVELS = ".".join(["*"] * LEVELS)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class DelayNames:
    """The delay levels of one broker user: every name starts with :attr:`prefix`,
    ``postage.delay.<user>.``, where ``<user>`` keeps letters, digits, ``_`` and ``-`` and
    writes any other character as ``%XX`` (its UTF-8 bytes), so that no user's prefix is
    the start of another's."""

    user: str

    @property
    def prefix(self) -> str:
        escaped = _UNSAFE.sub(
            lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), self.user)
        return f"postage.delay.{escaped}."

    @property
    def deliver(self) -> str:
        return self.prefix + "deliver"

    @property
    def unrouted(self) -> str:
        """The queue (and the deliver exchange's alternate exchange) of delayed messages
        whose target is gone when their time comes."""
        return self.prefix + "unrouted"

    @property
    def entry(self) -> str:
        return self.level_exchange(LEVELS - 1)

    def level_exchange(self, level: int) -> str:
        """The exchange of ``level`` (:attr:`deliver` below level 0)."""
        return f"{self.prefix}{level}" if level >= 0 else self.deliver

    def level_queue(self, level: int) -> str:
        return f"{self.prefix}{level}.queue"


def level_pattern(level: int, bit: str) -> str:
    """The binding key of ``level``'s exchange for messages whose bit ``level`` is ``bit``."""
    return ".".join(["*"] * (LEVELS - 1 - level) + [bit, "#"])


def ticks(delay: float) -> int:
    """``delay`` seconds in ticks (rounded); ConfigurationError outside 0 to MAX_DELAY."""
    if not 0 <= delay <= MAX_DELAY:
        raise ConfigurationError(
            f"a delay must be between 0 and {MAX_DELAY:.0f} s, not {delay!r}")
    return round(delay / UNIT)


def _target(kind: str, name: str) -> str:
    if kind not in ("q", "x") or not name:
        raise ConfigurationError(f"a delayed message needs a queue or exchange, not {name!r}")
    if any(word in ("*", "#") for word in name.split(".")):
        raise ConfigurationError(
            f"{name!r} cannot receive delayed messages: '*' and '#' are wildcards of the "
            "routing key that carries the delay")
    return f"{kind}.{name}"


def delay_key(delay: float, kind: str, name: str) -> str:
    """The routing key that makes a message wait ``delay`` seconds, then go to the queue
    (``kind`` ``"q"``) or exchange (``"x"``) ``name``."""
    bits = format(ticks(delay), f"0{LEVELS}b")
    return ".".join(bits) + "." + _target(kind, name)


def target_pattern(kind: str, name: str) -> str:
    """The binding key, on a deliver exchange, of the queue or exchange ``name``."""
    return f"{_ANY_LEVELS}.{_target(kind, name)}"


def resolve_delay(delay: float | None, not_before: datetime.datetime | None) -> float | None:
    """Seconds to wait for ``delay=`` or ``not_before=`` (a datetime; a naive one is local
    time, as ``datetime.now()`` gives); None for neither. A time in the past is 0."""
    if not_before is None:
        if delay is not None and not 0 <= delay <= MAX_DELAY:
            raise ConfigurationError(
                f"a delay must be between 0 and {MAX_DELAY:.0f} s, not {delay!r}")
        return delay
    if delay is not None:
        raise ConfigurationError("give delay= or not_before=, not both")
    if not isinstance(not_before, datetime.datetime):
        raise ConfigurationError(f"not_before must be a datetime, not {not_before!r}")
    now = datetime.datetime.now(not_before.tzinfo)
    return max(0.0, (not_before - now).total_seconds())
