"""A worker process for the message-path fault tests (not a test module).

``python -m tests.faults.pipeline_worker MODE API URL QUEUE`` with MODE:

* ``crash``: consume QUEUE; a ``poison`` body kills the process (``os._exit`` for the
  classic API, ``SIGKILL`` for the communicator), any other is printed ``ok BODY``;
* ``hang``: consume QUEUE with a blocking handler that never returns; print ``started``
  when it runs, then ``closing``, close with a 2 s deadline, print ``closed`` and return;
* ``interrupt``: the classic scheduler with a handler that never returns (print
  ``started``); the test sends SIGINT twice.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from postage import connect, messaging, microthreads

_out = threading.Lock()


def _say(text: str) -> None:
    with _out:  # one line at a time: handlers print from worker threads
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _exchange(queue: str) -> type[messaging.Exchange]:
    class Exchange(messaging.Exchange):
        name = f"{queue}.ex"
        exchange_type = "direct"
        durable = True
        auto_delete = False

    return Exchange


def _classic(queue: str, on_body: Any) -> None:
    class Worker(messaging.MessageProcessor):
        @messaging.MessageHandler("command", "work")
        def msg_work(self, content: Any) -> None:
            on_body(content["parameters"])

    class Ready(microthreads.MicroThread):
        def step(self) -> bool:
            _say("ready")
            return False

    eqk = [(_exchange(queue), [({"name": queue, "flags": {"durable": True}}, queue)])]
    scheduler = microthreads.MicroScheduler()
    scheduler.add_microthread(Worker({"name": "pipeline-worker"}, eqk, None, None))
    scheduler.add_microthread(Ready())
    for _ in scheduler.main():
        pass


def crash(api: str, url: str, queue: str) -> int:
    def on_body(body: Any) -> None:
        if body == "poison":
            _say("poison")
            if api == "classic":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        _say(f"ok {body}")

    if api == "classic":
        _classic(queue, on_body)
        return 0
    with connect(url) as comm:
        comm.task_queue(queue).add_task_subscriber(lambda _comm, body: on_body(body))
        _say("ready")
        threading.Event().wait(120)
    return 0


def hang(url: str, queue: str) -> int:
    started = threading.Event()

    def forever(_comm: Any, body: Any) -> None:
        started.set()
        _say("started")
        time.sleep(3600)

    comm = connect(url)
    comm.task_queue(queue).add_task_subscriber(forever)
    _say("ready")
    started.wait(60)
    _say("closing")
    comm.close(timeout=2)
    _say("closed")
    return 0


def interrupt(queue: str) -> int:
    def forever(body: Any) -> None:
        _say("started")
        time.sleep(3600)

    _classic(queue, forever)
    return 0


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "crash":
        return crash(argv[1], argv[2], argv[3])
    if mode == "hang":
        return hang(argv[2], argv[3])
    return interrupt(argv[3])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
