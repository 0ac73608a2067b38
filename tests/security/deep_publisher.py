"""Publishes messages whose headers table nests DEPTH levels deep (not a test module).

``python -m tests.security.deep_publisher URL JSON`` where JSON is a list of
``[exchange, routing_key, depth, body]``; each is published with plain pika from a thread
with a large stack and recursion limit (encoding such a table is recursive too), then a
line ``sent DEPTH`` or ``failed DEPTH: error`` is printed for each.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pika


def nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        table = {"n": table}
    return table


def publish(url: str, items: list[list[Any]]) -> None:
    for exchange, routing_key, depth, body in items:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            try:
                channel = connection.channel()
                channel.basic_publish(exchange, routing_key, body.encode(),
                                      pika.BasicProperties(headers=nested(depth)))
            finally:
                if connection.is_open:
                    connection.close()
        except Exception as exc:  # e.g. a frame over frame_max: the broker closes the link
            print(f"failed {depth}: {type(exc).__name__}", flush=True)
        else:
            print(f"sent {depth}", flush=True)


def main() -> int:
    sys.setrecursionlimit(2_000_000)
    threading.stack_size(512 * 1024 * 1024)
    worker = threading.Thread(target=publish, args=(sys.argv[1], json.loads(sys.argv[2])))
    worker.start()
    worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
