"""Run the benchmark suite: every case in its own process, one after the other.

    python -m bench [--quick] [--repeat N] [--only NAME] [--json PATH] [--png PATH]

Each repetition of each case runs in a fresh child process (``--child``) with a hard time
limit: a hanging or crashing peer becomes an error row, never a hung benchmark. Queues a
child announces (``QUEUE name`` on stdout) are deleted by the parent afterwards, even when
the child had to be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _child(args: argparse.Namespace) -> int:
    """Run one repetition of one case and print ``RESULT {json}``."""
    import importlib

    from bench.cases import BY_ID
    from bench.common import Ctx

    case = BY_ID[args.child]
    module, _, name = case.fn.partition(":")
    fn = getattr(importlib.import_module(module), name)
    ctx = Ctx(url=args.url, n=args.n, window=args.window, quick=args.quick,
              deadline=time.monotonic() + args.deadline, params=dict(case.params),
              prefix=f"bench.{os.getpid()}")
    try:
        metrics = fn(ctx)
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}".strip()
        print("ERROR " + json.dumps(text[:300]), flush=True)
        import traceback

        traceback.print_exc()
        return 1
    print("RESULT " + json.dumps(metrics), flush=True)
    return 0


def _cleanup(url: str, queues: list[str]) -> None:
    """Delete what a child created (idempotent; a missing queue is fine)."""
    if not queues:
        return
    try:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            for name in queues:
                ch = conn.channel()
                try:
                    if ".classic-x." in name:
                        ch.exchange_delete(name)
                    else:
                        ch.queue_delete(name)
                    ch.close()
                except Exception:
                    pass
        finally:
            conn.close()
    except Exception as exc:
        print(f"  (cleanup failed: {exc})", file=sys.stderr)


def _run_one(case: Any, url: str, quick: bool, window: int) -> dict[str, Any]:
    n = case.n_quick if quick else case.n
    limit = case.timeout / (2 if quick else 1)
    cmd = [sys.executable, "-m", "bench.run", "--child", case.id, "--url", url, "--n", str(n),
           "--window", str(window), "--deadline", str(limit - 5)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    queues = [line[6:] for line in out.splitlines() if line.startswith("QUEUE ")]
    _cleanup(url, queues)
    result: dict[str, Any] = {"seconds": round(time.monotonic() - start, 2)}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result["metrics"] = json.loads(line[7:])
        elif line.startswith("ERROR "):
            result["error"] = json.loads(line[6:])
    if timed_out:
        result["error"] = f"killed after {limit:g} s (hard limit)"
    elif "metrics" not in result and "error" not in result:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        result["error"] = f"exit status {proc.returncode}: {tail[:200]}"
    if "error" in result:
        result["stderr_tail"] = err[-2000:]
    return result


def _fmt_metrics(metric: str, m: dict[str, float]) -> str:
    if metric == "rate":
        return f"{m['rate']:,.0f}/s"
    if metric == "latency":
        return f"p50 {m['p50']:.3f} ms, p99 {m['p99']:.3f} ms"
    return f"{m['mb']:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("POSTAGE_BENCH_URL", DEFAULT_URL),
                        help="broker URL (default: $POSTAGE_BENCH_URL or %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition with smaller counts (< 2 minutes)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions per case (default 3; 1 with --quick)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only cases whose id, workload or implementation contains "
                             "NAME (repeatable), e.g. --only rpc --only aio-pika")
    parser.add_argument("--window", type=int, default=256, help="publishes in flight")
    parser.add_argument("--json", type=Path, default=None, help="JSON output path")
    parser.add_argument("--png", type=Path, default=None, help="chart output path")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not copy the chart and table to docs/bench/")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    # internal: one repetition of one case
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        return _child(args)

    from bench import report
    from bench.cases import CASES, TARGETS, available

    cases = CASES
    if args.only:
        wanted = [w.lower() for w in args.only]
        cases = [c for c in CASES
                 if any(w in c.id.lower() or w == c.workload or w in c.impl.lower()
                        for w in wanted)]
    if args.list:
        for c in cases:
            print(f"{c.id:22} {c.workload:8} {c.impl:26} {c.label}")
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"bench: {len(cases)} cases x {repeat} on {report.redact(args.url)}"
          f"{' (quick)' if args.quick else ''}", file=sys.stderr, flush=True)
    # Repetitions are interleaved (every case once, then every case again...), so a slow
    # spell of the machine falls on Postage and its peers alike instead of on one case.
    results: list[dict[str, Any]] = []
    runnable: list[tuple[str, Any, dict[str, Any], list[str]]] = []
    for i, case in enumerate(cases, 1):
        head = f"[{i:2}/{len(cases)}] {case.workload:7} {case.impl} · {case.label}"
        entry: dict[str, Any] = {"id": case.id, "workload": case.workload, "impl": case.impl,
                                 "label": case.label, "metric": case.metric,
                                 "postage": case.postage, "runs": [],
                                 "n": case.n_quick if args.quick else case.n}
        results.append(entry)
        why = available(case)
        if why:
            entry["status"] = why
            print(f"{head}: {why}", file=sys.stderr, flush=True)
            continue
        runnable.append((head, case, entry, []))
    for r in range(repeat):
        for head, case, entry, errors in runnable:
            res = _run_one(case, args.url, args.quick, args.window)
            if "metrics" in res:
                entry["runs"].append(res["metrics"])
                shown = _fmt_metrics(case.metric, res["metrics"])
            else:
                errors.append(res["error"])
                shown = "ERROR " + res["error"]
                if os.environ.get("BENCH_DEBUG"):
                    print(res.get("stderr_tail", ""), file=sys.stderr)
            print(f"{head} [{r + 1}/{repeat}] {shown} ({res['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
    for _head, _case, entry, errors in runnable:
        if entry["runs"]:
            keys = entry["runs"][0].keys()
            entry["median"] = {k: statistics.median(run[k] for run in entry["runs"])
                               for k in keys}
            entry["status"] = "ok" if not errors else f"ok ({len(errors)} failed run(s))"
        else:
            entry["status"] = "error: " + (errors[0] if errors else "no result")
        if errors:
            entry["errors"] = errors

    doc = report.build(results, TARGETS, url=args.url, quick=args.quick, repeat=repeat,
                       seconds=time.monotonic() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = args.json or RESULTS / f"bench-{stamp}.json"
    png_path = args.png or RESULTS / f"bench-{stamp}.png"
    md_path = RESULTS / f"bench-{stamp}.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    table = report.markdown(doc)
    md_path.write_text(table)
    chart_ok = report.chart(doc, png_path)
    print(table)
    print(f"bench: JSON {json_path}; table {md_path}; "
          f"chart {png_path if chart_ok else '(not drawn: matplotlib missing)'}",
          file=sys.stderr)
    if not args.no_docs and not args.only and not args.quick:  # full runs only
        docs = ROOT / "docs" / "bench"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "latest.md").write_text(table)
        if chart_ok:
            (docs / "latest.png").write_bytes(png_path.read_bytes())
        print(f"bench: copied to {docs}/latest.md and latest.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
