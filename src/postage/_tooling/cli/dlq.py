"""``postage dlq list|show|replay|purge``: the dead-letter queues an operator works with.

``list`` finds the ``*.dlq`` queues through the management API (``--management-url`` or
``POSTAGE_MANAGEMENT_URL``; AMQP cannot list queues) or takes their names. ``replay`` sends
each message back where it was first sent, confirmed before its dead letter is acked (see
:mod:`postage.dlq`). Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any

from postage._api.deadletters import DeadLetter, Where, peek, purge, replay, summary
from postage._exceptions import ConfigurationError, NotFound

from .common import add_url, connect, format_table, printable, run, settings_of
from .monitor import Management

if TYPE_CHECKING:
    from postage._tooling.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dlq", help="list, show, replay or purge dead-letter queues (<queue>.dlq)")
    commands = parser.add_subparsers(title="dlq commands", metavar="ACTION", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text, description=help_text)
        add_url(p)
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        return p

    listing = command("list", "the dead-letter queues with their counts and oldest age")
    listing.add_argument("queues", nargs="*", metavar="QUEUE",
                         help="dead-letter queues to show (default: every *.dlq the "
                         "management API lists)")
    listing.add_argument("--management-url", default=None,
                         help="management API base URL (default: POSTAGE_MANAGEMENT_URL)")
    listing.set_defaults(handler=run_list)

    show = command("show", "the first messages of a dead-letter queue, left in place")
    show.add_argument("queue", metavar="QUEUE")
    show.add_argument("-n", type=int, default=10, help="how many (default: 10)")
    show.set_defaults(handler=run_show)

    again = command("replay", "send messages back to the queue they were consumed from")
    again.add_argument("queue", metavar="QUEUE")
    again.add_argument("--limit", type=int, default=None, help="at most this many")
    again.add_argument("--where", action="append", default=[], metavar="EXPR",
                       help="only messages where FIELD=VALUE, FIELD!=VALUE or FIELD~TEXT "
                       "(FIELD: reason, error, queue, exchange, routing_key, attempts, body, "
                       "header.NAME); repeat for several (all must hold)")
    again.add_argument("--to-original", action="store_true",
                       help="send them to the exchange and routing key their headers name "
                       "instead (their sender could have written those: only for messages "
                       "you trust)")
    again.set_defaults(handler=run_replay)

    drop = command("purge", "drop every message of a dead-letter queue")
    drop.add_argument("queue", metavar="QUEUE")
    drop.add_argument("--force", action="store_true",
                      help="purge a queue whose name does not end in .dlq")
    drop.set_defaults(handler=run_purge)


def _age(when: datetime.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, (datetime.datetime.now(datetime.UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _dead_letter_queues(args: argparse.Namespace) -> list[str]:
    if args.queues:
        return list(args.queues)
    management = Management.for_url(settings_of(args).urls[0], args.management_url)
    if management is None:
        raise ConfigurationError(
            "AMQP cannot list queues: name the dead-letter queues (postage dlq list "
            "jobs.dlq ...), or give --management-url (or POSTAGE_MANAGEMENT_URL)")
    return [q.name for q in management.fetch_queues() if q.name.endswith(".dlq")]


def run_list(args: argparse.Namespace) -> int:
    names = _dead_letter_queues(args)

    async def main() -> int:
        rows: list[dict[str, Any]] = []
        async with connect(args) as core:
            for name in names:
                try:
                    count, oldest = await summary(core, name)
                except NotFound:
                    rows.append({"queue": name, "messages": None, "oldest": None})
                    continue
                rows.append({"queue": name, "messages": count,
                             "oldest": None if oldest is None else oldest.isoformat(),
                             "age": _age(oldest)})
        if args.json:
            _print_json(rows)
        else:
            print(format_table(["QUEUE", "MESSAGES", "OLDEST"], [
                (r["queue"], "missing" if r["messages"] is None else r["messages"],
                 r.get("age", "-")) for r in rows]))
        return 0

    return run(main)


def _describe(index: int, letter: DeadLetter) -> str:
    def when(t: datetime.datetime | None) -> str:
        return "-" if t is None else f"{t.isoformat()} ({_age(t)} ago)"

    lines = [
        f"#{index}  reason: {letter.reason}   attempts: {letter.attempts or '-'}",
        f"    error: {letter.error or '-'}",
        f"    from: queue {letter.source!r}; its headers say it was sent to exchange "
        f"{letter.exchange!r} with key {letter.routing_key!r} (the sender could have "
        "written those)",
        f"    first failure: {when(letter.first_failed)}",
        f"    last failure: {when(letter.last_failed)}",
        f"    dead-lettered: {when(letter.dead_lettered)}",
        f"    message id: {letter.properties.message_id or '-'}   content type: "
        f"{letter.properties.content_type or '-'}   {len(letter.body)} bytes",
        f"    body: {letter.preview()}",
    ]
    other = {k: v for k, v in letter.headers.items() if not k.startswith("x-")}
    if other:
        lines.append(f"    headers: {other}")
    return "\n".join(printable(line) for line in lines)


def run_show(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigurationError("-n must be at least 1")

    async def main() -> int:
        async with connect(args) as core:
            count, _ = await summary(core, args.queue)
            letters = await peek(core, args.queue, args.n)
        if args.json:
            _print_json({"queue": args.queue, "messages": count,
                         "shown": [letter.as_dict() for letter in letters]})
            return 0
        print(f"{args.queue}: {count} message{'s' if count != 1 else ''}"
              + (f", the first {len(letters)}:" if letters else ""))
        for i, letter in enumerate(letters, 1):
            print(_describe(i, letter))
        return 0

    return run(main)


REPLAY_WAIT = 30.0  # s: the longest wait for the next dead letter, a reconnection included


def run_replay(args: argparse.Namespace) -> int:
    where = Where.parse(args.where) if args.where else None
    if args.limit is not None and args.limit < 0:
        raise ConfigurationError("--limit must be 0 or more")

    async def main() -> int:
        # reconnecting: a replay goes on through a lost connection (see replay())
        async with connect(args, reconnect=True) as core:
            report = await replay(core, args.queue, limit=args.limit, where=where,
                                  to_original=args.to_original, timeout=REPLAY_WAIT)
        if args.json:
            _print_json({"queue": args.queue, "replayed": report.replayed,
                         "kept": report.kept, "failed": report.failed,
                         "repeated": report.repeated})
        else:
            print(f"{args.queue}: replayed {report.replayed}, kept {report.kept}"
                  + (f", could not replay {len(report.failed)} (kept)" if report.failed
                     else "")
                  + (f"; {report.repeated} sent again after a lost connection (possibly "
                     "twice at their target)" if report.repeated else ""))
            for failure in report.failed:
                print(f"  {failure}", file=sys.stderr)
        return 1 if report.failed else 0

    return run(main)


def run_purge(args: argparse.Namespace) -> int:
    if not args.queue.endswith(".dlq") and not args.force:
        raise ConfigurationError(
            f"{args.queue!r} is not a dead-letter queue (its name does not end in .dlq): "
            "add --force to purge it all the same")

    async def main() -> int:
        async with connect(args) as core:
            dropped = await purge(core, args.queue)
        if args.json:
            _print_json({"queue": args.queue, "purged": dropped})
        else:
            print(f"{args.queue}: purged {dropped} message{'s' if dropped != 1 else ''}")
        return 0

    return run(main)

