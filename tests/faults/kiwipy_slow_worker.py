"""A postage.kiwipy worker with a slow task subscriber, for the memory fault test: it runs
for ``seconds``, then prints its peak RSS (MiB), its threads and the tasks it started, as
JSON. Usage: python -m tests.faults.kiwipy_slow_worker URL QUEUE SECONDS [PREFETCH]"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from postage.kiwipy import rmq


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def main() -> None:
    url, queue, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    options: dict[str, Any] = {}
    if len(sys.argv) > 4:
        options["task_prefetch_count"] = int(sys.argv[4])
    started = 0
    lock = threading.Lock()

    def slow(_comm: Any, _task: Any) -> None:
        nonlocal started
        with lock:
            started += 1
        time.sleep(1.0)

    comm = rmq.RmqThreadCommunicator.connect(connection_params=url, task_queue=queue,
                                             **options)
    try:
        comm.add_task_subscriber(slow)
        peak_threads = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak_threads = max(peak_threads, threading.active_count())
            time.sleep(0.2)
        print(json.dumps({"rss_mib": _status("VmHWM") / 1024, "threads": peak_threads,
                          "started": started}), flush=True)
    finally:
        comm.close()


if __name__ == "__main__":
    main()
