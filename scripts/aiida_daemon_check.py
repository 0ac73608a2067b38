"""A real AiiDA daemon on the broker at amqp://guest:guest@127.0.0.1:5672/: 20 work chains
submitted, one paused and played, one killed, every one followed to its end.

Run by ``scripts/peer-suites aiida`` in AiiDA's environment, with ``kiwipy`` aliased to
``postage.kiwipy`` or not (``--control``); ``AIIDA_PATH`` names a scratch configuration
folder. Prints one line of figures; exit status 0 when every work chain ended as expected
(19 finished with exit status 0, the killed one killed) and the daemon stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time

COUNT = 20
DEADLINE = 300.0  # s for all work chains to end


def verdi(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["verdi", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"verdi {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_for(what: str, test: object, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        if time.monotonic() > end:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def dead_letters(queue: str) -> int:
    """Messages in ``queue`` (0 when there is no such queue), asked with Postage's core."""
    import asyncio

    from postage import NotFound
    from postage._core.core import open_core

    async def count() -> int:
        core = await open_core("amqp://guest:guest@127.0.0.1:5672/")
        try:
            return (await core.queue_state(queue))[0]
        except NotFound:
            return 0
        finally:
            await core.close(2)

    return asyncio.run(count())


def main() -> int:
    name = f"postage-check-{int(time.time())}"
    verdi("presto", "--profile-name", name)
    listed = verdi("profile", "show", name)
    if "core.rabbitmq" not in listed:
        raise SystemExit(f"the profile got no RabbitMQ broker:\n{listed}")

    from aiida import load_profile, orm
    from aiida.engine import submit
    from aiida.plugins import WorkflowFactory

    profile = load_profile(name)
    computer = orm.load_computer("localhost")
    code = orm.InstalledCode(computer=computer, filepath_executable="/bin/bash",
                             default_calc_job_plugin="core.arithmetic.add",
                             label="add").store()
    multiply_add = WorkflowFactory("core.arithmetic.multiply_add")

    started = time.monotonic()
    verdi("daemon", "start", "1")
    try:
        nodes = [submit(multiply_add, x=orm.Int(i), y=orm.Int(2), z=orm.Int(1), code=code)
                 for i in range(COUNT)]
        paused, killed = nodes[0], nodes[1]
        verdi("process", "pause", str(paused.pk))
        wait_for("a paused work chain", lambda: paused.paused or paused.is_terminated, 60)
        was_paused = paused.paused
        verdi("process", "play", str(paused.pk))
        verdi("process", "kill", str(killed.pk), "--timeout", "60")
        wait_for("every work chain ended", lambda: all(n.is_terminated for n in nodes),
                 DEADLINE)
    finally:
        verdi("daemon", "stop", check=False)
    took = time.monotonic() - started
    from aiida.brokers.rabbitmq.utils import get_launch_queue_name

    dead = dead_letters(f"{get_launch_queue_name(f'aiida-{profile.uuid}')}.dlq")
    finished = [n for n in nodes if n.is_finished_ok]
    results_right = all(n.outputs.result.value == n.inputs.x.value * 2 + 1 for n in finished)
    print(f"AiiDA daemon: {len(nodes)} work chains submitted, {len(finished)} finished ok, "
          f"killed {killed.is_killed}, paused {was_paused} then played to "
          f"{'finished' if paused.is_finished_ok else paused.process_state}, results "
          f"{'right' if results_right else 'WRONG'}; tasks dead-lettered {dead}; {took:.1f} s")
    expected = (len(finished) == COUNT - 1 and killed.is_killed and paused.is_finished_ok
                and results_right and dead == 0)
    return 0 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
