"""``postage monitor``: a live view of the components and queues of a virtual host.

Components come from presence (a probe at start, then the ``online``/``heartbeat``/
``offline`` messages): name, type, pid, host, groups, status (``online``, ``offline``, or
``DEAD`` after three silent heartbeat intervals) and when each was last heard of.

Queues come from the management HTTP API when one is named (``--management-url`` or
``POSTAGE_MANAGEMENT_URL``; never guessed) and answers: every queue of the vhost with its
depth, consumers and publish/deliver rates. Its credentials are its own: the user
information of that URL, else ``POSTAGE_MANAGEMENT_USER``/``POSTAGE_MANAGEMENT_PASSWORD``,
else the broker URL's. With an ``amqps://`` broker URL it must be ``https://`` (or on this
machine). Otherwise queues come from AMQP (passive declares): the queues of the live
GenericApplications (``name``, ``name@host``, ``pid@host``, ``name#group``) and the
``--queue`` ones, with depth and consumers; the rates are then computed from the depth
change between two refreshes (``-`` at first).

Components instrumented with OpenTelemetry (``postage.opentelemetry``) report the messages
they handled and the time spent on them in their presence status: the components table
shows the total (HANDLED), the rate between two of their status messages (MSG/S, with a
bar) and the mean handler time (HANDLER MS); ``-`` for a component that is not
instrumented.

The view refreshes in place every ``--interval`` seconds until Ctrl-C; ``--once`` prints
one snapshot (plain text) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from postage._api.presence import PresenceWatcher
from postage._core.core import Core
from postage._exceptions import ConfigurationError, NotFound, PostageError
from postage._settings import redact_url
from postage._tooling.cli import common as _common
from postage._wire.properties import MAX_NAME_BYTES

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

    from postage._api.presence import ComponentState
    from postage._tooling.cli import Subparsers

HTTP_TIMEOUT = 2.0


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "monitor", help="live view of components (presence) and queues (depths, rates)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between refreshes (default: 2)")
    parser.add_argument("--probe-timeout", type=float, default=1.0,
                        help="seconds to wait for components to answer the presence probe")
    parser.add_argument("--management-url", default=None,
                        help="management API base URL, e.g. https://HOST:15671 (default: "
                             "$POSTAGE_MANAGEMENT_URL; none: queues from AMQP)")
    parser.add_argument("--no-management", action="store_true",
                        help="use AMQP only for queue figures")
    parser.add_argument("--queue", action="append", default=[], metavar="QUEUE",
                        help="a queue to show as well (repeatable)")
    _common.add_url(parser)
    parser.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What the monitor shows of a queue; rates are messages per second (None: unknown)."""

    name: str
    messages: int
    consumers: int
    publish_rate: float | None = None
    deliver_rate: float | None = None


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Management:
    """Where the management API is and how to log in (the password is kept out of any
    output, its repr included)."""

    base: str
    user: str
    password: str = field(repr=False)
    vhost: str = "/"

    @classmethod
    def for_url(cls, amqp_url: str, base: str | None,
                environ: Mapping[str, str] | None = None) -> Management | None:
        """The management API named by ``base`` (or ``POSTAGE_MANAGEMENT_URL``), None when
        none is: it is never guessed, and credentials never go to a guessed endpoint."""
        env = os.environ if environ is None else environ
        base = base or env.get("POSTAGE_MANAGEMENT_URL") or None
        if base is None:
            return None
        sp, mp = urlsplit(amqp_url), urlsplit(base)
        if mp.scheme not in ("http", "https"):
            raise ConfigurationError(
                f"--management-url must be http(s)://, not {redact_url(base)!r}")
        if sp.scheme == "amqps" and mp.scheme != "https" and mp.hostname not in _LOOPBACK:
            raise ConfigurationError(
                "the broker URL uses TLS: the management URL must be https:// too (its "
                "credentials would cross the network in clear)")
        vhost = unquote(sp.path[1:]) if len(sp.path) > 1 else "/"
        if mp.username is not None:  # its own credentials, in the management URL
            user, password = unquote(mp.username), unquote(mp.password or "")
        elif env.get("POSTAGE_MANAGEMENT_USER"):
            user = env["POSTAGE_MANAGEMENT_USER"]
            password = env.get("POSTAGE_MANAGEMENT_PASSWORD", "")
        else:
            user, password = unquote(sp.username or "guest"), unquote(sp.password or "guest")
        netloc = mp.hostname or ""
        if mp.port is not None:
            netloc = f"{netloc}:{mp.port}"
        clean = mp._replace(netloc=netloc).geturl().rstrip("/")
        return cls(clean, user, password, vhost)

    def fetch_queues(self) -> list[QueueFigures]:
        """Every queue of the vhost (blocking: call it in a thread)."""
        url = f"{self.base}/api/queues/{quote(self.vhost, safe='')}"
        request = urllib.request.Request(url)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with _NO_REDIRECTS.open(request, timeout=HTTP_TIMEOUT) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # refused below: the operator must name the URL
                raise ConfigurationError(exc.msg) from None
            raise
        return parse_management_queues(data)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """The management API's credentials go to the URL the operator named, never to one a
    redirect names (it may be plain http://, or another host): a redirect is an error."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        raise urllib.error.HTTPError(
            req.full_url, code,
            f"the management API redirects to {redact_url(newurl)!r}; credentials are "
            "not sent there: give that URL with --management-url", headers, fp)


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def _rate(stats: Any, key: str) -> float | None:
    if not isinstance(stats, Mapping):
        return None
    details = stats.get(f"{key}_details")
    rate = details.get("rate") if isinstance(details, Mapping) else None
    return float(rate) if isinstance(rate, int | float) else None


def parse_management_queues(data: Any) -> list[QueueFigures]:
    """Queue figures from ``GET /api/queues/{vhost}`` (unknown fields are ignored)."""
    result = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        stats = item.get("message_stats")
        result.append(QueueFigures(
            item["name"], int(item.get("messages") or 0), int(item.get("consumers") or 0),
            _rate(stats, "publish"), _rate(stats, "deliver_get")))
    return sorted(result, key=lambda q: q.name)


def component_queues(states: Sequence[ComponentState]) -> list[str]:
    """The GenericApplication queues of live components: sid, hid, uid, group queues."""
    names: set[str] = set()
    for state in states:
        fp = state.fingerprint
        name, host, pid = fp.get("name"), fp.get("host"), fp.get("pid")
        if name is None or host is None or pid is None:
            continue
        names.update({f"{name}", f"{name}@{host}", f"{pid}@{host}"})
        groups = state.info.get("groups")
        for group in groups if isinstance(groups, list) else []:
            names.add(f"{name}#{group}")
    # a peer may announce a name no queue can have (too long, a control character):
    # it is shown, but its queues are not looked up
    return sorted(n for n in names if _queue_name_ok(n))


def _queue_name_ok(name: str) -> bool:
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
            and name.isprintable() and not name.startswith("amq."))


class Monitor:
    """Collects one snapshot after another; renders them with rich."""

    def __init__(self, core: Core, args: argparse.Namespace) -> None:
        self.core = core
        self.args = args
        self.watcher = PresenceWatcher(core, fingerprint=_common.fingerprint(core.settings))
        url = core.url
        self.url = redact_url(url)
        self.management: Management | None = (
            None if args.no_management else Management.for_url(url, args.management_url))
        self.source = "AMQP"
        self._previous: dict[str, tuple[float, int]] = {}
        self._activity = Activity()

    async def queues(self) -> list[QueueFigures]:
        if self.management is not None:
            try:
                figures = await asyncio.to_thread(self.management.fetch_queues)
            except (OSError, ValueError, urllib.error.URLError):
                self.management = None  # not reachable: AMQP from now on
            else:
                self.source = f"management API {self.management.base}"
                return figures
        self.source = "AMQP (passive declares)"
        names = sorted({*component_queues(self.watcher.components()), *self.args.queue})
        now = time.monotonic()
        result = []
        for name in names:
            try:
                messages, consumers = await self.core.queue_state(name, timeout=5.0)
            except NotFound:
                continue
            before = self._previous.get(name)
            rate = None if before is None else (messages - before[1]) / max(now - before[0],
                                                                              1e-9)
            self._previous[name] = (now, messages)
            result.append(QueueFigures(name, messages, consumers, rate, None))
        return result

    def render(self, queues: list[QueueFigures]) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        states = self.watcher.states()
        live = [s for s in states if s.alive(now)]
        title = Text(f"postage monitor  {self.url}  {len(live)} live component(s)  "
                     f"queues from {self.source}", style="bold")
        style = box.SIMPLE if self.args.once else box.ROUNDED
        comps = Table(title="components", title_justify="left", expand=False, box=style)
        for column in ("NAME", "TYPE", "PID", "HOST", "GROUPS", "STATUS", "LAST SEEN",
                       "HANDLED", "MSG/S", "HANDLER MS", ""):
            comps.add_column(column)
        figures = [self._activity.update(state) for state in states]
        top = max((f.rate or 0.0 for f in figures), default=0.0)
        for state, fig in zip(states, figures, strict=True):
            fp = state.fingerprint
            status = "DEAD" if state.dead(now) else state.status
            if status == "heartbeat":
                status = "online"
            groups = state.info.get("groups")
            comps.add_row(_cell(fp.get("name")), _cell(fp.get("type")), _cell(fp.get("pid")),
                          _cell(fp.get("host")),
                          _cell(",".join(map(str, groups)) if isinstance(groups, list) else ""),
                          status, f"{state.age(now):.1f}s ago",
                          "-" if fig.handled is None else str(fig.handled), _fmt(fig.rate),
                          _fmt(fig.handler_ms), bar(fig.rate, top),
                          style="red" if status == "DEAD" else None)
        table = Table(title="queues", title_justify="left", expand=False, box=style)
        for column in ("QUEUE", "MESSAGES", "CONSUMERS", "IN/S", "OUT/S"):
            table.add_column(column, justify="left" if column == "QUEUE" else "right")
        for q in queues:
            if q.name.startswith(self.watcher.exchange + "."):
                continue  # presence's own probe/watch queues
            table.add_row(_cell(q.name), str(q.messages), str(q.consumers), _fmt(q.publish_rate),
                          _fmt(q.deliver_rate))
        return Group(title, comps, table)


def _cell(value: Any) -> Text:
    """What a peer says, for a table cell: control characters escaped, and no markup
    (a name like ``[red]...`` is shown as written)."""
    from rich.text import Text

    return Text(_common.printable(value))


def _fmt(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


BAR_WIDTH = 16
_EIGHTHS = " \u258f\u258e\u258d\u258c\u258b\u258a\u2589"  # 0/8 to 7/8 of a block


def bar(value: float | None, top: float, width: int = BAR_WIDTH) -> str:
    """``value`` as a bar of eighths of a block, ``top`` filling ``width`` blocks."""
    if value is None or top <= 0:
        return ""
    eighths = round(max(0.0, min(value / top, 1.0)) * width * 8)
    full, rest = divmod(eighths, 8)
    return "\u2588" * full + _EIGHTHS[rest].strip()


@dataclass
class ActivityFigures:
    handled: int | None = None
    rate: float | None = None  # messages per second between two status messages
    handler_ms: float | None = None


class Activity:
    """Rates and handler times of instrumented components, from the totals their status
    messages carry (``messages_handled``, ``handler_seconds``)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], tuple[float, int, float]] = {}
        self._last: dict[tuple[str, ...], ActivityFigures] = {}

    def update(self, state: ComponentState) -> ActivityFigures:
        handled, seconds = (state.info.get("messages_handled"),
                            state.info.get("handler_seconds"))
        if not isinstance(handled, int) or not isinstance(seconds, int | float):
            return ActivityFigures()
        key = state.key
        before = self._seen.get(key)
        last = self._last.get(key)
        if before is not None and state.last_seen > before[0] and handled >= before[1]:
            count = handled - before[1]
            figures = ActivityFigures(
                handled, count / (state.last_seen - before[0]),
                (seconds - before[2]) / count * 1000 if count else None)
        elif before is not None and last is not None and state.last_seen == before[0]:
            return last  # no new status since: the same figures
        else:  # first sight: the mean over the component's life so far
            figures = ActivityFigures(handled, None,
                                      seconds / handled * 1000 if handled else None)
        self._seen[key] = (state.last_seen, handled, float(seconds))
        self._last[key] = figures
        return figures


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    async def main() -> int:
        async with _common.connect(args) as core:
            monitor = Monitor(core, args)
            await monitor.watcher.start()
            try:
                await monitor.watcher.probe(args.probe_timeout)
                if args.once:
                    console = Console(width=160, force_terminal=False, no_color=True,
                                      highlight=False)
                    console.print(monitor.render(await monitor.queues()))
                    return 0
                console = Console()
                with Live(monitor.render([]), console=console, auto_refresh=False) as live:
                    while True:
                        live.update(monitor.render(await monitor.queues()), refresh=True)
                        await asyncio.sleep(args.interval)
            finally:
                with contextlib.suppress(PostageError):
                    await monitor.watcher.stop(2.0)

    return _common.run(main)
