"""A user's failed call gives one short error: no stray log line from the AMQP client and
no traceback through Postage's internals (unless the ``postage`` logger is at DEBUG)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from postage._tooling.localbroker.tools import find_free_ports

PROGRAMS = {
    "communicator": "import postage\npostage.connect(URL, connect_timeout=2)\n",
    "asyncio": textwrap.dedent("""\
        import asyncio, postage.aio
        async def main():
            await postage.aio.connect(URL, connect_timeout=2)
        asyncio.run(main())
        """),
    "classic": textwrap.dedent("""\
        import os
        os.environ["POSTAGE_URL"] = URL
        from postage import messaging
        class Ex(messaging.Exchange):
            name = "call-site"
        class Producer(messaging.GenericProducer):
            eks = [(Ex, "k")]
        Producer().message_x("v")
        """),
    "client": textwrap.dedent("""\
        import asyncio, postage
        async def main():
            async with postage.AsyncClient(URL, connect_timeout=2):
                pass
        asyncio.run(main())
        """),
}


def _run(program: str, debug: bool = False) -> list[str]:
    (port,) = find_free_ports(1)  # nothing listens there
    prelude = "import logging\nlogging.basicConfig(level=logging.%s)\n" % (
        "DEBUG" if debug else "WARNING")
    code = prelude + f"URL = 'amqp://guest:guest@127.0.0.1:{port}/'\n" + program
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    return done.stderr.splitlines()


@pytest.mark.parametrize("api", sorted(PROGRAMS))
def test_a_refused_connection_is_one_short_error(api: str) -> None:
    lines = _run(PROGRAMS[api])
    assert lines[0] == "Traceback (most recent call last):", lines
    assert lines[-1].startswith("postage.ConnectionError: amqp://guest:***@127.0.0.1:"), lines
    assert lines[-1].endswith("connection to the broker failed: Connection refused"), lines
    assert not any("creating transport" in line.lower() for line in lines), lines
    assert not any("During handling" in line or "direct cause" in line for line in lines)
    frames = [line for line in lines if line.lstrip().startswith("File ")]
    internal = [f for f in frames if "/_transport/" in f or "asyncio/tasks.py" in f]
    assert not internal, lines
    ours = [f for f in frames if "/postage/" in f]
    assert len(ours) <= 4, "\n".join(lines)  # the API's entry, and where it raised


def test_debug_logging_keeps_the_internal_frames() -> None:
    lines = _run(PROGRAMS["communicator"], debug=True)
    assert any("/_transport/amqp/connect.py" in line for line in lines)
    assert lines[-1].startswith("postage.ConnectionError: ")
