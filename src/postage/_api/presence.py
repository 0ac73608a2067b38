"""Presence: components announce themselves; watchers list the live ones and spot dead ones.

Wire (all on the durable topic exchange ``postage.presence``):

* status messages: classic ``MessageStatus`` envelopes (type ``status``, category
  ``message``, name ``online`` / ``heartbeat`` / ``offline``) carrying the component's
  fingerprint, published with routing key ``status.<name>`` and content
  ``{"interval": seconds, "time": unix time, ...extra}`` (GenericApplication adds
  ``groups``). ``online`` on start, ``heartbeat`` every ``interval`` seconds, ``offline``
  on a clean stop. Each expires (AMQP ``expiration``) after three intervals, so a watcher
  never reads stale news from a backlog.
* probe: every announcer consumes an exclusive queue bound with key ``probe`` and answers an
  RPC ``ping`` sent there with ``MessageResult(fingerprint)`` -- what GenericApplication's
  own ``ping`` answers -- plus ``_reserved["presence"] = {"interval", ...extra}``. A watcher
  that starts late gathers these answers to learn who is there without waiting for a
  heartbeat (``postage ping`` with no target does just that).

A component is *dead* when it has not been heard of for :data:`DEAD_AFTER` intervals
without saying ``offline``.
"""

from __future__ import annotations

__all__ = [
    "DEAD_AFTER",
    "PRESENCE_EXCHANGE",
    "PROBE_KEY",
    "ComponentState",
    "PresenceAnnouncer",
    "PresenceWatcher",
    "component_key",
]

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from .._core.core import Core, HandlingOptions, Subscription
from .._core.middleware import IncomingMessage, overrides
from .._exceptions import ConfigurationError, PostageError
from .._wire.envelope import build_envelope, result_content
from .gather import gather_replies

log = logging.getLogger("postage.presence")

PRESENCE_EXCHANGE = "postage.presence"
PROBE_KEY = "probe"
STATUS_KEY_PREFIX = "status."
ONLINE, HEARTBEAT, OFFLINE = "online", "heartbeat", "offline"
DEAD_AFTER = 3
DEFAULT_INTERVAL = 10.0
_KEY_FIELDS = ("name", "type", "pid", "host", "vhost")

Info = Callable[[], Mapping[str, Any]]
# Presence news is transient (no-ack, expiring): what cannot be handled is logged, dropped
# Postage's own control traffic: the connection's middleware does not see it (a monitor's
# probe must not count as a message the component handled)
_NEWS = HandlingOptions(errors="log", dead_letter_queue=None, middleware=False)
_STATUS = HandlingOptions(errors="log", envelope=True, dead_letter_queue=None,
                          middleware=False)


def component_key(fingerprint: Mapping[str, Any]) -> tuple[str, ...]:
    """What tells two components apart: name, type, pid, host and vhost."""
    return tuple(str(fingerprint.get(k)) for k in _KEY_FIELDS)


async def _declare_exchange(core: Core, exchange: str) -> None:
    await core.declare_exchange(exchange, "topic", durable=True)


class PresenceAnnouncer:
    """Announce ``fingerprint`` on ``exchange``: online, heartbeats, offline; answer probes.

    ``info`` (optional) returns extra content for each status message (e.g. groups).
    Use ``await start()`` / ``await stop()`` or ``async with``. :meth:`stop` says
    ``offline``; a process that dies says nothing and watchers notice the silence.
    """

    def __init__(self, core: Core, fingerprint: Mapping[str, Any], *,
                 interval: float = DEFAULT_INTERVAL, exchange: str = PRESENCE_EXCHANGE,
                 info: Info | None = None) -> None:
        if interval <= 0:
            raise ConfigurationError("the presence interval must be positive")
        self.core = core
        self.fingerprint = dict(fingerprint)
        self.interval = float(interval)
        self.exchange = exchange
        self._info = info
        self._queue = f"{exchange}.probe.{uuid.uuid4().hex}"
        self._consumer: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def __aenter__(self) -> PresenceAnnouncer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def _extra(self) -> dict[str, Any]:
        values: dict[str, Any] = {"interval": self.interval}
        for mw in self.core.middleware:  # e.g. the telemetry's handled messages
            if overrides(mw, "presence_info"):
                try:
                    values.update(mw.presence_info())
                except Exception:
                    log.exception("presence_info of %r failed", mw)
        if self._info is not None:
            try:
                values.update(self._info())
            except Exception:
                log.exception("presence info callback failed")
        return values

    async def start(self) -> None:
        """Declare the exchange, answer probes, say ``online``, start the heartbeats."""
        if self._started:
            return
        core = self.core
        await _declare_exchange(core, self.exchange)
        await core.declare_queue(self._queue, exclusive=True, auto_delete=True)
        await core.bind(self._queue, self.exchange, PROBE_KEY)
        self._consumer = await core.consume(self._queue, self._on_probe, _NEWS, no_ack=True)
        self._started = True
        await self.publish(ONLINE)
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self, *, offline: bool = True, timeout: float = 5.0) -> None:
        """Stop the heartbeats and probe answers; say ``offline`` unless told not to."""
        if not self._started:
            return
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if offline:
            with contextlib.suppress(PostageError, TimeoutError):
                await asyncio.wait_for(self.publish(OFFLINE), timeout)
        if self._consumer is not None:
            with contextlib.suppress(PostageError):
                await self._consumer.cancel(timeout)
            self._consumer = None
        with contextlib.suppress(PostageError, TimeoutError):
            await asyncio.wait_for(self.core.delete_queue(self._queue), timeout)

    async def publish(self, status: str) -> None:
        """Publish one status message (``online``, ``heartbeat``, ``offline``...)."""
        content = self._extra()
        content["time"] = time.time()
        envelope = build_envelope("status", status, "message", content, self.fingerprint)
        expiration = str(int(self.interval * DEAD_AFTER * 1000))
        await self.core.publish(
            self.exchange, STATUS_KEY_PREFIX + status, self.core.encode(envelope),
            self.core.properties(expiration=expiration), mandatory=False,
            timeout=max(1.0, self.interval),
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.publish(HEARTBEAT)
            except PostageError as exc:  # reconnecting: the next beat will tell
                log.warning("cannot send a presence heartbeat: %s", exc)

    async def _on_probe(self, message: IncomingMessage) -> None:
        delivery = message.delivery
        if not delivery.reply_to:
            return
        reserved = {"presence": self._extra()}
        envelope = build_envelope("result", "ping", "message",
                                  result_content("success", self.fingerprint, ""),
                                  self.fingerprint, reserved)
        await self.core.reply(delivery, self.core.encode(envelope), self.core.properties())


@dataclass(frozen=True, slots=True)
class ComponentState:
    """What a watcher knows of one component.

    ``status`` is the last status heard (``online``, ``heartbeat``, ``offline``; a probe
    answer counts as ``online``); ``first_seen``/``last_seen`` are ``time.monotonic()``
    values; ``interval`` the heartbeat period it announced; ``info`` the rest of its last
    status content (e.g. ``groups``).
    """

    fingerprint: Mapping[str, Any]
    status: str
    first_seen: float
    last_seen: float
    interval: float
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, ...]:
        return component_key(self.fingerprint)

    def age(self, now: float | None = None) -> float:
        """Seconds since it was last heard of."""
        return (time.monotonic() if now is None else now) - self.last_seen

    def alive(self, now: float | None = None) -> bool:
        """Not offline, and heard of within the last :data:`DEAD_AFTER` intervals."""
        return self.status != OFFLINE and self.age(now) <= DEAD_AFTER * self.interval

    def dead(self, now: float | None = None) -> bool:
        """Silent for :data:`DEAD_AFTER` intervals without having said ``offline``."""
        return self.status != OFFLINE and not self.alive(now)


class PresenceWatcher:
    """Follow the presence exchange: who is online, who left, who went silent.

    Built on a Core or on what has one: ``PresenceWatcher(client)`` for an
    :class:`~postage.AsyncClient`, ``PresenceWatcher(comm.aio)`` for a communicator.
    ``await start()`` (or ``async with``) binds an exclusive queue to ``status.#``;
    :meth:`probe` asks every announcer to answer at once. ``on_change(state)`` (optional,
    called on the loop) sees every status message. ``components()`` lists the live ones,
    ``dead()`` those silent for :data:`DEAD_AFTER` intervals.
    """

    def __init__(self, core: Core | Any, *, exchange: str = PRESENCE_EXCHANGE,
                 default_interval: float = DEFAULT_INTERVAL,
                 on_change: Callable[[ComponentState], None] | None = None,
                 fingerprint: Mapping[str, Any] | None = None) -> None:
        # a Core, or what has one: an AsyncClient, an asyncio communicator
        source = getattr(core, "core", core)
        if not isinstance(source, Core):
            raise ConfigurationError(
                "PresenceWatcher needs a Core or an object with one (AsyncClient, "
                f"postage.aio communicator), not {type(core).__name__}")
        self.core: Core = source
        self.exchange = exchange
        self.default_interval = default_interval
        self.on_change = on_change
        self.fingerprint = dict(fingerprint or {"name": "postage-presence-watcher"})
        self._queue = f"{exchange}.watch.{uuid.uuid4().hex}"
        self._consumer: Subscription | None = None
        self._states: dict[tuple[str, ...], ComponentState] = {}

    async def __aenter__(self) -> PresenceWatcher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._consumer is not None:
            return
        core = self.core
        await _declare_exchange(core, self.exchange)
        await core.declare_queue(self._queue, exclusive=True, auto_delete=True)
        await core.bind(self._queue, self.exchange, STATUS_KEY_PREFIX + "#")
        self._consumer = await core.consume(self._queue, self._on_status, _STATUS, no_ack=True)

    async def stop(self, timeout: float = 5.0) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(PostageError):
                await consumer.cancel(timeout)
            with contextlib.suppress(PostageError, TimeoutError):
                await asyncio.wait_for(self.core.delete_queue(self._queue), timeout)

    async def probe(self, timeout: float = 1.0) -> int:
        """Ask every announcer for its fingerprint; return how many answered in time."""
        replies = await gather_replies(
            self.core, self.exchange, PROBE_KEY, "ping", fingerprint=self.fingerprint,
            timeout=timeout, mandatory=False,
        )
        count = 0
        for reply in replies:
            if reply.error is not None or not reply.fingerprint:
                continue
            raw = reply.reserved.get("presence")
            info = dict(raw) if isinstance(raw, Mapping) else {}
            self._update(reply.fingerprint, ONLINE, info)
            count += 1
        return count

    def _update(self, fingerprint: Mapping[str, Any], status: str,
                info: Mapping[str, Any]) -> ComponentState:
        now = time.monotonic()
        details = {k: v for k, v in info.items() if k not in ("interval", "time")}
        interval = info.get("interval")
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            interval = self.default_interval
        key = component_key(fingerprint)
        old = self._states.get(key)
        if old is None or (old.status == OFFLINE and status != OFFLINE):
            state = ComponentState(dict(fingerprint), status, now, now, float(interval), details)
        else:
            state = replace(old, status=status, last_seen=now, interval=float(interval),
                            info=details or old.info)
        self._states[key] = state
        return state

    async def _on_status(self, message: IncomingMessage) -> None:
        envelope = message.envelope  # an undecodable one is logged and dropped
        assert envelope is not None
        fingerprint = envelope.get("fingerprint")
        content = envelope.get("content")
        if envelope.get("type") != "status" or not isinstance(fingerprint, Mapping) \
                or not fingerprint:
            return
        info = content if isinstance(content, Mapping) else {}
        state = self._update(fingerprint, str(envelope["name"]), info)
        if self.on_change is not None:
            try:
                self.on_change(state)
            except Exception:
                log.exception("presence on_change callback failed")

    def states(self) -> list[ComponentState]:
        """Everything heard of, live, offline or dead, sorted by name, host, pid."""
        return sorted(self._states.values(), key=_sort_key)

    def components(self, now: float | None = None) -> list[ComponentState]:
        """The live components."""
        return [s for s in self.states() if s.alive(now)]

    def dead(self, now: float | None = None) -> list[ComponentState]:
        """Components silent for :data:`DEAD_AFTER` intervals without saying offline."""
        return [s for s in self.states() if s.dead(now)]

    def get(self, fingerprint: Mapping[str, Any]) -> ComponentState | None:
        return self._states.get(component_key(fingerprint))


def _sort_key(state: ComponentState) -> tuple[str, str, str]:
    fp = state.fingerprint
    return (str(fp.get("name")), str(fp.get("host")), str(fp.get("pid")).rjust(12))
