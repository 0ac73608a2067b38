"""``postage quit|restart|join-group|leave-group TARGET``: control GenericApplications.

Each sends the classic command (``quit``, ``restart``, ``join_group``/``leave_group`` with
``{"group_name": GROUP}``) to the GenericApplication key TARGET (``pid@host`` for one
instance, ``name`` for all instances of a name, ``name#group``, ``@host``...), confirmed by
the broker; nobody receiving TARGET is an error (exit status 2). ``restart`` makes each
instance ack, stop consuming, say ``offline`` and re-execute its own command line (same
pid: ``os.execv`` replaces the process image).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from postage._tooling.cli import common as _common

if TYPE_CHECKING:
    from postage._tooling.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    for name, command, text, group in (
        ("quit", "quit", "stop the components TARGET reaches", False),
        ("restart", "restart", "make the components TARGET reaches re-execute themselves",
         False),
        ("join-group", "join_group", "make the components TARGET reaches join GROUP", True),
        ("leave-group", "leave_group", "make the components TARGET reaches leave GROUP", True),
    ):
        parser = subparsers.add_parser(name, help=text, description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("target", metavar="TARGET",
                            help="GenericApplication key: pid@host, name, name@host, "
                            "@host, name#group")
        if group:
            parser.add_argument("group", metavar="GROUP", help="the group's name")
        parser.add_argument("--exchange", default=_common.DEFAULT_EXCHANGE,
                            help=f"exchange (default: {_common.DEFAULT_EXCHANGE})")
        _common.add_url(parser)
        parser.set_defaults(handler=run, command=command)


def run(args: argparse.Namespace) -> int:
    group = getattr(args, "group", None)
    parameters: Any = {"group_name": group} if group is not None else None

    async def main() -> int:
        async with _common.connect(args) as core:
            await _common.publish_command(core, args.exchange, args.target, args.command,
                                          parameters)
        suffix = f" {group}" if group is not None else ""
        print(f"sent {args.command}{suffix} to {args.target}")
        return 0

    return _common.run(main)
