"""The web UI and HTTP API: page times with a big store, and API latency under load, with
the bare floor and (given a Prefect interpreter) Prefect 3.8.8's server on its own data.

``python -m benchmarks.server [--quick] [--runs N] [--tasks K] [--postgres URL]
[--prefect-python PATH] [--json PATH] [--check]``

- The store is filled by real flows in a process of its own: N flow runs of a trivial flow
  (100,000 by default), a flow run with K task runs (5,000), a parent with subflows, and a
  deployment. Then `asyncflow server start` serves it, in a process of its own.
- `pages`: each page fetched 30 times one after another over one keep-alive connection
  (after 5 warm-ups): the runs page (newest; filtered; 75% deep by cursor), the big run's
  page and its live fragment, flows, deployments, and the API's first page and the big
  run. Times are seen by the client on localhost, so they include HTTP: an upper bound of
  the server-side render time.
- `api_concurrent`: 50 clients (keep-alive connections of benchmarks/_http_load.py, in a
  process of its own) doing `GET /api/runs` back to back until 2,000 requests are done;
  latency from send to the full body. The client shares the 2 cores with the server, as
  Prefect's does below.
- Floors: the same 50-client load against a bare Starlette app in uvicorn that answers the
  bytes our first page answered (the HTTP stack alone), and the store's read of that page
  in-process (`list_runs_page`, the database work alone).
- Prefect (`benchmarks/side_prefect_server.py`): its server on SQLite, filled through its
  engine (far fewer runs: it stores about a hundred runs a second), the same measurements
  on its REST API (`POST /api/flow_runs/filter`, and what its run page reads).

`--check` fails when a page's p99 is over 150 ms (issue 16's budget).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from benchmarks.deployments import _store_for

ROOT = Path(__file__).resolve().parent.parent
PAGE_BUDGET = 0.150
CLIENTS = 50

FILL = textwrap.dedent(
    """
    import sys, time
    from asyncflow import flow, task

    @flow
    def tiny(i: int) -> int:
        return i

    @task
    def unit(i: int) -> int:
        return i

    @flow
    def wide(k: int) -> int:
        return sum(unit.map(range(k)).result())

    @flow
    def part(i: int) -> int:
        return unit(i)

    @flow
    def parent(n: int = 3) -> int:
        return sum(part(i) for i in range(n))

    if __name__ == "__main__":
        runs, tasks = int(sys.argv[1]), int(sys.argv[2])
        started = time.perf_counter()
        for i in range(runs):
            tiny(i)
        elapsed = time.perf_counter() - started
        wide(tasks)
        parent()
        parent.to_deployment("bench", cron="0 6 * * *").apply()
        print(runs / elapsed)
    """
)

FLOOR_APP = textwrap.dedent(
    """
    import sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = open(sys.argv[2], "rb").read()

    async def page(request):
        return Response(body, media_type="application/json")

    uvicorn.run(Starlette(routes=[Route("/api/runs", page)]), host="127.0.0.1",
                port=int(sys.argv[1]), log_level="warning")
    """
)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(home: Path, store: str) -> dict[str, str]:
    return {**os.environ, "ASYNCFLOW_HOME": str(home), "ASYNCFLOW_STORE": store,
            "ASYNCFLOW_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}  # fmt: skip


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.5) * 1000, "p99_ms": pick(0.99) * 1000, "n": len(ordered)}


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not start") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def pages(base: str, wide_id: str, deep_cursor: str) -> dict[str, Any]:
    import httpx

    paths = {
        "runs": "/runs",
        "runs_filtered": "/runs?flow=tiny&state=COMPLETED",
        "runs_deep": f"/runs?cursor={deep_cursor}",
        "run_5000_tasks": f"/runs/{wide_id}",
        "run_fragment": f"/runs/{wide_id}?fragment=1",
        "flows": "/flows",
        "deployments": "/deployments",
        "api_runs": "/api/runs",
        "api_run_5000_tasks": f"/api/runs/{wide_id}",
    }
    results = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        for name, path in paths.items():
            for _ in range(5):
                http.get(path).raise_for_status()
            times = []
            for _ in range(30):
                started = time.perf_counter()
                answer = http.get(path)
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
            results[name] = {**_percentiles(times), "bytes": len(answer.content)}
    return results


def concurrent(url: str, total: int) -> dict[str, Any]:
    """`total` GETs of `url` by CLIENTS concurrent clients (benchmarks/_http_load.py, a
    process of its own): latency and throughput."""
    load = ROOT / "benchmarks" / "_http_load.py"
    done = subprocess.run(
        [sys.executable, str(load), url, "--clients", str(CLIENTS), "--requests", str(total)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def store_floor(store: str) -> dict[str, Any]:
    from asyncflow.store import open_store

    opened: Any = open_store(store)
    try:
        for _ in range(5):
            opened.list_runs_page(limit=50)
        times = []
        for _ in range(200):
            started = time.perf_counter()
            opened.list_runs_page(limit=50)
            times.append(time.perf_counter() - started)
    finally:
        opened.close()
    return _percentiles(times)


def measure(store: str, home: Path, runs: int, tasks: int, total: int) -> dict[str, Any]:
    import httpx

    script = home / "fill.py"
    script.write_text(FILL)
    print(f"filling the store: {runs} flow runs, one with {tasks} tasks ...", file=sys.stderr)
    started = time.perf_counter()
    filled = subprocess.run(
        [sys.executable, str(script), str(runs), str(tasks)], env=_env(home, store),
        capture_output=True, text=True, check=True, cwd=home,
    )  # fmt: skip
    result: dict[str, Any] = {
        "runs": runs, "tasks": tasks, "fill_runs_per_second": float(filled.stdout.split()[-1]),
        "fill_seconds": time.perf_counter() - started,
    }  # fmt: skip
    if store.startswith("postgresql"):
        # The planner's statistics, as autovacuum makes them within a minute of a bulk
        # load: without them, the first pages after 100,000 inserts are planned blind.
        import psycopg

        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute("ANALYZE")
    port = _port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "asyncflow.cli", "server", "start", "--port", str(port)],
        env=_env(home, store), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_up(f"{base}/api/health", server)
        with httpx.Client(base_url=base, timeout=60) as http:
            wide = http.get("/api/runs", params={"flow": "wide"}).json()["runs"][0]["id"]
            cursor, depth = None, 0
            while depth < runs * 3 // 4:  # (the cursor of a page 75% deep)
                params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
                cursor = http.get("/api/runs", params=params).json()["next_cursor"]
                depth += 500
            first_page = http.get("/api/runs").content
        print("pages ...", file=sys.stderr)
        result["pages"] = pages(base, wide, cursor or "")
        print(f"{CLIENTS} clients ...", file=sys.stderr)
        result["api_concurrent"] = concurrent(f"{base}/api/runs", total)
    finally:
        _stop(server)
    body = home / "page.json"
    body.write_bytes(first_page)
    floor_app = home / "floor_app.py"
    floor_app.write_text(FLOOR_APP)
    port = _port()
    bare = subprocess.Popen([sys.executable, str(floor_app), str(port), str(body)])
    try:
        _wait_up(f"http://127.0.0.1:{port}/api/runs", bare)
        print(f"{CLIENTS} clients, bare Starlette ...", file=sys.stderr)
        result["floor_http"] = concurrent(f"http://127.0.0.1:{port}/api/runs", total)
    finally:
        _stop(bare)
    result["floor_store_page"] = store_floor(store)
    return result


def prefect(python: str, quick: bool) -> dict[str, Any]:
    script = ROOT / "benchmarks" / "side_prefect_server.py"
    argv = [python, str(script), *(["--quick"] if quick else [])]
    print("prefect: its server, filled and measured ...", file=sys.stderr, flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server")
    parser.add_argument("--quick", action="store_true", help="10,000 runs, 500 tasks")
    parser.add_argument("--runs", type=int, help="flow runs in the store (default 100,000)")
    parser.add_argument("--tasks", type=int, help="task runs of the big run (default 5,000)")
    parser.add_argument("--postgres", metavar="URL", help="also on this PostgreSQL server")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--prefect-python", metavar="PATH", help="a Prefect 3.8.8 venv's python")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 over the page budget")
    args = parser.parse_args(argv)
    runs = args.runs or (10_000 if args.quick else 100_000)
    tasks = args.tasks or (500 if args.quick else 5_000)
    total = 500 if args.quick else 2_000
    results: dict[str, Any] = {}
    for kind in ([] if args.no_sqlite else ["sqlite"]) + (["postgres"] if args.postgres else []):
        home = Path(tempfile.mkdtemp(prefix=f"asyncflow-bench-server-{kind}-"))
        results[kind] = measure(_store_for(kind, home, args.postgres), home, runs, tasks, total)
    if args.prefect_python:
        results["prefect"] = prefect(args.prefect_python, args.quick)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    over = [
        f"{kind}/{name}" for kind in ("sqlite", "postgres") if kind in results
        for name, page in results[kind]["pages"].items() if page["p99_ms"] > PAGE_BUDGET * 1000
    ]  # fmt: skip
    if over:
        print(f"\nover the {PAGE_BUDGET * 1000:.0f} ms page budget: {', '.join(over)}")
    return 1 if args.check and over else 0


def _print(results: dict[str, Any]) -> None:
    for kind in ("sqlite", "postgres"):
        row = results.get(kind)
        if row is None:
            continue
        print(f"\n{kind}: {row['runs']:,} flow runs stored (filled at "
              f"{row['fill_runs_per_second']:,.0f} runs/s), a run with "
              f"{row['tasks']:,} tasks")  # fmt: skip
        for name, page in row["pages"].items():
            print(f"  {name:20} p50 {page['p50_ms']:7.1f} ms  p99 {page['p99_ms']:7.1f} ms  "
                  f"{page['bytes'] / 1024:8.1f} KiB")  # fmt: skip
        ours, http = row["api_concurrent"], row["floor_http"]
        print(f"  GET /api/runs, {CLIENTS} clients: p50 {ours['p50_ms']:.1f} ms, p99 "
              f"{ours['p99_ms']:.1f} ms, {ours['requests_per_second']:.0f} req/s, "
              f"{ours['errors']} errors")  # fmt: skip
        print(f"    floor, bare Starlette with the same bytes: p50 {http['p50_ms']:.1f} ms, p99 "
              f"{http['p99_ms']:.1f} ms, {http['requests_per_second']:.0f} req/s (ratio p50 "
              f"{ours['p50_ms'] / http['p50_ms']:.1f}x)")  # fmt: skip
        store = row["floor_store_page"]
        print(f"    floor, the store's read of that page in-process: p50 {store['p50_ms']:.2f} ms")
    theirs = results.get("prefect")
    if theirs is not None:
        print("\nprefect 3.8.8 (its server on SQLite, its REST API)")
        if "error" in theirs:
            print(f"  failed: {theirs['error'][-500:]}")
            return
        print(f"  {theirs['runs_stored']:,} flow runs stored (filled at "
              f"{theirs['fill_runs_per_second']:.0f} runs/s), a run with "
              f"{theirs['tasks_in_wide']:,} tasks")  # fmt: skip
        for name in ("runs_page", "run_page"):
            page = theirs[name]
            print(f"  {name:20} p50 {page['p50_ms']:7.1f} ms  p99 {page['p99_ms']:7.1f} ms")
        load = theirs["api_concurrent"]
        print(f"  POST /api/flow_runs/filter, {load['clients']} clients: p50 "
              f"{load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
              f"{load['requests_per_second']:.0f} req/s, {load['errors']} errors")  # fmt: skip
        ours = results.get("sqlite") or results["postgres"]
        faster = load["p50_ms"] / ours["api_concurrent"]["p50_ms"]
        page = theirs["runs_page"]["p50_ms"] / ours["pages"]["runs"]["p50_ms"]
        print(f"  asyncflow vs prefect: {CLIENTS} clients p50 {faster:.1f}x faster; "
              f"runs page p50 {page:.1f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
