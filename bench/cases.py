"""The catalogue: every case (one implementation of one workload) and Postage's speed targets."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str
    workload: str  # publish | e2e | rpc | rpc64 | memory | scaling
    impl: str  # who is measured
    label: str  # how
    fn: str  # "module:function"
    metric: str  # rate (higher is better) | latency (p50 ms, lower) | mb (lower)
    n: int
    n_quick: int
    postage: bool = False
    requires: tuple[str, ...] = ()  # "module" or "module:attribute"
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 120.0  # hard limit of one repetition (seconds)


def available(case: Case) -> str | None:
    """None when the case can run, else why not ("not available yet: ...")."""
    for req in case.requires:
        module, _, attr = req.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return f"not available yet ({module} not importable)"
        except Exception as exc:
            return f"not available yet ({module} fails to import: {type(exc).__name__})"
        if attr and not hasattr(mod, attr):
            return f"not available yet ({module}.{attr} missing)"
    return None


P, Q = "bench.peers:", "bench.postage_cases:"
CLASSIC = ("postage.messaging:GenericProducer",)
COMM = ("postage:connect",)
AIOCOMM = ("postage.aio:connect",)
CLIENT = ("postage:AsyncClient",)
OTEL = ("opentelemetry.sdk.trace", "postage.opentelemetry")
KIWI = ("kiwipy", "kiwipy.rmq")
# the kiwiPy-style cases (bench.peers:kiwi_*) run kiwiPy's code on either module
KIWIPY: dict[str, Any] = {"module": "kiwipy"}
POSTAGE: dict[str, Any] = {"module": "postage"}
POSTAGE_KIWIPY: dict[str, Any] = {"module": "postage.kiwipy"}
PKIWI = ("postage.kiwipy",)
POSTAGE_WINDOW: dict[str, Any] = {"module": "postage", "connect": {"send_window": 256}}
POSTAGE_WINDOW64: dict[str, Any] = {"module": "postage", "connect": {"send_window": 64}}

# OpenTelemetry on (bench.postage_cases._instrument): params["otel"] -> (the case id's
# suffix, what the label adds)
OTEL_MODES = {
    "noop": ("otel", "no-op exporter"),
    "batch": ("otel-batch", "BatchSpanProcessor"),
    "sampled": ("otel-sampled", "BatchSpanProcessor, 10 % sampled"),
}


def with_otel(base: Case) -> list[Case]:
    """``base``, then the same case with OpenTelemetry on, in each of :data:`OTEL_MODES`."""
    return [base] + [
        replace(base, id=f"{base.id}.{suffix}", label=f"{base.label}, OpenTelemetry on ({what})",
                requires=(*base.requires, *OTEL), params={**base.params, "otel": mode})
        for mode, (suffix, what) in OTEL_MODES.items()]


CASES: list[Case] = [
    # (1) publish throughput, persistent, confirmed
    Case("publish.pika", "publish", "pika", "BlockingConnection, confirms, sequential",
         P + "pika_publish", "rate", 3000, 600),
    Case("publish.aiopika.seq", "publish", "aio-pika", "awaiting each publish",
         P + "aiopika_publish_seq", "rate", 3000, 600),
    Case("publish.aiopika.256", "publish", "aio-pika", "256 in flight",
         P + "aiopika_publish_window", "rate", 20000, 3000),
    Case("publish.aiormq.256", "publish", "aiormq", "raw, 256 in flight",
         P + "aiormq_publish_window", "rate", 20000, 3000),
    Case("publish.kiwipy", "publish", "kiwiPy", "task_send(no_reply=True), sequential",
         P + "kiwi_publish", "rate", 2000, 400, requires=KIWI, params=KIWIPY),
    Case("publish.core.seq", "publish", "Postage core", "awaiting each publish",
         Q + "core_publish_seq", "rate", 3000, 600, postage=True),
    Case("publish.core.256", "publish", "Postage core", "256 in flight",
         Q + "core_publish_window", "rate", 20000, 3000, postage=True),
    Case("publish.classic", "publish", "Postage classic",
         "message_X (persistent = True), sequential",
         Q + "classic_publish", "rate", 3000, 600, postage=True, requires=CLASSIC),
    Case("publish.classic.pipe", "publish", "Postage classic",
         "message_X (persistent = True), pipeline = 256 (opt-in)",
         Q + "classic_publish_pipelined", "rate", 20000, 3000, postage=True, requires=CLASSIC),
    Case("publish.comm", "publish", "Postage communicator",
         "task_send(no_reply=True), sequential", P + "kiwi_publish", "rate", 3000, 600,
         postage=True, requires=COMM, params=POSTAGE),
    Case("publish.comm.window", "publish", "Postage communicator",
         "task_send(no_reply=True), send_window = 256 (opt-in)", P + "kiwi_publish",
         "rate", 20000, 3000, postage=True, requires=COMM, params=POSTAGE_WINDOW),
    *with_otel(Case("publish.client.256", "publish", "Postage AsyncClient",
                    "publish, 256 in flight", Q + "client_publish_window", "rate", 20000,
                    3000, postage=True, requires=CLIENT)),
    # (2) end-to-end publish -> handler -> ack
    Case("e2e.aiopika", "e2e", "aio-pika", "256 in flight, prefetch 256",
         P + "aiopika_e2e", "rate", 20000, 3000),
    Case("e2e.kiwipy", "e2e", "kiwiPy", "task queue, prefetch 256",
         P + "kiwi_e2e", "rate", 3000, 500, requires=KIWI, params=KIWIPY),
    Case("e2e.core", "e2e", "Postage core", "256 in flight, prefetch 256",
         Q + "core_e2e", "rate", 20000, 3000, postage=True),
    Case("e2e.comm", "e2e", "Postage communicator", "task queue (kiwiPy's code), prefetch 256",
         P + "kiwi_e2e", "rate", 3000, 600, postage=True, requires=COMM, params=POSTAGE),
    Case("e2e.comm.window", "e2e", "Postage communicator",
         "kiwiPy's code + send_window = 256 (opt-in)", P + "kiwi_e2e", "rate", 20000, 3000,
         postage=True, requires=COMM, params=POSTAGE_WINDOW),
    Case("e2e.aiocomm", "e2e", "Postage aio communicator", "task_send 256 in flight",
         Q + "aio_comm_e2e", "rate", 20000, 3000, postage=True, requires=AIOCOMM),
    *with_otel(Case("e2e.client", "e2e", "Postage AsyncClient", "256 in flight, prefetch 256",
                    Q + "client_e2e", "rate", 20000, 3000, postage=True, requires=CLIENT)),
    # (3) sequential RPC latency
    Case("rpc.pika", "rpc", "pika", "tutorial RPC (callback queue)",
         P + "pika_rpc", "latency", 2000, 300),
    Case("rpc.aiopika", "rpc", "aio-pika", "direct reply-to",
         P + "aiopika_rpc_seq", "latency", 2000, 300),
    Case("rpc.kiwipy", "rpc", "kiwiPy", "rpc_send().result()",
         P + "kiwi_rpc_seq", "latency", 1000, 200, requires=KIWI, params=KIWIPY),
    Case("rpc.core", "rpc", "Postage core", "core.call (direct reply-to)",
         Q + "core_rpc_seq", "latency", 2000, 300, postage=True),
    Case("rpc.comm", "rpc", "Postage communicator", "rpc_send().result() (kiwiPy's code)",
         P + "kiwi_rpc_seq", "latency", 2000, 300, postage=True, requires=COMM, params=POSTAGE),
    Case("rpc.aiocomm", "rpc", "Postage aio communicator", "await rpc_send()",
         Q + "aio_comm_rpc_seq", "latency", 2000, 300, postage=True, requires=AIOCOMM),
    *with_otel(Case("rpc.client", "rpc", "Postage AsyncClient", "await client.rpc()",
                    Q + "client_rpc_seq", "latency", 2000, 300, postage=True,
                    requires=CLIENT)),
    Case("rpc.classic", "rpc", "Postage classic", "blocking rpc_X",
         Q + "classic_rpc_seq", "latency", 2000, 300, postage=True, requires=CLASSIC),
    # (4) 64 RPCs in flight
    Case("rpc64.aiopika", "rpc64", "aio-pika", "64 in flight",
         P + "aiopika_rpc_window", "rate", 10000, 1500),
    Case("rpc64.kiwipy", "rpc64", "kiwiPy", "64 futures in flight",
         P + "kiwi_rpc_window", "rate", 3000, 500, requires=KIWI, params=KIWIPY),
    Case("rpc64.core", "rpc64", "Postage core", "64 in flight",
         Q + "core_rpc_window", "rate", 10000, 1500, postage=True),
    Case("rpc64.comm", "rpc64", "Postage communicator", "64 futures in flight (kiwiPy's code)",
         P + "kiwi_rpc_window", "rate", 10000, 1500, postage=True, requires=COMM, params=POSTAGE),
    Case("rpc64.comm.window", "rpc64", "Postage communicator",
         "kiwiPy's code + send_window = 64 (opt-in)", P + "kiwi_rpc_window", "rate", 10000,
         1500, postage=True, requires=COMM, params=POSTAGE_WINDOW64),
    Case("rpc64.aiocomm", "rpc64", "Postage aio communicator", "64 in flight",
         Q + "aio_comm_rpc_window", "rate", 10000, 1500, postage=True, requires=AIOCOMM),
    Case("rpc64.client", "rpc64", "Postage AsyncClient", "64 in flight",
         Q + "client_rpc_window", "rate", 10000, 1500, postage=True, requires=CLIENT),
    # (5) memory
    Case("idle.aiopika", "memory", "aio-pika", "idle RSS, one RPC server",
         P + "aiopika_idle", "mb", 0, 0),
    Case("idle.kiwipy", "memory", "kiwiPy", "idle RSS, one RPC subscriber",
         P + "kiwi_idle", "mb", 0, 0, requires=KIWI, params=KIWIPY),
    Case("idle.core", "memory", "Postage core", "idle RSS, one RPC responder",
         Q + "core_idle", "mb", 0, 0, postage=True),
    Case("idle.comm", "memory", "Postage communicator", "idle RSS, one RPC subscriber",
         P + "kiwi_idle", "mb", 0, 0, postage=True, requires=COMM, params=POSTAGE),
    Case("idle.comm.asyncio", "memory", "Postage communicator",
         "idle RSS, one RPC subscriber, POSTAGE_LOOP=asyncio (opt-in)", P + "kiwi_idle", "mb",
         0, 0, postage=True, requires=COMM, params={**POSTAGE, "loop": "asyncio"}),
    Case("pending.aiopika", "memory", "aio-pika", "extra for 10,000 pending RPCs (tasks)",
         P + "aiopika_pending", "mb", 10000, 2500),
    Case("pending.kiwipy", "memory", "kiwiPy", "extra for 10,000 pending rpc_send futures",
         P + "kiwi_pending", "mb", 10000, 2500, requires=KIWI, params=KIWIPY),
    Case("pending.core", "memory", "Postage core", "extra for 10,000 pending calls (tasks)",
         Q + "core_pending", "mb", 10000, 2500, postage=True),
    Case("pending.comm", "memory", "Postage communicator",
         "extra for 10,000 pending rpc_send futures", P + "kiwi_pending", "mb", 10000, 2500,
         postage=True, requires=COMM, params=POSTAGE),
]
for _k in (1, 2, 4):
    CASES.append(Case(f"scale.aiopika.{_k}", "scaling", "aio-pika",
                      f"{_k} consumer process(es)", Q + "scaling_aiopika", "rate", 20000, 3000,
                      params={"consumers": _k}))
    CASES.append(Case(f"scale.core.{_k}", "scaling", "Postage core",
                      f"{_k} consumer process(es)", Q + "scaling_postage", "rate", 20000, 3000,
                      postage=True, params={"consumers": _k}))

# kiwiPy's code on postage.kiwipy (the drop-in: kiwiPy's wire format and semantics)
CASES += [
    Case("publish.pkiwipy", "publish", "postage.kiwipy", "task_send(no_reply=True), sequential",
         P + "kiwi_publish", "rate", 2000, 400, postage=True, requires=PKIWI,
         params=POSTAGE_KIWIPY),
    Case("e2e.pkiwipy", "e2e", "postage.kiwipy", "task queue (kiwiPy's code), prefetch 256",
         P + "kiwi_e2e", "rate", 3000, 500, postage=True, requires=PKIWI,
         params=POSTAGE_KIWIPY),
    Case("rpc.pkiwipy", "rpc", "postage.kiwipy", "rpc_send().result() (kiwiPy's code)",
         P + "kiwi_rpc_seq", "latency", 1000, 200, postage=True, requires=PKIWI,
         params=POSTAGE_KIWIPY),
    Case("rpc64.pkiwipy", "rpc64", "postage.kiwipy", "64 futures in flight (kiwiPy's code)",
         P + "kiwi_rpc_window", "rate", 3000, 500, postage=True, requires=PKIWI,
         params=POSTAGE_KIWIPY),
    Case("idle.pkiwipy", "memory", "postage.kiwipy", "idle RSS, one RPC subscriber",
         P + "kiwi_idle", "mb", 0, 0, postage=True, requires=PKIWI, params=POSTAGE_KIWIPY),
    Case("pending.pkiwipy", "memory", "postage.kiwipy",
         "extra for 10,000 pending rpc_send futures", P + "kiwi_pending", "mb", 10000, 2500,
         postage=True, requires=PKIWI, params=POSTAGE_KIWIPY),
]

BY_ID = {c.id: c for c in CASES}


@dataclass(frozen=True)
class Target:
    """``postage`` case's metric compared with ``peer``'s (a ratio) or with an absolute limit."""

    text: str
    postage: str
    op: str  # ">=" or "<="
    bound: float
    peer: str | None = None  # None: absolute (MiB)
    reference: bool = False  # the core as a stand-in: informative, not one of the speed targets
    opt_in: bool = False  # measured with an explicit opt-in, beside the default's row


# the overhead of OpenTelemetry: the case without it, how its target reads, op and bound
OTEL_TARGETS = (("publish.client.256", "AsyncClient publish (256)", ">=", 0.9),
                ("e2e.client", "AsyncClient end-to-end", ">=", 0.9),
                ("rpc.client", "AsyncClient RPC p50", "<=", 1.1))


def otel_targets() -> list[Target]:
    """Each OpenTelemetry case against the same case without it: every span recorded
    (no-op exporter, BatchSpanProcessor), then one trace in ten sampled (opt-in)."""
    recorded = [Target(f"OpenTelemetry on, {what}: {text} {op} {bound:g}x off",
                       f"{case}.{suffix}", op, bound, case)
                for case, text, op, bound in OTEL_TARGETS
                for mode, (suffix, what) in OTEL_MODES.items() if mode != "sampled"]
    suffix = OTEL_MODES["sampled"][0]
    return recorded + [
        Target(f"(opt-in) OpenTelemetry, 10 % sampled: {text} {op} {bound:g}x off",
               f"{case}.{suffix}", op, bound, case, opt_in=True)
        for case, text, op, bound in OTEL_TARGETS]


TARGETS: list[Target] = [
    Target("classic message_X publish >= 3x pika", "publish.classic", ">=", 3.0, "publish.pika"),
    Target("AsyncClient publish (256) >= 1.0x aio-pika (256)", "publish.client.256", ">=", 1.0,
           "publish.aiopika.256"),
    Target("AsyncClient publish (256) >= 0.9x aiormq (256)", "publish.client.256", ">=", 0.9,
           "publish.aiormq.256"),
    Target("communicator end-to-end >= 4x kiwiPy", "e2e.comm", ">=", 4.0, "e2e.kiwipy"),
    Target("communicator end-to-end >= 0.9x aio-pika", "e2e.aiocomm", ">=", 0.9, "e2e.aiopika"),
    Target("RPC p50: communicator <= 0.5x kiwiPy", "rpc.comm", "<=", 0.5, "rpc.kiwipy"),
    Target("RPC p50: AsyncClient <= 0.9x aio-pika", "rpc.client", "<=", 0.9, "rpc.aiopika"),
    Target("RPC p50: classic rpc_X <= 1.3x pika", "rpc.classic", "<=", 1.3, "rpc.pika"),
    Target("64 RPCs in flight: AsyncClient >= 1.2x aio-pika", "rpc64.client", ">=", 1.2,
           "rpc64.aiopika"),
    Target("64 RPCs in flight: communicator >= 2.5x kiwiPy", "rpc64.comm", ">=", 2.5,
           "rpc64.kiwipy"),
    # the blocking paths, one message at a time, against pika and the async paths
    Target("blocking: classic message_X (confirm per call) >= 1.0x pika", "publish.classic",
           ">=", 1.0, "publish.pika"),
    Target("blocking: communicator task_send, sequential >= 1.0x pika", "publish.comm", ">=",
           1.0, "publish.pika"),
    Target("blocking: classic rpc_X p50 <= 1.2x pika", "rpc.classic", "<=", 1.2, "rpc.pika"),
    Target("blocking: communicator rpc_send().result() p50 <= 1.0x aio-pika", "rpc.comm",
           "<=", 1.0, "rpc.aiopika"),
    Target("blocking: communicator 64 RPCs in flight >= 0.9x aio communicator", "rpc64.comm",
           ">=", 0.9, "rpc64.aiocomm"),
    Target("blocking: communicator 64 RPCs in flight >= 3x kiwiPy", "rpc64.comm", ">=", 3.0,
           "rpc64.kiwipy"),
    Target("(opt-in) classic pipeline = 256 >= 0.9x aiormq (256)", "publish.classic.pipe",
           ">=", 0.9, "publish.aiormq.256", opt_in=True),
    Target("(opt-in) communicator send_window = 256 >= 0.9x aiormq (256)",
           "publish.comm.window", ">=", 0.9, "publish.aiormq.256", opt_in=True),
    # the same targets with the explicit opt-ins for one-thread senders (pipelined sends)
    Target("(opt-in) classic message_X, pipeline = 256 >= 3x pika", "publish.classic.pipe",
           ">=", 3.0, "publish.pika", opt_in=True),
    Target("(opt-in) communicator end-to-end, send_window >= 4x kiwiPy", "e2e.comm.window",
           ">=", 4.0, "e2e.kiwipy", opt_in=True),
    Target("(opt-in) 64 RPCs in flight: communicator, send_window >= 2.5x kiwiPy",
           "rpc64.comm.window", ">=", 2.5, "rpc64.kiwipy", opt_in=True),
    Target("postage.kiwipy publish >= 2x kiwiPy", "publish.pkiwipy", ">=", 2.0,
           "publish.kiwipy"),
    Target("postage.kiwipy end-to-end >= 2x kiwiPy", "e2e.pkiwipy", ">=", 2.0, "e2e.kiwipy"),
    Target("RPC p50: postage.kiwipy <= 0.5x kiwiPy", "rpc.pkiwipy", "<=", 0.5, "rpc.kiwipy"),
    Target("64 RPCs in flight: postage.kiwipy >= 2x kiwiPy", "rpc64.pkiwipy", ">=", 2.0,
           "rpc64.kiwipy"),
    Target("idle communicator <= 30 MB RSS", "idle.comm", "<=", 30.0),
    Target("(opt-in) idle communicator, POSTAGE_LOOP=asyncio <= 30 MB RSS",
           "idle.comm.asyncio", "<=", 30.0, opt_in=True),
    Target("10,000 pending RPCs (communicator) <= 12 MB", "pending.comm", "<=", 12.0),
    *otel_targets(),
    # the core, the path every API is built on: how much headroom the APIs have
    Target("(core) publish 256 >= 1.0x aio-pika", "publish.core.256", ">=", 1.0,
           "publish.aiopika.256", reference=True),
    Target("(core) publish 256 >= 0.9x aiormq", "publish.core.256", ">=", 0.9,
           "publish.aiormq.256", reference=True),
    Target("(core) end-to-end >= 0.9x aio-pika", "e2e.core", ">=", 0.9, "e2e.aiopika",
           reference=True),
    Target("(core) RPC p50 <= 0.9x aio-pika", "rpc.core", "<=", 0.9, "rpc.aiopika",
           reference=True),
    Target("(core) 64 RPCs in flight >= 1.2x aio-pika", "rpc64.core", ">=", 1.2,
           "rpc64.aiopika", reference=True),
    Target("(core) idle <= 40 MB RSS", "idle.core", "<=", 40.0, reference=True),
    Target("(core) 10,000 pending calls <= 20 MB", "pending.core", "<=", 20.0, reference=True),
]
