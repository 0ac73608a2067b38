"""A worker process for the graceful-shutdown tests (not a test module).

``python -m tests.faults.sigterm_worker classic|communicator URL QUEUE SECONDS`` consumes
QUEUE with a handler that takes SECONDS; it prints ``ready`` once consuming, ``started N``
and ``done N`` around each task (flushed at once) and runs the API's blocking main loop:
``MicroScheduler.main()`` (classic, SIGTERM handled by default) or
``Communicator.run_until_signal()`` (communicator, explicit opt-in). The test sends
SIGTERM while a task runs and expects it to finish, be acked and the process to exit 0.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from postage import connect, messaging, microthreads


def _say(text: str) -> None:
    print(text, flush=True)


def _slow(number: Any, seconds: float) -> None:
    _say(f"started {number}")
    time.sleep(seconds)
    _say(f"done {number}")


def run_classic(queue: str, seconds: float) -> int:
    class Exchange(messaging.Exchange):
        name = f"{queue}.ex"
        exchange_type = "direct"
        durable = False
        auto_delete = True

    class Worker(messaging.MessageProcessor):
        @messaging.MessageHandler("command", "slow")
        def msg_slow(self, content: Any) -> None:
            _slow(content["parameters"], seconds)

    class Ready(microthreads.MicroThread):
        def step(self) -> bool:
            _say("ready")
            return False

    eqk = [(Exchange, [({"name": queue, "flags": {"durable": True}}, queue)])]
    scheduler = microthreads.MicroScheduler()
    scheduler.add_microthread(Worker({"name": "sigterm-worker"}, eqk, None, None))
    scheduler.add_microthread(Ready())
    for _ in scheduler.main():
        pass
    _say("exiting")
    return 0


def run_communicator(url: str, queue: str, seconds: float) -> int:
    with connect(url) as comm:
        comm.task_queue(queue).add_task_subscriber(lambda _comm, n: _slow(n, seconds))
        _say("ready")
        signum = comm.run_until_signal()
    _say(f"exiting after signal {signum}")
    return 0


def main(argv: list[str]) -> int:
    api, url, queue, seconds = argv[0], argv[1], argv[2], float(argv[3])
    if api == "classic":
        return run_classic(queue, seconds)  # the URL comes from POSTAGE_URL
    return run_communicator(url, queue, seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
