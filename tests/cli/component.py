"""A GenericApplication for the CLI tests: ``python component.py NAME [GROUP ...]``.

Answers ``ping`` (built in), ``add`` (``{"a", "b"}`` -> a + b), ``fail`` (raises
ValueError) and ``boot`` (an id new at each start, with the pid: tells a restart). Prints
``ready <pid> <boot>`` once it consumes, and ``bye`` when it ends. Heartbeat: 0.5 s.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from typing import Any

from postage import messaging, microthreads
from postage.generic_application import GenericApplication

BOOT = uuid.uuid4().hex[:8]


class Component(GenericApplication):
    presence_interval = 0.5
    restart_mode = os.environ.get("COMPONENT_RESTART_MODE", "exec")

    @messaging.RpcHandler("command", "add")
    def msg_add(self, content: Any, reply_func: Any) -> None:
        params = content["parameters"]
        reply_func(messaging.MessageResult(params["a"] + params["b"]))

    @messaging.RpcHandler("command", "fail")
    def msg_fail(self, content: Any, reply_func: Any) -> None:
        raise ValueError("failing on purpose")

    @messaging.RpcHandler("command", "boot")
    def msg_boot(self, content: Any, reply_func: Any) -> None:
        reply_func(messaging.MessageResult({"boot": BOOT, "pid": os.getpid()}))


def main() -> None:
    name, groups = sys.argv[1], sys.argv[2:]
    if os.environ.get("COMPONENT_INSTRUMENT"):  # OpenTelemetry on (API only: no SDK)
        from postage.opentelemetry import PostageInstrumentor

        PostageInstrumentor().instrument()
    fingerprint = messaging.Fingerprint(name=name, type="test-component",
                                        vhost=messaging.global_vhost).as_dict()
    fingerprint["host"] = socket.gethostname()
    app = Component(fingerprint, groups=groups)
    app.start_consuming()
    scheduler = microthreads.MicroScheduler()
    scheduler.add_microthread(app)
    print("ready", os.getpid(), BOOT, flush=True)
    for _ in scheduler.main():
        pass
    print("bye", flush=True)


if __name__ == "__main__":
    main()
