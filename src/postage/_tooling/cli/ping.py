"""``postage ping [TARGET]``: who is there? A scatter/gather ``ping`` and a table of answers.

TARGET is a GenericApplication key: ``name``, ``@host``, ``name@host``, ``pid@host`` or
``name#group`` (every instance it reaches answers with its fingerprint). Without TARGET,
every component announcing its presence (GenericApplications and communicators that opted
in) is asked through the presence exchange. Replies are collected for ``--timeout``
seconds (or until ``--max`` arrived). Exit status 0 when someone answered, 1 when nobody did.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postage._api.gather import GatherReply, gather_replies
from postage._api.presence import PRESENCE_EXCHANGE, PROBE_KEY
from postage._exceptions import Unroutable
from postage._tooling.cli import common as _common
from postage._wire.fingerprint import FINGERPRINT_KEYS

if TYPE_CHECKING:
    from postage._tooling.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "ping", help="list live components (scatter/gather ping) with their fingerprints",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", metavar="TARGET",
                        help="name, @host, name@host, pid@host or name#group "
                        "(default: every component announcing its presence)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to collect answers (default: 1)")
    parser.add_argument("--max", type=int, default=None, dest="max_replies",
                        help="stop after this many answers")
    parser.add_argument("--exchange", default=_common.DEFAULT_EXCHANGE,
                        help=f"exchange of TARGET (default: {_common.DEFAULT_EXCHANGE})")
    _common.add_url(parser)
    parser.set_defaults(handler=run)


def _fingerprint_of(reply: GatherReply) -> Mapping[str, Any]:
    value = reply.value
    if isinstance(value, Mapping) and value.get("pid") is not None:
        return value
    return reply.fingerprint


def rows(replies: list[GatherReply]) -> list[list[Any]]:
    table = []
    for reply in replies:
        fp = _fingerprint_of(reply)
        cells: list[Any] = ["-" if fp.get(k) is None else fp.get(k) for k in FINGERPRINT_KEYS]
        cells.append(f"{reply.rtt * 1000:.1f}" if reply.ok else f"error: {reply.error}")
        table.append(cells)
    table.sort(key=lambda r: (str(r[0]), str(r[3]), str(r[2]).rjust(12)))
    return table


def run(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with _common.connect(args) as core:
            fp = _common.fingerprint(core.settings)
            if args.target:
                exchange, key, mandatory = args.exchange, args.target, True
            else:
                await core.declare_exchange(PRESENCE_EXCHANGE, "topic", durable=True)
                exchange, key, mandatory = PRESENCE_EXCHANGE, PROBE_KEY, False
            try:
                replies = await gather_replies(
                    core, exchange, key, "ping", fingerprint=fp, timeout=args.timeout,
                    max_replies=args.max_replies, mandatory=mandatory)
            except Unroutable:
                replies = []
        if not replies:
            what = repr(args.target) if args.target else "the presence probe"
            print(f"postage: nobody answered {what} within {args.timeout:g} s", file=sys.stderr)
            return _common.EXIT_FAILED
        print(_common.format_table([*(k.upper() for k in FINGERPRINT_KEYS), "RTT_MS"],
                                   rows(replies)))
        return 0

    return _common.run(main)
