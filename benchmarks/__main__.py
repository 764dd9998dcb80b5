"""``python -m benchmarks``: run the workloads, print the table, write JSON, check budgets."""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import shutil
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.harness import Harness, Row
from benchmarks.workloads import WORKLOADS

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asyncflow vs the bare floor (and Prefect), each workload in a fresh process.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run < 1 min")
    parser.add_argument(
        "--prefect-python",
        metavar="PATH",
        help="python of a venv with prefect==3.8.8 (fastapi==0.150.0): adds the Prefect column",
    )
    parser.add_argument(
        "--prefect-timeout",
        type=float,
        metavar="S",
        help="time limit per Prefect workload (default 30 s quick, 120 s full)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results.json",
        metavar="PATH",
        help="where to write the results (default: benchmarks/results.json)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a ratio breaks a budget in budgets.toml (needs Python 3.11+)",
    )
    parser.add_argument("--budgets", type=Path, default=HERE / "budgets.toml", metavar="PATH")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only these workloads (comma-separated, shell patterns; repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:26} {w.what}")
        return 0
    budgets = report.load_budgets(args.budgets, required=args.check)
    selected = WORKLOADS
    if args.only:
        patterns = [p.strip() for arg in args.only for p in arg.split(",") if p.strip()]
        selected = [w for w in WORKLOADS if any(fnmatch.fnmatch(w.name, p) for p in patterns)]
        if not selected:
            print(f"no workload matches {patterns}; see --list", file=sys.stderr)
            return 2
    if args.prefect_python and not Path(args.prefect_python).exists():
        print(f"--prefect-python: {args.prefect_python} does not exist", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    mode = "quick" if args.quick else "full"
    log(f"asyncflow benchmarks ({mode}), {len(selected)} workloads, each in fresh processes")
    harness = Harness(args.quick, args.prefect_python, args.prefect_timeout, log)
    started = time.perf_counter()
    rows: list[Row] = []
    try:
        for w in selected:
            rows += harness.run(w)
    finally:
        shutil.rmtree(harness.tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    verdicts = report.check(rows, budgets) if budgets is not None else []
    print(report.table(rows, verdicts))
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": mode,
        "machine": report.machine(),
        "prefect_python": args.prefect_python,
        "prefect_version": harness.prefect_version,
        "prefect_timeout_s": harness.prefect_timeout,
        "elapsed_s": round(elapsed, 1),
    }
    report.to_json(rows, verdicts, meta, args.json)
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; JSON: {args.json}")
    if budgets is None:
        print("budgets not shown: reading budgets.toml needs Python 3.11+")
    broken = [v for v in verdicts if v.status == "FAIL"]
    unmeasured = [v for v in verdicts if v.status == "not measured"]
    if verdicts:
        print(
            f"budgets: {sum(v.status == 'ok' for v in verdicts)} ok, {len(broken)} broken, "
            f"{len(unmeasured)} not measured"
        )
        for v in broken:
            print(f"  BROKEN {v.row_id}: {v.rule}, got {v.detail}")
        for v in unmeasured:
            print(f"  not measured {v.row_id}: {v.detail or 'no figure'}")
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
