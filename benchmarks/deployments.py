"""Deployments: start lateness, queue throughput and cancel latency of `serve` and
`run_deployment`, on SQLite (and PostgreSQL with `--postgres URL`), with the bare floor.

``python -m benchmarks.deployments [--quick] [--postgres URL] [--prefect-python PATH]
[--json PATH] [--check]``

Every scenario runs in fresh processes: a serving process (`asyncflow.serve`) and, where a
run is queued or cancelled from elsewhere, a second process. Lateness is a run's start
(its first Running) minus its scheduled time, read from the store afterwards.

- `schedule_lateness`: N slots of an interval schedule (10 ms apart) served by one process,
  counted from half a second after the deployment was resumed, a second after the process
  started serving (not its start-up, nor the poll that notices the resume). Floor: an
  anyio loop sleeping until each slot (a timer's own lateness).
- `queued_lateness`: N runs queued ahead by `run_deployment(scheduled_time=...)` from
  another process, 10 ms apart. Floor: as above.
- `create`: `run_deployment(timeout=0)` calls per second, nobody serving. Floor: one
  `INSERT` and commit per row with the bare driver (sqlite3 with the store's pragmas, or
  psycopg).
- `serve`: N trivial runs queued, then claimed, run and recorded by one serving process
  (limit 8): completed runs per second. Floor: a bare queue on the same driver: claim a
  row (UPDATE ... RETURNING), run a no-op, mark it done, a commit each.
- `cancel`: `cancel_run` from another process of a served run: seconds until the store
  says Cancelled (no floor: the figure is the time to notice, 0.5 s polls).

`--check` fails when p99 schedule lateness is over 100 ms (issue 15's target).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 0.01

SERVED = textwrap.dedent(
    """
    import sys, time
    import anyio
    from asyncflow import flow, task, serve
    from asyncflow.schedules import Interval

    @flow
    def trivial(i: int = 0) -> int:
        return i

    @task
    def step() -> None:
        time.sleep(0.01)

    @flow
    def busy() -> None:
        for _ in range(100_000):
            step()

    deployments = [trivial.to_deployment("queue"), busy.to_deployment("busy")]
    slots = int(sys.argv[1])
    if slots:  # (paused: the benchmark resumes it once this process serves, see Server)
        deployments.append(trivial.to_deployment("timed", paused=True, schedules=[
            Interval(INTERVAL, catchup="all", max_catchup=10_000)
        ]))
    serve(*deployments, limit=8, grace_period=0)
    """
).replace("INTERVAL", repr(INTERVAL))


def _env(home: Path, store: str) -> dict[str, str]:
    return {
        **os.environ,
        "ASYNCFLOW_HOME": str(home),
        "ASYNCFLOW_STORE": store,
        "ASYNCFLOW_LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }


def _store_for(kind: str, home: Path, postgres: str | None) -> str:
    if kind == "sqlite":
        return f"sqlite://{home / 'runs.db'}"
    assert postgres is not None
    import uuid
    from urllib.parse import quote

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in postgres else "?"
    return f"{postgres}{sep}options={quote(f'-csearch_path={schema}')}"


class Server:
    """A serving process of SERVED (with `slots` timed slots if > 0)."""

    def __init__(self, home: Path, store: str, slots: int = 0) -> None:
        script = home / "served.py"
        script.write_text(SERVED)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(slots)], env=_env(home, store), cwd=home
        )
        self.store = store
        deadline = time.monotonic() + 60
        while len(_stored(store, lambda s: s.list_deployments())) < (3 if slots else 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the serving process did not start")
            time.sleep(0.05)
        if slots:  # its slots from now on: lateness once serving, not the process's start
            time.sleep(1.0)
            _stored(store, lambda s: s.set_deployment_paused("trivial/timed", False))
        # (it notices the resume at its next poll: slots from half a second on are counted)
        self.counted_from = time.time() + 0.5

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _stored(store: str, read: Any) -> Any:
    from asyncflow.store import open_store

    opened = open_store(store)
    try:
        return read(opened)
    finally:
        opened.close()


def _runs_of(store: str, deployment: str) -> list[Any]:
    def read(s: Any) -> list[Any]:
        return [r for r in s.list_runs_sync(limit=1_000_000) if r.deployment == deployment]

    return _stored(store, read)  # type: ignore[no-any-return]


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": ordered[-1], "n": len(ordered)}


def _lateness(runs: list[Any]) -> list[float]:
    return [
        (r.start_time - r.scheduled_time).total_seconds()
        for r in runs
        if r.start_time is not None and r.scheduled_time is not None
    ]


# -- scenarios ------------------------------------------------------------------------------------
def schedule_lateness(home: Path, store: str, n: int) -> dict[str, Any]:
    server = Server(home, store, slots=n)
    counted = server.counted_from
    try:
        deadline = time.monotonic() + n * INTERVAL + 30
        while True:
            done = [
                r
                for r in _runs_of(store, "trivial/timed")
                if r.is_final and r.scheduled_time.timestamp() >= counted
            ]
            if len(done) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        server.stop()
    return _percentiles(_lateness(sorted(done, key=lambda r: r.scheduled_time)[:n]))


def queued_lateness(home: Path, store: str, n: int) -> dict[str, Any]:
    server = Server(home, store)
    try:
        queue = textwrap.dedent(
            f"""
            import datetime, time
            from asyncflow.deployments import run_deployment
            t0 = time.time() + 2.0
            for i in range({n}):
                when = datetime.datetime.fromtimestamp(t0 + i * {INTERVAL}, datetime.timezone.utc)
                run_deployment("trivial/queue", {{"i": i}}, scheduled_time=when, timeout=0)
            """
        )
        subprocess.run([sys.executable, "-c", queue], env=_env(home, store), check=True)
        deadline = time.monotonic() + n * INTERVAL + 60
        while True:
            runs = _runs_of(store, "trivial/queue")
            if sum(r.is_final for r in runs) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        server.stop()
    return _percentiles(_lateness(runs))


def create(home: Path, store: str, n: int) -> dict[str, Any]:
    code = textwrap.dedent(
        f"""
        import time
        from asyncflow import flow
        from asyncflow.deployments import run_deployment

        @flow
        def trivial(i: int = 0) -> int:
            return i

        trivial.to_deployment("queue").apply()
        run_deployment("trivial/queue", timeout=0)
        t = time.perf_counter()
        for i in range({n}):
            run_deployment("trivial/queue", {{"i": i}}, timeout=0)
        print(time.perf_counter() - t)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(home, store), check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    seconds = float(out.stdout.strip().splitlines()[-1])
    return {"per_second": n / seconds, "us_per_run": seconds / n * 1e6, "n": n}


def serve_throughput(home: Path, store: str, n: int) -> dict[str, Any]:
    create(home, store, n)  # n runs queued, due now
    server = Server(home, store)
    try:
        deadline = time.monotonic() + 300
        while True:
            runs = _runs_of(store, "trivial/queue")
            if sum(r.is_final for r in runs) >= n + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    finally:
        server.stop()
    started = min(r.start_time for r in runs if r.start_time)
    ended = max(r.end_time for r in runs if r.end_time)
    seconds = (ended - started).total_seconds()
    return {"per_second": len(runs) / seconds, "us_per_run": seconds / len(runs) * 1e6,
            "n": len(runs)}  # fmt: skip


def cancel(home: Path, store: str, n: int) -> dict[str, Any]:
    from asyncflow.states import StateType

    server = Server(home, store)
    latencies = []
    try:
        code = textwrap.dedent(
            f"""
            import time
            from asyncflow import cancel_run
            from asyncflow.deployments import run_deployment
            from asyncflow.store import open_store
            from asyncflow.states import StateType
            store = open_store()
            for _ in range({n}):
                run = run_deployment("busy/busy", timeout=0)
                while store.read_run_sync(run.id).state_type is not StateType.RUNNING:
                    time.sleep(0.005)
                time.sleep(0.05)
                t = time.perf_counter()
                cancel_run(run.id)
                while store.read_run_sync(run.id).state_type is not StateType.CANCELLED:
                    time.sleep(0.005)
                print(time.perf_counter() - t, flush=True)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=_env(home, store), check=True,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        latencies = [float(line) for line in out.stdout.split()]
    finally:
        server.stop()
    assert StateType.CANCELLED
    return _percentiles(latencies)


# -- floors ---------------------------------------------------------------------------------------
def timer_floor(n: int) -> dict[str, Any]:
    import anyio

    async def main() -> list[float]:
        start = time.time() + 0.5
        late = []
        for i in range(n):
            slot = start + i * INTERVAL
            await anyio.sleep(max(0.0, slot - time.time()))
            late.append(time.time() - slot)
        return late

    return _percentiles(anyio.run(main))


def _sqlite_floor(path: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE q (pk INTEGER PRIMARY KEY, params TEXT, due REAL, state TEXT, "
        "started REAL, ended REAL)"
    )
    conn.execute("CREATE INDEX q_due ON q (due) WHERE state = 'S'")
    return conn


def _pg_floor(url: str) -> Any:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute(
        "CREATE TABLE q (pk BIGSERIAL PRIMARY KEY, params TEXT, due DOUBLE PRECISION, "
        "state TEXT, started DOUBLE PRECISION, ended DOUBLE PRECISION)"
    )
    conn.execute("CREATE INDEX q_due ON q (due) WHERE state = 'S'")
    return conn


def queue_floor(kind: str, home: Path, store: str, n: int) -> dict[str, Any]:
    """Per row: INSERT + commit (create); claim + run a no-op + done, a commit each (serve)."""
    conn = _sqlite_floor(home / "floor.db") if kind == "sqlite" else _pg_floor(store)
    mark = "?" if kind == "sqlite" else "%s"
    insert = f"INSERT INTO q (params, due, state) VALUES ({mark}, {mark}, 'S')"
    claim = (
        f"UPDATE q SET state = 'R', started = {mark} WHERE pk = (SELECT pk FROM q "
        f"WHERE state = 'S' AND due <= {mark} ORDER BY due LIMIT 1"
        + (" FOR UPDATE SKIP LOCKED" if kind != "sqlite" else "")
        + ") RETURNING pk, params"
    )
    done = f"UPDATE q SET state = 'C', ended = {mark} WHERE pk = {mark}"
    begin = "BEGIN IMMEDIATE" if kind == "sqlite" else "BEGIN"
    t = time.perf_counter()
    for i in range(n):
        conn.execute(begin)
        conn.execute(insert, (json.dumps({"i": i}), time.time()))
        conn.execute("COMMIT")
    created = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        conn.execute(begin)
        pk, params = conn.execute(claim, (time.time(), time.time())).fetchone()
        conn.execute("COMMIT")
        json.loads(params)
        conn.execute(begin)
        conn.execute(done, (time.time(), pk))
        conn.execute("COMMIT")
    served = time.perf_counter() - t
    conn.close()
    return {
        "create_per_second": n / created,
        "create_us": created / n * 1e6,
        "serve_per_second": n / served,
        "serve_us": served / n * 1e6,
    }


def prefect_serve(python: str, n: int) -> dict[str, Any]:
    """Prefect 3.8.8's `serve` on the same scenarios (benchmarks/side_prefect_serve.py, run
    by the Prefect interpreter against a `prefect server` of its own)."""
    script = Path(__file__).with_name("side_prefect_serve.py")
    out = subprocess.run(
        [python, str(script), "--n", str(n)], capture_output=True, text=True, timeout=1800
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:]}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployments")
    parser.add_argument("--quick", action="store_true", help="small sizes (~1 min)")
    parser.add_argument("--postgres", metavar="URL", help="also on this PostgreSQL server")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 over the lateness target")
    parser.add_argument(
        "--prefect-python", metavar="PATH", help="a Prefect 3.8.8 venv's python: adds its serve"
    )
    parser.add_argument(
        "--prefect-n", type=int, default=30, metavar="N",
        help="runs per Prefect scenario (default 30: each is a process, ~2 min in all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    n_slots = 200 if args.quick else 1000
    n_queue = 300 if args.quick else 2000
    n_cancel = 5 if args.quick else 20
    stores = ["sqlite"] + (["postgres"] if args.postgres else [])
    results: dict[str, Any] = {"timer_floor": timer_floor(n_slots)}
    for kind in stores:

        def fresh(kind: str = kind) -> tuple[Path, str]:
            home = Path(tempfile.mkdtemp(prefix=f"asyncflow-bench-{kind}-"))
            return home, _store_for(kind, home, args.postgres)

        row: dict[str, Any] = {}
        for name, scenario, n in (
            ("schedule_lateness", schedule_lateness, n_slots),
            ("queued_lateness", queued_lateness, n_slots),
            ("create", create, n_queue),
            ("serve", serve_throughput, n_queue),
            ("cancel", cancel, n_cancel),
        ):
            print(f"{kind}: {name} ...", file=sys.stderr, flush=True)
            row[name] = scenario(*fresh(), n)
        row["queue_floor"] = queue_floor(kind, *fresh(), n_queue)
        results[kind] = row
    if args.prefect_python:
        print(f"prefect: serve with {args.prefect_n} runs ...", file=sys.stderr, flush=True)
        results["prefect"] = prefect_serve(args.prefect_python, args.prefect_n)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    p99 = results["sqlite"]["schedule_lateness"]["p99"]
    return 1 if args.check and p99 > 0.1 else 0


def _print(results: dict[str, Any]) -> None:
    timer = results["timer_floor"]
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print(f"\ntimer floor (anyio.sleep to each slot): p50 {ms(timer['p50'])}, "
          f"p99 {ms(timer['p99'])}")  # fmt: skip
    for kind in ("sqlite", "postgres"):
        row = results.get(kind)
        if row is None:
            continue
        floor = row["queue_floor"]
        print(f"\n{kind}")
        for name in ("schedule_lateness", "queued_lateness"):
            r = row[name]
            print(f"  {name:18} p50 {ms(r['p50']):>9}  p99 {ms(r['p99']):>9}  max "
                  f"{ms(r['max']):>9}  (n={r['n']}; p99 {r['p99'] / timer['p99']:.1f}x "
                  "the timer floor)")  # fmt: skip
        for name, key in (("create", "create"), ("serve", "serve")):
            r = row[name]
            print(f"  {name:18} {r['per_second']:>9.0f} runs/s  {r['us_per_run']:>8.0f} us/run  "
                  f"floor {floor[key + '_per_second']:>7.0f}/s  ratio "
                  f"{r['us_per_run'] / floor[key + '_us']:.1f}x")  # fmt: skip
        c = row["cancel"]
        print(f"  {'cancel':18} p50 {ms(c['p50']):>9}  max {ms(c['max']):>9}  (n={c['n']})")
    prefect = results.get("prefect")
    if prefect is not None:
        print("\nprefect 3.8.8 (serve, its own server, one process per run)")
        if "error" in prefect:
            print(f"  failed: {prefect['error'][-300:]}")
            return
        late = prefect["queued_lateness"]
        ours = results["sqlite"]
        print(
            f"  queued_lateness    p50 {late['p50']:.1f} s  p99 {late['p99']:.1f} s  "
            f"(n={late['n']}; asyncflow/sqlite p99 {ours['queued_lateness']['p99'] * 1000:.0f} ms)"
        )
        for name, key in (("create", "create_per_second"), ("serve", "serve_per_second")):
            print(f"  {name:18} {prefect[key]:>9.2f} runs/s  (asyncflow/sqlite "
                  f"{ours[name]['per_second'] / prefect[key]:.0f}x as many)")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
