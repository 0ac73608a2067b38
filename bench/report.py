"""Turn the runs into a document (JSON), a Markdown table and a PNG chart of the ratios."""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cases import Target

PACKAGES = ("postage", "aiormq", "pamqp", "aio-pika", "pika", "kiwipy", "orjson", "uvloop",
            "matplotlib")
WORKLOADS = {
    "publish": "1. Publish throughput (100 B, persistent, confirms)",
    "e2e": "2. End-to-end publish → handler → ack",
    "rpc": "3. Sequential RPC latency",
    "rpc64": "4. RPC throughput, 64 calls in flight",
    "memory": "5. Memory",
    "scaling": "6. Scaling: end-to-end with 1, 2, 4 consumer processes",
}


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _machine(url: str) -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        props = conn._impl.server_properties
        info["rabbitmq"] = props.get("version", b"?").decode() if isinstance(
            props.get("version"), bytes) else props.get("version")
        conn.close()
    except Exception as exc:
        info["rabbitmq"] = f"unknown ({type(exc).__name__})"
    return info


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _value(entry: dict[str, Any] | None) -> float | None:
    if not entry or "median" not in entry:
        return None
    key = {"rate": "rate", "latency": "p50", "mb": "mb"}[entry["metric"]]
    value: float = entry["median"][key]
    return value


def evaluate(results: list[dict[str, Any]], targets: list[Target]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in results}
    rows = []
    for t in targets:
        mine, peer = by_id.get(t.postage), by_id.get(t.peer) if t.peer else None
        row: dict[str, Any] = {"target": t.text, "postage": t.postage, "peer": t.peer,
                               "op": t.op, "bound": t.bound, "reference": t.reference,
                               "opt_in": t.opt_in}
        a = _value(mine)
        b = _value(peer) if t.peer else 1.0
        if mine is None or a is None:
            row["status"] = (mine or {}).get("status", "not run")
        elif t.peer and b is None:
            row["status"] = "peer: " + (peer or {}).get("status", "not run")
        else:
            assert b is not None
            ratio = a / b if t.peer else a
            row["ratio"] = ratio
            met = ratio >= t.bound if t.op == ">=" else ratio <= t.bound
            row["status"] = "met" if met else "NOT met"
            row["met"] = met
        rows.append(row)
    return rows


def build(results: list[dict[str, Any]], targets: list[Target], *, url: str, quick: bool,
          repeat: int, seconds: float) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(url),
        "versions": _versions(),
        "settings": {"quick": quick, "repeat": repeat, "broker": redact(url),
                     "loop": os.environ.get("BENCH_LOOP", "uvloop"), "body_bytes": 100,
                     "seconds": round(seconds, 1)},
        "results": results,
        "targets": evaluate(results, targets),
    }


def _fmt(entry: dict[str, Any]) -> tuple[str, str]:
    m = entry.get("median")
    if not m:
        return "—", entry.get("status", "")
    if entry["metric"] == "rate":
        unit = "calls/s" if entry["workload"].startswith("rpc") else "msg/s"
        return f"{m['rate']:,.0f} {unit}", ""
    if entry["metric"] == "latency":
        return f"{m['p50']:.3f} ms", f"p99 {m['p99']:.3f} ms"
    extra = ""
    if "per_call_kb" in m:
        extra = f"{m['per_call_kb']:.2f} KiB/call (tracemalloc)"
    return f"{m['mb']:.1f} MiB", extra


def markdown(doc: dict[str, Any]) -> str:
    mach, s = doc["machine"], doc["settings"]
    v = doc["versions"]
    lines = [
        f"# Postage benchmark — {doc['date']}",
        "",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cpus')} CPUs, "
        f"{mach.get('memory_gb', '?')} GB, {mach.get('platform')}, Python {mach.get('python')}; "
        f"RabbitMQ {mach.get('rabbitmq')} on loopback. "
        f"{'Quick run' if s['quick'] else 'Full run'}, median of {s['repeat']} run(s), "
        f"{s['loop']} loop, {s['seconds']:.0f} s in all.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## Targets (ratios measured in this run)",
        "",
        "| target | ratio / value | needed | status |",
        "|---|---:|---:|---|",
    ]
    for t in doc["targets"]:
        val = t.get("ratio")
        shown = "—" if val is None else (f"{val:.2f}x" if t["peer"] else f"{val:.1f} MiB")
        need = f"{t['op']} {t['bound']:g}{'x' if t['peer'] else ' MiB'}"
        lines.append(f"| {t['target']} | {shown} | {need} | {t['status']} |")
    lines += ["", "Rows starting with (opt-in) measure the same target with an explicit opt-in "
              "for one-thread senders (sends return before their confirm; failures reach "
              "the futures or a later call): the default rows above them keep one confirm "
              "per call; the (opt-in) OpenTelemetry rows sample one trace in ten. "
              "Rows starting with (core) use the core directly: the reference "
              "path all APIs are built on, not one of the speed targets.", "",
              "## Results", ""]
    for wl, title in WORKLOADS.items():
        rows = [r for r in doc["results"] if r["workload"] == wl]
        if not rows:
            continue
        lines += [f"### {title}", "", "| implementation | how | median | notes |",
                  "|---|---|---:|---|"]
        for r in rows:
            med, notes = _fmt(r)
            if r.get("status", "ok").startswith("ok ("):
                notes = (notes + "; " if notes else "") + r["status"]
            name = f"**{r['impl']}**" if r["postage"] else r["impl"]
            lines.append(f"| {name} | {r['label']} | {med} | {notes} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> bool:
    """Bars of Postage's advantage per target (higher is better; a tick marks the target),
    and the scaling curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [t for t in doc["targets"] if "ratio" in t]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, max(4.0, 0.42 * len(rows) + 1.5)),
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    labels, adv, need, colors = [], [], [], []
    for t in rows:
        r, b = t["ratio"], t["bound"]
        if t["op"] == ">=":
            a, n = r, b
        else:
            a, n = b / r if r else 0.0, 1.0
            if t["peer"]:
                a, n = 1 / r if r else 0.0, 1 / b
        labels.append(t["target"])
        adv.append(a)
        need.append(n)
        colors.append("#2e7d32" if t.get("met") else "#c62828")
        if t["reference"] or t.get("opt_in"):
            colors[-1] = "#81c784" if t.get("met") else "#ef9a9a"
    y = list(range(len(rows)))[::-1]
    ax.barh(y, adv, color=colors)
    ax.scatter(need, y, marker="|", s=400, color="black", zorder=3, label="target")
    for yi, a in zip(y, adv, strict=True):
        ax.text(a, yi, f" {a:.2f}x", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Postage's advantage (x peer, or limit / value for memory); higher is better")
    ax.set_title("Speed targets (green: met, red: not met; pale: opt-in or core reference)")
    ax.legend(loc="lower right", fontsize=8)
    scale = [r for r in doc["results"] if r["workload"] == "scaling" and r.get("median")]
    for impl in sorted({r["impl"] for r in scale}):
        pts = sorted((int(r["id"].rsplit(".", 1)[1]), r["median"]["rate"])
                     for r in scale if r["impl"] == impl)
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
    ax2.set_xticks([1, 2, 4])
    ax2.set_xlabel("consumer processes")
    ax2.set_ylabel("end-to-end msg/s")
    ax2.set_title("Scaling (one queue)")
    if scale:
        ax2.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"Postage benchmark {doc['date']} — {m.get('cpus')} CPUs, "
                 f"RabbitMQ {m.get('rabbitmq')}, {'quick' if doc['settings']['quick'] else 'full'}"
                 f" run", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
