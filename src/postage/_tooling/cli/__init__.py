"""The ``postage`` command line.

Each command group lives in its own module ``postage._tooling.cli._<name>`` that defines::

    def register(subparsers: Subparsers) -> None:
        parser = subparsers.add_parser("name", help="...")
        ...
        parser.set_defaults(handler=run)      # run(args: argparse.Namespace) -> int

Modules are found by name, so adding a command is adding a file. Import heavy or optional
dependencies inside the handlers, not at module level, so every command keeps working when
one command's extras are missing. Handlers raise :class:`postage._exceptions.PostageError`
for expected failures: ``main`` prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from postage._exceptions import PostageError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["EXIT_ERROR", "build_parser", "main"]

EXIT_ERROR = 2
Handler = Callable[[argparse.Namespace], int]


def _command_modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_")
    ]
    return sorted(f"{__name__}.{n}" for n in names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postage", description="Postage: message-driven components over RabbitMQ."
    )
    from postage import __version__

    parser.add_argument("--version", action="version", version=f"postage {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show errors in full (e.g. broker logs)"
    )
    parser.add_argument(
        "--url", default=None,
        help="broker URL (default: POSTAGE_URL, else POSTAGE_HOST/VHOST/USER/PASSWORD); "
        "commands that talk to the broker also take it after their name",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module_name in _command_modules():
        module = importlib.import_module(module_name)
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``postage`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = cast("Handler | None", getattr(args, "handler", None))
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return handler(args)
    except PostageError as exc:
        text = str(exc) or type(exc).__name__
        if not args.verbose:
            text = text.splitlines()[0]
        print(f"postage: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("postage: interrupted", file=sys.stderr)
        return 130
