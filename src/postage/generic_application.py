"""GenericApplication: a component addressable by name, host, pid and group (seed 003).

Each instance owns three queues, all ``auto_delete``:

* ``sid`` = ``{name}``: shared by every instance with that name (round robin);
* ``hid`` = ``{name}@{host}``: shared by the instances with that name on one host;
* ``uid`` = ``{pid}@{host}``: this instance only;

bound to :class:`GenericApplicationExchange` (a durable *direct* exchange: every key is
an exact address, and host names may contain dots, which a topic exchange would split)
with these routing keys:

=====================  =========================  =====================================
key                    queue                      reaches
=====================  =========================  =====================================
``{name}``             uid                        every instance named ``name``
``{name}/rr``          sid                        one of them, in turn
``@{host}``            uid                        every instance on ``host``
``{name}@{host}``      uid                        every instance named ``name`` on host
``{name}@{host}/rr``   hid                        one of those, in turn
``{pid}@{host}``       uid                        exactly one instance
``{name}#{group}``     uid                        every member of ``group``
``{name}#{group}/rr``  ``{name}#{group}`` (shared) one member of ``group``, in turn
=====================  =========================  =====================================

Groups are given at start or joined and left at runtime with the ``join_group`` and
``leave_group`` commands (parameter ``group_name``); both group keys work at runtime
(a join starts consuming the shared group queue, a leave stops consuming it). The
``ping`` RPC answers ``MessageResult(fingerprint)``.

Presence: while its microthread runs, an instance announces itself on the topic exchange
``postage.presence`` (``online``, a ``heartbeat`` every ``presence_interval`` seconds with
its groups, ``offline`` on quit, restart or a closed scheduler) and answers presence
probes; see :mod:`postage._api.presence`. Set ``presence_interval = None`` to turn it off.
"""

from __future__ import annotations

__all__ = [
    "GenericApplication",
    "GenericApplicationExchange",
    "GenericApplicationProducer",
]

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from . import messaging
from ._api.classic import runtime as _runtime
from ._api.presence import PRESENCE_EXCHANGE, PresenceAnnouncer
from ._blocking.facade import outer_deadline

log = logging.getLogger("postage.classic.application")


class GenericApplicationExchange(messaging.Exchange):
    """The exchange GenericApplication instances are addressed through."""

    name = "generic-application-exchange"
    exchange_type = "direct"
    passive = False
    durable = True
    auto_delete = False


class GenericApplication(messaging.MessageProcessor):
    """A processor bound to the standard keys of its name, host, pid and groups."""

    exchange_class: ClassVar[type[messaging.Exchange]] = GenericApplicationExchange
    presence_interval: ClassVar[float | None] = 10.0
    presence_exchange: ClassVar[str] = PRESENCE_EXCHANGE

    def __init__(self, fingerprint: dict[str, Any], vhost: str | None = None,
                 groups: Iterable[str] | None = None, hup: Any = None) -> None:
        super().__init__(fingerprint, [], hup, vhost)
        self.vhost = vhost if vhost is not None else messaging.global_vhost
        name, pid, host = fingerprint["name"], fingerprint["pid"], fingerprint["host"]
        self.name, self.pid, self.host = str(name), str(pid), str(host)
        auto = {"auto_delete": True}
        self.sid = {"name": f"{name}", "flags": auto}
        self.hid = {"name": f"{name}@{host}", "flags": auto}
        self.uid = {"name": f"{pid}@{host}", "flags": auto}
        self.groups: list[str] = []
        self._presence: PresenceAnnouncer | None = None
        self.add_eqk([(self.exchange_class, [
            (self.sid, f"{name}/rr"),
            (self.uid, f"{name}"),
            (self.uid, f"@{host}"),
            (self.hid, f"{name}@{host}/rr"),
            (self.uid, f"{name}@{host}"),
            (self.uid, f"{pid}@{host}"),
        ])])
        for group in groups or ():
            self.join_group(group)

    # -- presence (see postage._api.presence) -------------------------------------------------

    def main(self) -> Iterator[None]:
        self._presence_start()
        try:
            yield from super().main()
        finally:
            self._presence_stop()

    def restart(self) -> None:
        self._presence_stop()  # the new process image says online again
        super().restart()

    def _presence_start(self) -> None:
        if self.presence_interval is None or self._presence is not None:
            return
        announcer = PresenceAnnouncer(
            self.consumer.core, self.fingerprint, interval=self.presence_interval,
            exchange=self.presence_exchange, info=lambda: {"groups": list(self.groups)})
        try:
            _runtime.portal().call(
                announcer.start, timeout=outer_deadline(None, self.consumer.operation_timeout))
        except Exception as exc:  # presence is best effort: the component works without it
            log.warning("%s: cannot announce presence: %s", self.name, exc)
            return
        self._presence = announcer

    def _presence_stop(self) -> None:
        announcer, self._presence = self._presence, None
        if announcer is not None:
            try:
                _runtime.portal().call(announcer.stop, timeout=outer_deadline(5.0, 5.0))
            except Exception as exc:
                log.warning("%s: cannot announce going offline: %s", self.name, exc)

    def _group_queue(self, group: str) -> dict[str, Any]:
        return {"name": f"{self.name}#{group}", "flags": {"auto_delete": True}}

    def join_group(self, group: str) -> None:
        """Receive ``{name}#{group}`` (fanout) and ``{name}#{group}/rr`` (round robin)."""
        if group in self.groups:
            return
        log.debug("%s joining group %s", self.name, group)
        self.consumer.queue_bind(self.exchange_class, self.uid, f"{self.name}#{group}")
        self.consumer.queue_bind(self.exchange_class, self._group_queue(group),
                                 f"{self.name}#{group}/rr")
        self.groups.append(group)

    def leave_group(self, group: str) -> None:
        """Stop receiving both keys of ``group``."""
        if group not in self.groups:
            return
        log.debug("%s leaving group %s", self.name, group)
        self.groups.remove(group)
        self.consumer.queue_unbind(self.exchange_class, self.uid, f"{self.name}#{group}")
        # The group queue is shared: unbinding it would cut off the other members, so this
        # instance only stops consuming it (auto_delete removes it after the last member).
        self.consumer.queue_unsubscribe(self._group_queue(group))

    @staticmethod
    def _group_name(content: Any) -> str:
        params = content.get("parameters", {}) if isinstance(content, dict) else {}
        if isinstance(params, str) and params:
            return params
        if isinstance(params, dict):
            if "group_name" in params:
                return str(params["group_name"])
            kwds, args = params.get("kwds") or {}, params.get("args") or []
            if "group_name" in kwds:
                return str(kwds["group_name"])
            if args:
                return str(args[0])
        raise ValueError(f"no group_name in {content!r}")

    @messaging.RpcHandler("command", "ping")
    def msg_ping(self, content: Any, reply_func: Callable[[Any], None]) -> None:
        reply_func(messaging.MessageResult(self.fingerprint))

    @messaging.MessageHandler("command", "join_group")
    def msg_join_group(self, content: Any) -> None:
        self.join_group(self._group_name(content))

    @messaging.MessageHandler("command", "leave_group")
    def msg_leave_group(self, content: Any) -> None:
        self.leave_group(self._group_name(content))


class GenericApplicationProducer(messaging.GenericProducer):
    """Sends to GenericApplication keys: always pass ``_key`` (e.g. ``'monitor/rr'``)."""

    eks = [(GenericApplicationExchange, "")]

    def build_message_join_group(self, group_name: str) -> messaging.Message:
        return messaging.MessageCommand("join_group", {"group_name": group_name})

    def build_message_leave_group(self, group_name: str) -> messaging.Message:
        return messaging.MessageCommand("leave_group", {"group_name": group_name})

    def build_message_quit(self) -> messaging.Message:
        return messaging.MessageCommand("quit")

    def build_message_restart(self) -> messaging.Message:
        return messaging.MessageCommand("restart")

    def build_rpc_ping(self) -> messaging.Message:
        return messaging.RpcCommand("ping")
