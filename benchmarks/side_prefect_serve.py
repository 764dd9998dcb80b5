#!/usr/bin/env python
"""Benchmark Prefect deployment serving (`Flow.serve`) against a local Prefect server.

Usage:
    python side_prefect_serve.py --n 100

Prints ONE JSON line at the end with:
    create_per_second      run_deployment(..., timeout=0) calls per second (client process)
    serve_per_second       completed runs/s for N runs queued "due now", served by ONE
                           serving process (first start_time -> last end_time, from the API)
    queued_lateness        start_time - expected_start_time for N runs queued ahead of time,
                           served by one serving process with default poll settings
    queued_lateness_poll1  the same with PREFECT_RUNNER_POLL_FREQUENCY=1 (by default only
                           if the default poll was what made the runs late; see --poll1)
    settings, notes, prefect_version (+ some detail keys)

Process layout (every child gets a private PREFECT_HOME in a fresh temp dir; the
user's ~/.prefect and any PREFECT_* variables of the calling shell are never used):

    this script (orchestrator: stdlib only, never imports prefect)
      |- `prefect server start` (own process group)
      |- serving process: generated serve_flow.py -> trivial.serve(name="queue")
      |     `- one multiprocessing "spawn" subprocess per flow run
      `- client processes: this same file run with `--role client <action>`

The orchestrator stays free of Prefect imports so that Prefect's settings (read at
import time) can never pick up the caller's home directory or profile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

DEPLOYMENT = "trivial/queue"
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFETCH_SECONDS = 10  # Runner(prefetch_seconds=10): runs due this far ahead are taken early

# Source of the serving process, written into the temp dir at run time. Prefect's
# runner executes each flow run in a new Python process that imports this file again.
SERVE_FLOW_SOURCE = """\
from prefect import flow


@flow
def trivial(i: int = 0) -> int:
    return i


if __name__ == "__main__":
    trivial.serve(name="queue"{extra_kwargs})
"""


# --------------------------------------------------------------------------------------
# Client side: runs in a subprocess with the benchmark environment (imports prefect).
# Each action returns a dict that is printed as one JSON line on stdout.
# --------------------------------------------------------------------------------------


def client_action(action: str, params: dict) -> dict:
    import asyncio
    import datetime

    import prefect
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.deployments import run_deployment

    async def read_deployment():
        async with get_client() as client:
            return await client.read_deployment_by_name(DEPLOYMENT)

    async def read_runs(client, deployment_id, ids: list[str]):
        """Read the given flow runs back, filtered by deployment and by id."""
        runs = []
        for k in range(0, len(ids), 100):  # page: the server caps one read at 200
            runs += await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[k : k + 100])),
                limit=100,
            )
        return runs

    if action == "version":
        return {"prefect_version": prefect.__version__}

    if action == "wait_deployment":
        # Wait until the deployment exists and a runner has polled for its work after
        # `polled_after` (epoch s), i.e. the serving process just started is live.
        deadline = time.time() + params["wait_s"]
        while time.time() < deadline:
            try:
                dep = asyncio.run(read_deployment())
                if dep.last_polled and dep.last_polled.timestamp() > params["polled_after"]:
                    return {"deployment_id": str(dep.id)}
            except Exception:  # not registered yet (404) or server busy
                pass
            time.sleep(0.5)
        return {"error": f"deployment {DEPLOYMENT} not polled within {params['wait_s']} s"}

    if action == "create":
        # The call under test, exactly as a user would write it.
        warm_up = run_deployment(DEPLOYMENT, parameters={"i": -1}, timeout=0)
        ids = []
        t = time.perf_counter()
        for i in range(params["n"]):
            fr = run_deployment(DEPLOYMENT, parameters={"i": i}, timeout=0)
            ids.append(str(fr.id))
        dt = time.perf_counter() - t
        # Return the warm-up run too, so that it is deleted with the others.
        return {"create_per_second": params["n"] / dt, "ids": [str(warm_up.id), *ids]}

    if action == "queue":
        # Queue N runs: due now (ahead=None) or at t0 + i*spacing with t0 = now + ahead.
        n, ahead, spacing = params["n"], params.get("ahead"), params.get("spacing", 0.0)
        t0 = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ahead or 0)
        ids = []
        for i in range(n):
            kwargs = {}
            if ahead is not None:
                kwargs["scheduled_time"] = t0 + datetime.timedelta(seconds=i * spacing)
            fr = run_deployment(DEPLOYMENT, parameters={"i": i}, timeout=0, **kwargs)
            ids.append(str(fr.id))
        done = datetime.datetime.now(datetime.timezone.utc)
        # A negative margin means some runs were created only after they were due.
        return {"ids": ids, "queued_margin_s": (t0 - done).total_seconds()}

    if action == "wait_done":
        # Poll the API (every 2 s, to keep the load it adds small) until every run is
        # terminal or the time budget is used up, then report each run's times.
        # With `pickup`, also read each run's state history to find when the runner
        # took it (Scheduled -> Pending), separating poll delay from start-up time.
        def ts(x):
            return x.timestamp() if x else None

        async def wait_done(ids, wait_s, pickup):
            deadline = time.time() + wait_s
            async with get_client() as client:
                dep = await client.read_deployment_by_name(DEPLOYMENT)
                while True:
                    runs = await read_runs(client, dep.id, ids)
                    states = [r.state_type.value if r.state_type else "NONE" for r in runs]
                    finished = all(s in TERMINAL_STATES for s in states)
                    if (len(runs) == len(ids) and finished) or time.time() > deadline:
                        break
                    await asyncio.sleep(2.0)
                out = []
                for r in runs:
                    row = {
                        "expected": ts(r.expected_start_time),
                        "start": ts(r.start_time),
                        "end": ts(r.end_time),
                        "state": states[len(out)],
                    }
                    if pickup:
                        history = await client.read_flow_run_states(r.id)
                        pending = [st.timestamp for st in history if st.type.value == "PENDING"]
                        row["pending"] = ts(min(pending)) if pending else None
                    out.append(row)
            counts: dict = {}
            for st in states:
                counts[st] = counts.get(st, 0) + 1
            return {"state_counts": counts, "runs": out}

        return asyncio.run(wait_done(params["ids"], params["wait_s"], params.get("pickup")))

    if action == "delete":

        async def delete(ids):
            async with get_client() as client:
                for fr_id in ids:
                    await client.delete_flow_run(fr_id)

        asyncio.run(delete(params["ids"]))
        return {"deleted": len(params["ids"])}

    raise SystemExit(f"unknown client action {action!r}")


# --------------------------------------------------------------------------------------
# Orchestrator side (stdlib only).
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_processes(marker: bytes) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose environment contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            if marker in environ.split(b"\0"):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append((int(entry), cmd.decode(errors="replace").strip()))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


class FlowRunProcessSampler(threading.Thread):
    """Samples how many flow-run subprocesses run at once, and their total RSS.

    Flow.serve() registers the flow object itself, so the runner executes each run via
    prefect.flow_engine.run_flow_in_subprocess, a multiprocessing "spawn" child
    (cmdline contains `spawn_main`); deployments without an in-memory flow would use
    `python -m prefect.engine` instead. Both are counted.
    """

    def __init__(self, marker: bytes):
        super().__init__(daemon=True)
        self.marker = marker
        self.stop_event = threading.Event()
        self.reset()

    def reset(self) -> dict:
        stats = getattr(self, "stats", {})
        self.stats = {"peak_flow_run_processes": 0, "peak_flow_run_rss_mb": 0}
        return stats

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop_event.wait(0.5):
            engines = [
                pid
                for pid, cmd in our_processes(self.marker)
                if "spawn_main" in cmd or "prefect.engine" in cmd
            ]
            rss = 0
            for pid in engines:
                try:
                    rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except OSError:
                    pass
            s = self.stats
            s["peak_flow_run_processes"] = max(s["peak_flow_run_processes"], len(engines))
            s["peak_flow_run_rss_mb"] = max(s["peak_flow_run_rss_mb"], rss // 2**20)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="prefect_serve_bench_"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.port = args.port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[subprocess.Popen] = []  # process-group leaders we started
        self.result: dict = {}  # filled as scenarios complete (kept on errors)

        # Start from the caller's environment minus anything Prefect-related.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home}/prefect.db",
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_UI_ENABLED="false",  # the dashboard is not needed
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.marker = f"PREFECT_HOME={self.home}".encode()
        self.sampler = FlowRunProcessSampler(self.marker)

    # ---- process helpers -------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], extra_env: dict | None = None, cwd=None):
        """Start a child in its own process group, output to a log file in the temp dir."""
        with open(self.tmp / f"{name}.log", "wb") as log:
            p = subprocess.Popen(
                cmd,
                env=dict(self.env, **(extra_env or {})),
                cwd=cwd or self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
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

    def client(self, action: str, timeout: float, **params) -> dict:
        """Run one client action in a subprocess and return its JSON result."""
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--role",
            "client",
            action,
            "--params",
            json.dumps(params),
        ]
        with open(self.tmp / f"client_{action}.log", "ab") as err:
            out = subprocess.run(
                cmd, env=self.env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=err, timeout=timeout
            )
        lines = out.stdout.decode().strip().splitlines()
        if out.returncode != 0 or not lines:
            raise RuntimeError(
                f"client {action} failed (rc={out.returncode}); see {self.tmp}/client_{action}.log"
            )
        return json.loads(lines[-1])

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

    def start_serving(self, name: str, extra_env: dict | None = None) -> subprocess.Popen:
        """Start a serving process and wait until its runner has polled the API once."""
        launched = time.time()
        p = self.spawn(
            name, [sys.executable, str(self.flow_file)], extra_env, cwd=self.flow_file.parent
        )
        ready = self.client("wait_deployment", timeout=180, wait_s=150, polled_after=launched)
        if "error" in ready:
            raise RuntimeError(f"{ready['error']}; see {self.tmp}/{name}.log")
        p.launched = launched
        p.ready_after_s = time.time() - launched
        return p

    def wait_budget(self, n: int, poll: float) -> float:
        # Every run is a fresh Python process (~2 CPU-seconds); allow 4 s per run.
        return 120 + 2 * poll + 4.0 * n

    # ---- scenarios -------------------------------------------------------------------

    def run(self) -> None:
        a, n = self.args, self.args.n
        serve_kwargs = f", limit={a.serve_limit}" if a.serve_limit else ""
        result = self.result
        settings = result["settings"] = {
            "n": n,
            "server": "prefect server start, sqlite, PREFECT_UI_ENABLED=false",
            "serve_call": f'trivial.serve(name="queue"{serve_kwargs})',
            "serve_limit": a.serve_limit or "default (None = unlimited concurrent runs)",
            "runner_prefetch_seconds": f"default ({PREFETCH_SECONDS})",
        }

        self.flow_file = self.tmp / "flows" / "serve_flow.py"
        self.flow_file.parent.mkdir()
        self.flow_file.write_text(SERVE_FLOW_SOURCE.format(extra_kwargs=serve_kwargs))

        t = time.time()
        self.start_server()
        result["server_startup_s"] = round(time.time() - t, 2)
        result["prefect_version"] = self.client("version", timeout=120)["prefect_version"]
        self.sampler.start()

        # 1. Register the deployment with a first serving process, then stop it, so the
        #    create benchmark runs without a runner competing for the CPU and the
        #    created runs are not executed (they are deleted right after).
        self.stop(self.start_serving("serve_register"))

        # 2. create_per_second
        r = self.client("create", timeout=120 + n * 5, n=n)
        result["create_per_second"] = round(r["create_per_second"], 2)
        self.client("delete", timeout=120 + n * 2, ids=r["ids"])

        # 3. serve_per_second: queue N runs due now, then start ONE serving process.
        serve_env = {"PREFECT_RUNNER_POLL_FREQUENCY": str(a.serve_poll)} if a.serve_poll else {}
        settings["serve_per_second"] = {
            "PREFECT_RUNNER_POLL_FREQUENCY": a.serve_poll or "default (10)"
        }
        q = self.client("queue", timeout=120 + n * 5, n=n)
        self.sampler.reset()
        p = self.start_serving("serve_throughput", serve_env)
        wait_s = self.wait_budget(n, a.serve_poll or 10)
        w = self.client("wait_done", timeout=wait_s + 60, ids=q["ids"], wait_s=wait_s)
        self.stop(p)
        done = completed(w["runs"])
        detail = {
            "state_counts": w["state_counts"],
            "serve_ready_after_s": round(p.ready_after_s, 2),
        }
        result["serve_per_second"] = None
        if done:
            first = min(x["start"] for x in done)
            last = max(x["end"] for x in done)
            if last > first:
                result["serve_per_second"] = round(len(done) / (last - first), 3)
            detail.update(
                completed=len(done),
                span_s=round(last - first, 2),
                first_start_after_serve_launch_s=round(first - p.launched, 2),
                mean_running_s=round(statistics.mean(x["end"] - x["start"] for x in done), 3),
            )
        detail.update(self.sampler.reset())
        result["serve_detail"] = detail

        # 4. queued lateness: default poll settings, then PREFECT_RUNNER_POLL_FREQUENCY=1.
        #    t0 is placed beyond the runner's prefetch window plus the expected queueing
        #    time, so no run can be picked up (and start competing for the CPU) before
        #    all N runs have been created.
        ahead = a.ahead or PREFETCH_SECONDS + 2.0 + 1.5 * n / max(r["create_per_second"], 1.0)
        settings["lateness_t0_ahead_s"] = round(ahead, 2)
        settings["lateness_spacing_s"] = 0.01
        result["queued_lateness"] = self.lateness("queued_lateness", {}, ahead)
        # The 1 s poll variant is only informative if the default poll made runs late,
        # i.e. the runner took some run only after it was due (with t0 beyond the
        # 10 s prefetch window, a 10 s poll normally takes them all early).
        pickup = result["queued_lateness"].get("pickup_delay", {}).get("max")
        poll_was_late = pickup is None or pickup > 1.0
        if a.poll1 == "always" or (a.poll1 == "auto" and poll_was_late):
            result["queued_lateness_poll1"] = self.lateness(
                "queued_lateness_poll1", {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}, ahead
            )
        elif a.poll1 == "never":
            result["queued_lateness_poll1"] = {"skipped": "--poll1 never"}
        else:
            result["queued_lateness_poll1"] = {
                "skipped": f"with the default poll every run was taken at least "
                f"{-pickup:.1f} s before it was due (pickup_delay.max), so a "
                "faster poll cannot reduce the lateness; --poll1 always runs it"
            }

    def lateness(self, key: str, env: dict, ahead: float) -> dict:
        """N runs queued at t0 + i*0.01 s while ONE serving process is already polling."""
        poll = env.get("PREFECT_RUNNER_POLL_FREQUENCY")
        self.result["settings"][key] = {"PREFECT_RUNNER_POLL_FREQUENCY": poll or "default (10)"}
        n = self.args.n
        p = self.start_serving(f"serve_{key}", env)
        self.sampler.reset()
        q = self.client("queue", timeout=120 + n * 5, n=n, ahead=ahead, spacing=0.01)
        wait_s = self.wait_budget(n, float(poll or 10)) + ahead
        w = self.client("wait_done", timeout=wait_s + 120, ids=q["ids"], wait_s=wait_s, pickup=True)
        self.stop(p)
        return dict(summarize_lateness(w, q["queued_margin_s"]), **self.sampler.reset())

    def cleanup(self) -> list[str]:
        """Stop everything we started; kill (by pid) and report any survivor."""
        for p in reversed(self.procs):
            self.stop(p, grace=10)
        self.sampler.stop_event.set()
        time.sleep(1)
        leftovers = our_processes(self.marker)
        for pid, _ in leftovers:  # e.g. a flow-run subprocess in its own session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return [f"{pid} {cmd}" for pid, cmd in leftovers]


def completed(runs: list[dict]) -> list[dict]:
    return [x for x in runs if x["state"] == "COMPLETED" and x["start"] and x["end"]]


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    k = math.ceil(q / 100 * len(sorted_vals)) - 1
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def stats(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {
        "p50": round(percentile(v, 50), 3),
        "p99": round(percentile(v, 99), 3),
        "max": round(v[-1], 3),
        "min": round(v[0], 3),
        "n": len(v),
    }


def summarize_lateness(w: dict, queued_margin_s: float) -> dict:
    runs = w["runs"]
    started = [x for x in runs if x["start"] and x["expected"]]
    out = stats([x["start"] - x["expected"] for x in started])
    out.update(
        never_started=sum(1 for x in runs if not x["start"]),
        state_counts=w["state_counts"],
        queued_margin_s=round(queued_margin_s, 2),
    )
    # Split lateness: when the runner took the run (Scheduled -> Pending) relative to
    # its due time, and how long the run then needed to reach Running.
    picked = [x for x in started if x.get("pending")]
    out["pickup_delay"] = stats([x["pending"] - x["expected"] for x in picked])
    out["pending_to_running"] = stats([x["start"] - x["pending"] for x in picked])
    done = completed(runs)
    if len(done) > 1:
        span = max(x["end"] for x in done) - min(x["start"] for x in done)
        out["completed_per_second"] = round(len(done) / span, 3)
    return out


NOTES = (
    "Each flow run is executed by the serving process in a NEW Python subprocess "
    "(Flow.serve registers the in-memory flow, so the runner uses "
    "prefect.flow_engine.run_flow_in_subprocess = a multiprocessing 'spawn' child: fresh "
    "interpreter + Prefect import + unpickling the flow + API round trips), so per-run "
    "cost is CPU time for process start-up, not the flow body. "
    "Flow.serve() passes limit=None to its Runner by default, which means NO concurrency "
    "limit: PREFECT_RUNNER_PROCESS_LIMIT (default 5) is ignored unless serve(limit=...) is "
    "given. The runner therefore launches every run a poll returns without waiting for "
    "earlier ones; it launches them one after another from its own event loop, which "
    "competes for the CPU with the children, so concurrency is bounded only by how fast "
    "the machine can start processes (peak_flow_run_processes), throughput by CPU count, "
    "and lateness of a burst by how long the burst takes to start, not by the poll. "
    "The runner polls every PREFECT_RUNNER_POLL_FREQUENCY seconds (default 10, integer, "
    "+/-30% jitter; the first poll is immediate) for runs due within the next 10 s "
    "(prefetch) and launches them early; the server's WaitForScheduledTime rule then makes "
    "the flow-run process wait for its scheduled time (rounded to whole seconds), so "
    "lateness can be slightly negative. pickup_delay = Pending time - expected start "
    "(negative: taken early), pending_to_running = start-up cost. t0 for the lateness "
    "runs lies beyond the prefetch window plus the queueing time, so the runner sees no "
    "run before all are created; queued_margin_s < 0 would mean runs were created after "
    "they were due. serve_per_second runs were queued before the serving process "
    "started, so its first poll takes all of them and the poll setting hardly matters "
    "there. create_per_second was measured with no serving process running (the created "
    "runs, warm-up included, were deleted afterwards). Times come from the API (server "
    "clock): start_time = entering Running, end_time = entering Completed. Percentiles "
    "are nearest-rank. Serving processes are stopped with SIGTERM to their process group; "
    "Prefect 3.8.8 then logs a harmless \"coroutine 'Runner.astop' was never awaited\" "
    "RuntimeWarning (Runner.handle_sigterm calls the async-dispatching stop() inside the "
    "event loop) and still shuts down."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="runs per scenario")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument(
        "--serve-poll",
        type=int,
        default=0,
        help="PREFECT_RUNNER_POLL_FREQUENCY for serve_per_second (0 = default)",
    )
    ap.add_argument(
        "--serve-limit",
        type=int,
        default=0,
        help="pass limit=N to trivial.serve (0 = Prefect default, unlimited)",
    )
    ap.add_argument(
        "--poll1",
        choices=["auto", "always", "never"],
        default="auto",
        help="run queued_lateness_poll1: auto = only if the default poll "
        "took some run after it was due (default: auto)",
    )
    ap.add_argument(
        "--ahead",
        type=float,
        default=0.0,
        help="seconds from queueing to t0 in the lateness scenarios (0 = auto)",
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, db)")
    ap.add_argument("--role", default="orchestrator", help=argparse.SUPPRESS)
    ap.add_argument("action", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.role == "client":
        print(json.dumps(client_action(args.action, json.loads(args.params))))
        return

    bench = Bench(args)
    error = None
    t = time.time()
    try:
        bench.run()
    except Exception as exc:  # still clean up, and print what we have
        error = f"{type(exc).__name__}: {exc}"
    finally:
        leftovers = bench.cleanup()
    result = bench.result
    result["total_seconds"] = round(time.time() - t, 1)
    result["notes"] = NOTES
    result["leftover_processes_killed"] = leftovers
    if args.keep_tmp:
        result["tmp_dir"] = str(bench.tmp)
    if error:
        result["error"] = error
    print(json.dumps(result))


if __name__ == "__main__":
    main()
