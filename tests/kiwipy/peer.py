"""A kiwiPy program run by the interop tests, with the real kiwiPy or with postage.kiwipy.

    python peer.py real|postage serve URL PREFIX [testing]  # serve until stdin closes
    python peer.py real|postage call URL PREFIX [testing]   # call a server; print JSON

``testing`` connects in kiwiPy's testing mode (temporary queues and exchanges).

PREFIX names the exchanges, the RPC identifiers, the task queue and the broadcast subjects,
so that runs do not meet. The code below is plain kiwiPy code: only the import differs.
"""

import json
import sys
import time


def load(which):
    if which == "real":
        import kiwipy.rmq as rmq

        import kiwipy
    else:
        import postage.kiwipy as kiwipy
        import postage.kiwipy.rmq as rmq
    return kiwipy, rmq


TESTING = sys.argv[5:6] == ["testing"]


def connect(rmq, url, prefix):
    return rmq.RmqThreadCommunicator.connect(
        connection_params=url, message_exchange=f"{prefix}.messages",
        task_exchange=f"{prefix}.tasks", testing_mode=TESTING)


def serve(kiwipy, rmq, url, prefix):
    comm = connect(rmq, url, prefix)
    heard = []

    def on_broadcast(_comm, body, sender, subject, correlation_id):
        heard.append([body, sender, subject, correlation_id])
        comm.broadcast_send(heard, sender="server", subject=f"{prefix}.heard")

    def nested(_comm, msg):
        future = kiwipy.Future()
        future.set_result({"nested": msg})
        return future

    def fail(_comm, msg):
        raise RuntimeError(f"failed on {msg}")

    comm.add_rpc_subscriber(lambda _comm, msg: {"echo": msg, "tuple": (1, 2)}, f"{prefix}.echo")
    comm.add_rpc_subscriber(nested, f"{prefix}.nested")
    comm.add_rpc_subscriber(fail, f"{prefix}.fail")
    queue = comm.task_queue(f"{prefix}.tasks")
    queue.add_task_subscriber(lambda _comm, task: [task, task])
    comm.add_broadcast_subscriber(
        kiwipy.BroadcastFilter(on_broadcast, subject=f"{prefix}.to-server"))
    print("ready", flush=True)
    sys.stdin.read()
    comm.close()


def call(kiwipy, rmq, url, prefix):
    comm = connect(rmq, url, prefix)
    out = {}
    out["echo"] = comm.rpc_send(f"{prefix}.echo", [1, "two", 3.0]).result(timeout=10)
    first = comm.rpc_send(f"{prefix}.nested", "n").result(timeout=10)
    out["nested"] = first.result(timeout=10) if isinstance(first, kiwipy.Future) else first
    try:
        comm.rpc_send(f"{prefix}.fail", "x").result(timeout=10)
    except kiwipy.RemoteException as exc:
        out["fail"] = str(exc).splitlines()[0]
    queue = comm.task_queue(f"{prefix}.tasks")
    out["task"] = queue.task_send({"n": 7}).result(timeout=10)
    heard = []
    comm.add_broadcast_subscriber(
        kiwipy.BroadcastFilter(lambda _c, body, *_: heard.append(body), subject=f"{prefix}.heard"))
    comm.broadcast_send("ignored", sender="client", subject=f"{prefix}.other")
    comm.broadcast_send("hello", sender="client", subject=f"{prefix}.to-server",
                        correlation_id="c1")
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.05)
    out["broadcast"] = heard[-1] if heard else None
    out["echo"]["tuple"] = list(out["echo"]["tuple"])
    print(json.dumps(out), flush=True)
    comm.close()


if __name__ == "__main__":
    which, verb, url, prefix = sys.argv[1:5]
    kiwipy, rmq = load(which)
    {"serve": serve, "call": call}[verb](kiwipy, rmq, url, prefix)
