"""``postage send KEY COMMAND`` and ``postage call KEY COMMAND``: commands from the shell.

Both build a classic command envelope (``MessageCommand`` / ``RpcCommand``) named COMMAND
whose parameters are ``--json '{...}'`` as given or ``{k: v}`` from ``--param k=v``
(values parsed as JSON when they are JSON: ``--param n=3`` is a number, ``--param s=x`` a
string), and publish it (confirmed, mandatory) to ``--exchange`` (default: the
GenericApplication exchange) with routing key KEY. ``call`` waits for the reply and prints
its value as JSON; a remote error goes to stderr with exit status 1; no reply within
``--timeout`` or nobody receiving KEY is exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from postage._api.gather import decode_reply
from postage._exceptions import RemoteError, Unroutable
from postage._tooling.cli import common as _common

if TYPE_CHECKING:
    from postage._tooling.cli import Subparsers


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help="routing key (e.g. name/rr, pid@host)")
    parser.add_argument("command", metavar="COMMAND", help="the command's name")
    parser.add_argument("--param", action="append", metavar="K=V",
                        help="a parameter (repeatable); V is parsed as JSON if it is JSON")
    parser.add_argument("--json", metavar="JSON", help="all the parameters as one JSON value")
    parser.add_argument("--exchange", default=_common.DEFAULT_EXCHANGE,
                        help=f"exchange (default: {_common.DEFAULT_EXCHANGE})")
    _common.add_url(parser)


def register(subparsers: Subparsers) -> None:
    send = subparsers.add_parser("send", help="send a command message to a key",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(send)
    send.set_defaults(handler=run_send)
    call = subparsers.add_parser("call", help="call a command (RPC) and print its result",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(call)
    call.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for the reply (default: 10)")
    call.set_defaults(handler=run_call)


def run_send(args: argparse.Namespace) -> int:
    parameters = _common.parse_parameters(args.param, args.json)

    async def main() -> int:
        async with _common.connect(args) as core:
            await _common.publish_command(core, args.exchange, args.key, args.command,
                                          parameters)
        print(f"sent {args.command} to {args.key}")
        return 0

    return _common.run(main)


def run_call(args: argparse.Namespace) -> int:
    parameters = _common.parse_parameters(args.param, args.json)

    async def main() -> int:
        async with _common.connect(args) as core:
            envelope = _common.command_envelope(args.command, parameters, rpc=True,
                                                settings=core.settings)
            try:
                reply = await core.call(args.exchange, args.key, core.encode(envelope),
                                        core.properties(), timeout=args.timeout)
            except Unroutable:
                raise _common.nobody(args.exchange, args.key) from None
            answer = decode_reply(core, reply, 0.0)
        if answer.error is not None:
            kind = "remote error" if isinstance(answer.error, RemoteError) else "bad reply"
            print(f"{kind}: {answer.error}", file=sys.stderr)
            return _common.EXIT_FAILED
        print(json.dumps(answer.value, ensure_ascii=False, default=str))
        return 0

    return _common.run(main)
