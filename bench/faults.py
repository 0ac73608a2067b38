"""Run the fault tests and print the figures they measured.

``python -m bench.faults [options] [-- pytest arguments]`` runs
``pytest tests/faults -q -p no:cacheprovider`` (the tests start their own RabbitMQ nodes)
with ``POSTAGE_FAULT_REPORT`` set to a JSON file, then prints one row per scenario:
scenario, API, messages sent, confirmed by the broker, delivered, lost (confirmed but
never delivered: must be 0), duplicates (delivered more than once: allowed, at least
once), recovery time (from each fault to the first confirm after it) and total time.

Options: ``--json PATH`` (where the figures go; default ``bench/results/faults-<time>.json``),
``--from PATH`` (print the table of an earlier run, run nothing), ``--markdown`` (a
Markdown table, as in ``docs/reliability.md``), ``-m EXPR`` (pytest marker expression,
e.g. ``-m "not cluster"``). The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("scenario", "API", "sent", "confirmed", "delivered", "lost", "duplicates",
           "recovery s", "total s")


def _recovery(row: dict[str, Any]) -> str:
    values = row.get("recovery_s") or []
    return "/".join(f"{v:.2f}" for v in values) or "-"


def rows_of(figures: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (str(f["scenario"]), str(f.get("api", "core")), str(f["sent"]), str(f["confirmed"]),
         str(f["delivered"]), str(f["lost"]), str(f["duplicates"]), _recovery(f),
         f"{f.get('seconds', 0.0):.1f}")
        for f in figures
    ]


def table(figures: list[dict[str, Any]], *, markdown: bool = False) -> str:
    rows = rows_of(figures)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < 2 else "--:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
                  for i, c in enumerate(COLUMNS)]

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        lines = [fmt(COLUMNS), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows]
    notes = [f"- {f['scenario']} [{f.get('api', 'core')}]: {f['notes']}"
             for f in figures if f.get("notes")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="where to write the figures (JSON)")
    parser.add_argument("--from", dest="source", type=Path, help="print an earlier run")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("-m", dest="marker", help="pytest marker expression")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)

    code = 0
    if args.source is not None:
        path = args.source
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = args.json or ROOT / "bench" / "results" / f"faults-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider"]
        if args.marker:
            command += ["-m", args.marker]
        command += args.pytest_args
        env = {**os.environ, "POSTAGE_FAULT_REPORT": str(path)}
        print("running:", " ".join(command), file=sys.stderr)
        started = time.monotonic()
        code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        print(f"fault tests: exit {code} in {time.monotonic() - started:.0f} s; figures in "
              f"{path}", file=sys.stderr)
    if not path.exists():
        print(f"no figures at {path} (did any fault test run?)", file=sys.stderr)
        return code or 1
    figures = json.loads(path.read_text())
    print(table(figures, markdown=args.markdown))
    return code


if __name__ == "__main__":
    sys.exit(main())
