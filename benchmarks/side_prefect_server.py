#!/usr/bin/env python
"""Benchmark the REST API of a local Prefect server (`prefect server start`, sqlite).

Usage (with the Prefect venv's interpreter, which must have prefect and httpx):
    /tmp/pv/bin/python side_prefect_server.py --runs 2000 --tasks 500
    /tmp/pv/bin/python side_prefect_server.py --quick      # 200 runs, 100 tasks, 500 reqs

What it does:
  1. Starts `prefect server start` (sqlite DB, UI off, analytics off) and fills it with
     --runs flow runs of a trivial flow `tiny(i) -> i`, each recorded by the real
     Prefect engine (the flow is *called* with PREFECT_API_URL pointing at the server,
     so every run has its real state history and engine logs). Several client
     processes fill in parallel (--fill-workers); the fill stops at --fill-seconds
     wall time. Then ONE flow run `wide` calls a trivial task --tasks times via `.map`.
     Before measuring, it waits until all task runs of `wide` are stored (Prefect 3
     records task runs asynchronously from events) and the server is idle again.
  2. Measures with httpx against the REST API:
       runs_page       POST /api/flow_runs/filter {"limit": 50,
                       "sort": "EXPECTED_START_TIME_DESC"}: 5 warm-ups, then --page-reps
                       sequential requests (one keep-alive connection)
       run_page        for the `wide` run, one "page" = GET /api/flow_runs/{id}
                       + POST /api/task_runs/filter (flow_runs.id filter, limit 200 =
                       the server's max page size) + GET /api/flow_run_states/?flow_run_id=
                       sent one after another; 3 warm-ups, then --run-page-reps pages
       api_concurrent  ONE httpx.AsyncClient (max_connections=50) in one asyncio
                       process, --clients tasks sending the runs_page request back to
                       back until --requests requests are done (after one warm-up
                       request per client); per-request latency = send -> body read
  3. Prints ONE JSON line to stdout; progress and details go to stderr.

Process layout (every child gets a private PREFECT_HOME in a fresh temp dir; the user's
~/.prefect and any PREFECT_* variables of the calling shell are never used):

    this script (orchestrator: stdlib only, never imports prefect)
      |- `prefect server start` (own process group)
      `- client processes: this same file run with `--role client <action>`
           (fill workers, the `wide` flow, the httpx measurement clients)

Percentiles are nearest-rank (so p99 of 50 samples is the maximum).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RUNS_PAGE_BODY = {"limit": 50, "sort": "EXPECTED_START_TIME_DESC"}
TASK_PAGE_LIMIT = 200  # PREFECT_SERVER_API_DEFAULT_LIMIT: the server rejects larger limits


def log(*parts) -> None:
    print("[side_prefect_server]", *parts, file=sys.stderr, flush=True)


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    k = math.ceil(q / 100 * len(sorted_vals)) - 1
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def latency_stats(seconds: list[float]) -> dict:
    v = sorted(x * 1000 for x in seconds)
    if not v:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    return {
        "p50_ms": round(percentile(v, 50), 2),
        "p99_ms": round(percentile(v, 99), 2),
        "n": len(v),
    }


# --------------------------------------------------------------------------------------
# Client side: runs in a subprocess with the benchmark environment (imports prefect or
# httpx). Each action returns a dict that is printed as one JSON line on stdout.
# --------------------------------------------------------------------------------------


def client_action(action: str, params: dict) -> dict:
    if action == "version":
        import prefect

        return {"prefect_version": prefect.__version__}
    if action == "fill":
        return fill(params)
    if action == "wide":
        return run_wide(params)
    if action == "wait_tasks":
        return wait_tasks(params)
    if action == "measure":
        return measure_sequential(params)
    if action == "concurrent":
        return measure_concurrent(params)
    raise SystemExit(f"unknown client action {action!r}")


def fill(params: dict) -> dict:
    """Call the trivial flow for i in [start, start+count) from `threads` threads.

    Threads, because a synchronous flow call in Prefect 3.8.8 ends by joining its
    heartbeat thread, which sleeps in 1 s steps: a sequential loop idles ~1 s per run.
    """
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from prefect import flow

    @flow
    def tiny(i: int) -> int:
        return i

    # Keep the engine's console output out of our stderr log; logs still go to the API.
    logging.getLogger("prefect").setLevel(logging.WARNING)
    todo = iter(range(params["start"], params["start"] + params["count"]))
    lock = threading.Lock()
    counts = {"done": 0, "failed": 0, "raised": 0}
    errors: dict = {}  # exception text (shortened) -> count

    def worker():
        while time.time() < params["deadline"]:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                key = "done" if tiny(i, return_state=True).is_completed() else "failed"
            except Exception as exc:  # the engine itself raised, e.g. an HTTP 503
                key = "raised"
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                with lock:
                    errors[msg] = errors.get(msg, 0) + 1
            with lock:
                counts[key] += 1

    first = time.time()
    with ThreadPoolExecutor(params["threads"]) as ex:
        for f in [ex.submit(worker) for _ in range(params["threads"])]:
            f.result()
    return dict(counts, errors=errors, t_first=first, t_end=time.time())


def run_wide(params: dict) -> dict:
    """One flow run that maps a trivial task over range(k): k task runs."""
    import logging

    from prefect import flow, task

    @task
    def one(i: int) -> int:
        return i

    @flow
    def wide(k: int) -> int:
        return sum(one.map(range(k)).result())

    logging.getLogger("prefect").setLevel(logging.WARNING)
    t = time.time()
    state = wide(params["k"], return_state=True)
    return {
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.type.value,
        "seconds": time.time() - t,
    }


def wait_tasks(params: dict) -> dict:
    """Wait until the server has stored k COMPLETED task runs for the flow run."""
    import httpx

    body = {
        "flow_runs": {"id": {"any_": [params["flow_run_id"]]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    t = time.time()
    count = -1
    with httpx.Client(base_url=params["api_url"], timeout=60) as c:
        while time.time() - t < params["wait_s"]:
            count = c.post("/task_runs/count", json=body).json()
            if count >= params["k"]:
                break
            time.sleep(1.0)
        runs = c.post("/flow_runs/count", json={}).json()
        tiny = c.post("/flow_runs/count", json={"flows": {"name": {"any_": ["tiny"]}}}).json()
    return {"completed_tasks": count, "waited_s": time.time() - t, "flow_runs": runs, "tiny": tiny}


def measure_sequential(params: dict) -> dict:
    """runs_page and run_page, sequential requests on one keep-alive connection."""
    import httpx

    fr_id = params["flow_run_id"]
    notes = []

    def check(r):
        if r.status_code != 200:
            raise RuntimeError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text}")
        return r.json()

    with httpx.Client(base_url=params["api_url"], timeout=60) as c:
        # runs_page
        def runs_page():
            return check(c.post("/flow_runs/filter", json=RUNS_PAGE_BODY))

        for _ in range(5):
            first = runs_page()
        runs_lat = []
        for _ in range(params["page_reps"]):
            t = time.perf_counter()
            runs_page()  # httpx reads the whole body before returning
            runs_lat.append(time.perf_counter() - t)
        newest = first[0]["name"] if first else None
        notes.append(f"runs_page returned {len(first)} runs; newest first: {newest}")

        # run_page: what the UI's flow-run page needs at minimum
        task_body = {
            "flow_runs": {"id": {"any_": [fr_id]}},
            "limit": TASK_PAGE_LIMIT,
            "sort": "EXPECTED_START_TIME_DESC",
        }

        def run_page():
            fr = check(c.get(f"/flow_runs/{fr_id}"))
            r = c.post("/task_runs/filter", json=task_body)
            tasks = check(r)
            states = check(c.get("/flow_run_states/", params={"flow_run_id": fr_id}))
            return fr, tasks, states, len(r.content)

        for _ in range(3):
            fr, tasks, states, task_bytes = run_page()
        page_lat = []
        for _ in range(params["run_page_reps"]):
            t = time.perf_counter()
            run_page()
            page_lat.append(time.perf_counter() - t)
        notes.append(
            f"run_page: flow run '{fr['name']}' state {fr['state_type']}, "
            f"{len(tasks)} task runs in the first page ({task_bytes} bytes of JSON), "
            f"{len(states)} flow-run states"
        )
    return {
        "runs_page": latency_stats(runs_lat),
        "run_page": latency_stats(page_lat),
        "notes": notes,
    }


def measure_concurrent(params: dict) -> dict:
    """N asyncio tasks sharing ONE httpx.AsyncClient, requests back to back."""
    import asyncio

    import httpx

    clients, total = params["clients"], params["requests"]

    async def main():
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=params["api_url"], limits=limits, timeout=60
        ) as c:
            state = {"left": 0}
            lat: list[float] = []
            errors: list[str] = []

            async def worker():
                while state["left"] > 0:
                    state["left"] -= 1
                    t = time.perf_counter()
                    try:
                        r = await c.post("/flow_runs/filter", json=RUNS_PAGE_BODY)
                        ok = r.status_code == 200 and len(r.json()) > 0
                        if not ok:
                            errors.append(f"HTTP {r.status_code}")
                    except Exception as exc:  # timeout, connection reset, ...
                        ok = False
                        errors.append(type(exc).__name__)
                    if ok:
                        lat.append(time.perf_counter() - t)

            async def phase(n):
                state["left"] = n
                lat.clear()
                errors.clear()
                t = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(clients)))
                return time.perf_counter() - t

            await phase(clients)  # warm-up: opens the connections
            warm_errors = len(errors)
            wall = await phase(total)
            return lat, errors, wall, warm_errors

    lat, errors, wall, warm_errors = asyncio.run(main())
    s = latency_stats(lat)
    kinds: dict = {}
    for e in errors:
        kinds[e] = kinds.get(e, 0) + 1
    return {
        "clients": clients,
        "requests": total,
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "requests_per_second": round(total / wall, 1),
        "errors": len(errors),
        "error_kinds": kinds,
        "warmup_errors": warm_errors,
        "wall_s": round(wall, 2),
    }


# --------------------------------------------------------------------------------------
# Orchestrator side (stdlib only).
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_cpu_seconds(pgid: int) -> float:
    """Total user+system CPU time of the live processes in process group `pgid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields after "(comm)"
        if int(fields[2]) == pgid:  # field 5 = pgrp
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="prefect_server_bench_"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[subprocess.Popen] = []  # process-group leaders we started
        self.result: dict = {}
        self.notes: list[str] = []

        # Start from the caller's environment minus anything Prefect-related.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home}/prefect.db",
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_UI_ENABLED="false",
            PYTHONUNBUFFERED="1",
        )
        self.env = env

    # ---- process helpers -------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], stdout=None) -> subprocess.Popen:
        """Start a child in its own process group; stderr (and stdout unless piped) to a log."""
        with open(self.tmp / f"{name}.log", "ab") as logf:
            p = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.tmp,
                stdout=stdout or logf,
                stderr=logf if stdout else subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen, grace: float = 20.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if p.poll() is not None:
                break
            try:
                os.killpg(p.pid, sig)
                p.wait(wait)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # members of the group that outlived the leader
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def client_cmd(self, action: str, params: dict) -> list[str]:
        return [
            sys.executable,
            os.path.abspath(__file__),
            "--role",
            "client",
            action,
            "--params",
            json.dumps(params),
        ]

    def collect(self, name: str, p: subprocess.Popen, timeout: float) -> dict:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise RuntimeError(f"client {name} timed out; see {self.tmp}/{name}.log") from None
        lines = out.decode().strip().splitlines()
        if p.returncode != 0 or not lines:
            tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"client {name} failed (rc={p.returncode}):\n{tail}")
        return json.loads(lines[-1])

    def client(self, action: str, timeout: float, **params) -> dict:
        """Run one client action in a subprocess and return its JSON result."""
        p = self.spawn(f"client_{action}", self.client_cmd(action, params), subprocess.PIPE)
        return self.collect(f"client_{action}", p, timeout)

    def start_server(self) -> None:
        prefect_cli = str(Path(sys.executable).with_name("prefect"))
        self.server = self.spawn(
            "server",
            [prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.tmp}/server.log")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("prefect server did not become healthy within 180 s")

    def wait_server_idle(self, max_s: float = 180.0, window: float = 2.0) -> float:
        """Wait until the server's process group uses < 5% CPU over two windows in a row."""
        t0 = time.time()
        quiet = 0
        last = group_cpu_seconds(self.server.pid)
        while time.time() - t0 < max_s:
            time.sleep(window)
            now = group_cpu_seconds(self.server.pid)
            busy = (now - last) / window
            last = now
            quiet = quiet + 1 if busy < 0.05 else 0
            if quiet >= 2:
                return time.time() - t0
        self.notes.append(f"server was still busy after waiting {max_s:.0f} s for idle")
        return time.time() - t0

    # ---- the benchmark ---------------------------------------------------------------

    def run(self) -> None:
        a, res = self.args, self.result
        t = time.time()
        self.start_server()
        log(f"server healthy after {time.time() - t:.1f} s at {self.api_url}")
        res["prefect_version"] = self.client("version", timeout=120)["prefect_version"]

        # 1a. Fill: W client processes, each calling tiny() for its slice of indices.
        w = max(1, min(a.fill_workers, a.runs))
        deadline = time.time() + a.fill_seconds
        per, extra = divmod(a.runs, w)
        procs, start = [], 0
        for k in range(w):
            count = per + (1 if k < extra else 0)
            params = {"start": start, "count": count, "deadline": deadline,
                      "threads": a.fill_threads}
            start += count
            procs.append(
                self.spawn(f"client_fill{k}", self.client_cmd("fill", params), subprocess.PIPE)
            )
        log(f"filling {a.runs} flow runs with {w} client process(es) x {a.fill_threads} "
            f"threads (cap {a.fill_seconds} s)")
        fills = [
            self.collect(f"client_fill{k}", p, a.fill_seconds + 300) for k, p in enumerate(procs)
        ]
        done = sum(f["done"] for f in fills)
        failed = sum(f["failed"] + f["raised"] for f in fills)
        raised: dict = {}
        for f in fills:
            for msg, n in f["errors"].items():
                raised[msg] = raised.get(msg, 0) + n
        span = max(f["t_end"] for f in fills) - min(f["t_first"] for f in fills)
        res["fill_runs_per_second"] = round(done / span, 2) if span > 0 else None
        log(f"fill: {done} completed, {failed} not completed, {span:.1f} s, wall incl. "
            f"process start-up {time.time() - deadline + a.fill_seconds:.1f} s")
        if done + failed < a.runs:
            self.notes.append(
                f"fill stopped by --fill-seconds {a.fill_seconds}: {done + failed} of "
                f"{a.runs} runs were executed"
            )
        if failed:
            self.notes.append(
                f"{failed} tiny flow calls did not end COMPLETED; the engine raised "
                f"(after the Prefect client's own retries): {raised}"
            )

        # 1b. The wide run.
        log(f"running flow 'wide' with {a.tasks} task runs")
        wide = self.client("wide", timeout=600 + a.tasks, k=a.tasks)
        log(f"wide: {wide['state']} in {wide['seconds']:.1f} s, id {wide['flow_run_id']}")
        if wide["state"] != "COMPLETED":
            self.notes.append(f"the wide flow run ended {wide['state']}")
        wt = self.client(
            "wait_tasks",
            timeout=400,
            api_url=self.api_url,
            flow_run_id=wide["flow_run_id"],
            k=a.tasks,
            wait_s=300,
        )
        log(f"task runs stored: {wt['completed_tasks']} after {wt['waited_s']:.1f} s more")
        res["runs_stored"] = wt["tiny"]
        res["tasks_in_wide"] = wt["completed_tasks"]
        idle = self.wait_server_idle()
        log(f"server idle after {idle:.1f} s")

        # 2a/2b. Sequential measurements.
        m = self.client(
            "measure",
            timeout=600,
            api_url=self.api_url,
            flow_run_id=wide["flow_run_id"],
            page_reps=a.page_reps,
            run_page_reps=a.run_page_reps,
        )
        res["runs_page"] = m["runs_page"]
        res["run_page"] = m["run_page"]
        for n in m["notes"]:
            log(n)
        self.notes += m["notes"]
        log(f"runs_page {m['runs_page']}, run_page {m['run_page']}")

        # 2c. Concurrency.
        self.wait_server_idle()
        c = self.client(
            "concurrent",
            timeout=600 + a.requests,
            api_url=self.api_url,
            clients=a.clients,
            requests=a.requests,
        )
        log(f"concurrent: {c}")
        res["api_concurrent"] = {
            k: c[k]
            for k in ("clients", "requests", "p50_ms", "p99_ms", "requests_per_second", "errors")
        }
        if c["error_kinds"] or c["warmup_errors"]:
            self.notes.append(
                f"api_concurrent errors by kind: {c['error_kinds']}, "
                f"warm-up errors: {c['warmup_errors']}"
            )

        self.notes += [
            f"server: `prefect server start` {res['prefect_version']} (one uvicorn process "
            "with its background services), sqlite+aiosqlite DB in a fresh temp "
            "PREFECT_HOME, UI and analytics off, on the same 2-core machine as the clients",
            f"runs_stored = flow runs of flow 'tiny' in the DB; fill used {w} client "
            f"process(es) x {a.fill_threads} threads, each thread calling the flow through "
            "the real engine with default settings (each run: "
            "create + Pending/Running/Completed states + engine logs and events); "
            "fill_runs_per_second spans first run start to last run end (interpreter "
            "start-up and prefect import excluded)",
            "threads are used because a synchronous flow call in Prefect 3.8.8 ends by "
            "joining its heartbeat thread (PREFECT_FLOWS_HEARTBEAT_FREQUENCY default "
            "180 s), which sleeps in 1 s steps, so a sequential loop idles ~1 s per run "
            "(~0.9 runs/s per loop); with 8 threads the limit is the server (sqlite "
            "write contention: CPU is not saturated), and more threads or processes "
            "made the fill slower",
            f"wide: one flow run mapping a trivial task over range({a.tasks}) with the "
            "default ThreadPoolTaskRunner; task runs are written by the server from "
            f"events, so the script waited {wt['waited_s']:.1f} s after the flow "
            "returned until all of them were stored COMPLETED",
            f"server page size cap: PREFECT_SERVER_API_DEFAULT_LIMIT = {TASK_PAGE_LIMIT} "
            "(a larger limit is rejected with 422), so run_page reads only the first "
            f"{TASK_PAGE_LIMIT} task runs",
            'runs_page = POST /api/flow_runs/filter {"limit": 50, "sort": '
            '"EXPECTED_START_TIME_DESC"}: 5 warm-ups then sequential requests; the '
            "Prefect UI's own runs list calls POST /api/flow_runs/paginate instead (it "
            "adds a count query)",
            "run_page = GET /api/flow_runs/{id} + POST /api/task_runs/filter "
            '{"flow_runs": {"id": {"any_": [id]}}, "limit": 200, "sort": '
            '"EXPECTED_START_TIME_DESC"} + GET /api/flow_run_states/?flow_run_id={id}, '
            "sent one after another, timed together; the real UI page also loads the "
            "graph (/graph-v2), logs and artifacts, not included",
            f"api_concurrent: one httpx.AsyncClient (max_connections={a.clients}), "
            f"{a.clients} asyncio tasks sending the runs_page request back to back, "
            f"{a.clients} warm-up requests first; latency = send to body read, errors = "
            "non-200, empty result or exception",
            "the script waited for the server's CPU use to drop below 5% before each "
            "measurement (background services settle after the fill)",
            "percentiles are nearest-rank: with 30 or 50 samples p99 is the maximum",
            "httpx over HTTP/1.1 keep-alive to 127.0.0.1, client and server share 2 cores",
        ]

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, grace=15)
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2000, help="tiny flow runs to store")
    ap.add_argument("--tasks", type=int, default=500, help="task runs in the wide flow run")
    ap.add_argument("--fill-seconds", type=float, default=300, help="wall-time cap of the fill")
    ap.add_argument("--fill-workers", type=int, default=1, help="parallel fill processes")
    ap.add_argument("--fill-threads", type=int, default=8, help="flow-calling threads per process")
    ap.add_argument("--requests", type=int, default=2000, help="api_concurrent requests")
    ap.add_argument("--clients", type=int, default=50, help="api_concurrent asyncio clients")
    ap.add_argument("--page-reps", type=int, default=50, help="runs_page sequential reps")
    ap.add_argument("--run-page-reps", type=int, default=30, help="run_page sequential reps")
    ap.add_argument("--quick", action="store_true", help="--runs 200 --tasks 100 --requests 500")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, db)")
    ap.add_argument("--role", default="orchestrator", help=argparse.SUPPRESS)
    ap.add_argument("action", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.role == "client":
        print(json.dumps(client_action(args.action, json.loads(args.params))))
        return

    if args.quick:
        args.runs, args.tasks, args.requests = 200, 100, 500

    bench = Bench(args)
    error = None
    t = time.time()
    try:
        bench.run()
    except Exception as exc:  # still clean up, and print what we have
        error = f"{type(exc).__name__}: {exc}"
        log("ERROR", error)
    finally:
        bench.cleanup()
    order = ["prefect_version", "runs_stored", "fill_runs_per_second", "tasks_in_wide",
             "runs_page", "run_page", "api_concurrent"]
    result = {k: bench.result.get(k) for k in order}
    result["notes"] = bench.notes
    result["total_seconds"] = round(time.time() - t, 1)
    if args.keep_tmp:
        result["tmp_dir"] = str(bench.tmp)
    if error:
        result["error"] = error
    print(json.dumps(result))
    if error:
        sys.exit(1)


if __name__ == "__main__":
    main()
