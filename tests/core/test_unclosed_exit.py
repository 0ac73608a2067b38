"""A program that never closes its connection still exits: when ``asyncio.run`` ends, the
loop cancels the transport's tasks, and they stop instead of reconnecting."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.broker

PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from postage._core.core import open_core
    from postage.kiwipy import rmq
    import postage.aio

    async def main(url):
        core = await open_core(url)
        await core.declare_queue("test.unclosed-exit", exclusive=True)
        comm = await rmq.async_connect(connection_params=url)
        await comm.add_rpc_subscriber(lambda _c, n: n, "unclosed")
        aio = await postage.aio.connect(url)
        print("leaving without closing", flush=True)

    asyncio.run(main(sys.argv[1]))
    print("exited", flush=True)
""")


def test_a_program_that_never_closes_its_connections_exits(broker_url: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM, broker_url], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["leaving without closing", "exited"]
