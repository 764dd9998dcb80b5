"""Per-task overhead and scheduler memory of Prefect 3 on Dask, next to bare Dask.

What it measures, all on ONE ``distributed.LocalCluster`` (2 worker processes,
1 thread each, no dashboard, default ``allowed-failures``):

1. bare:     ``client.gather([client.submit(inc, i, pure=False) for i in range(N)])``,
             one warm-up, then best of --reps; reported as seconds per task.
2. prefect:  a ``@flow`` whose task runner is ``DaskTaskRunner(address=<that
             cluster's scheduler>)`` and which does ``inc_task.map(range(N))`` and
             ``.result()`` on every future; one warm-up flow run, then best of
             --reps of the whole flow call's wall time / N.
3. memory:   --memory-runs flow runs of --memory-tasks tasks each on the same
             scheduler; the scheduler process RSS (read *on* the scheduler with
             ``client.run_on_scheduler``) before the first run and after each run.
             As a control, the same number of bare Dask batches of that size is
             run first (cheap) and the scheduler RSS recorded the same way.

Prefect runs isolated: before prefect is imported, PREFECT_HOME and the profiles
file point into a fresh temporary directory (the working directory too, so no
stray ``.env``/``prefect.toml``/``pyproject.toml`` is read), PREFECT_API_URL and
PREFECT_API_KEY are dropped and ephemeral mode is enabled.  The script starts
ONE ephemeral Prefect API server itself (Prefect's own ``SubprocessASGIServer``,
SQLite under the temp home) and exports its URL before the cluster starts, so
the Dask workers report to that same server.  Left alone, every worker process
would start an ephemeral server of its own.  ``~/.prefect`` is snapshotted
before and after and the JSON says whether it changed.

Note: LocalCluster runs its scheduler inside this (driver) process, so the
"scheduler RSS" also contains the Prefect flow engine's memory in the driver;
the JSON says so in ``scheduler_in_driver_process``.

Output: progress on stderr; exactly ONE JSON line on stdout (fd 1 is pointed
at stderr while running, so nothing else, not even from child processes, can
land on stdout).

Time cap: --max-seconds is the budget for the whole run.  The Prefect timing
phase may use --prefect-share (0.5) of what is left after the bare phases, the
memory phase the rest.  A phase does not start a repeat that would overrun it
if it took 1.25 x as long as the previous one; it records what it got and
``"<phase>_capped": true`` (and ``"capped": true`` overall).  Each flow call
also gets the remaining budget as Prefect ``timeout_seconds``, and a watchdog
thread prints the partial JSON and exits if the budget is exceeded by 60 s.

Run with the Prefect venv:
    /tmp/pv/bin/python side_prefect_dask.py --quick    # n=200 reps=1 runs=3 tasks=200
    /tmp/pv/bin/python side_prefect_dask.py [--n 1000] [--reps 3]
        [--memory-runs 20] [--memory-tasks 1000] [--max-seconds 600]
Needs: prefect, prefect-dask, distributed, psutil (stdlib otherwise).
"""

import os
import sys
import tempfile

# --- isolate Prefect BEFORE it is imported --------------------------------
# Dask worker processes are spawned and re-import this module; they inherit
# the environment set here by the driver and must reuse it (not make a new
# home, not drop the API URL the driver exported for them).
_HOME_VAR = "SIDE_PD_PREFECT_HOME"
_OWN_HOME = _HOME_VAR not in os.environ  # True only in the driver process
if _OWN_HOME:
    os.environ[_HOME_VAR] = tempfile.mkdtemp(prefix="side_prefect_dask_home_")
    for _k in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        os.environ.pop(_k, None)
_PREFECT_HOME = os.environ[_HOME_VAR]
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_PROFILES_PATH"] = os.path.join(_PREFECT_HOME, "profiles.toml")
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.chdir(_PREFECT_HOME)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import dask.config  # noqa: E402  (dask ships with distributed)
import distributed  # noqa: E402
import prefect  # noqa: E402
import prefect_dask  # noqa: E402
import psutil  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

MIB = 1024 * 1024
WATCHDOG_GRACE_S = 60.0


def inc(x):
    """The unit of work: plain function for bare Dask."""
    return x + 1


@task(name="inc")
def inc_task(x):
    """The same work as a Prefect task."""
    return x + 1


@flow(name="side-dask-map")
def map_flow(n):
    """Map inc_task over range(n), resolve every future, return the sum."""
    futures = inc_task.map(range(n))
    return sum(f.result() for f in futures)


def scheduler_stats(dask_scheduler=None):
    """Runs ON the scheduler: its process RSS, pid and bookkeeping sizes."""
    return {
        "rss": psutil.Process().memory_info().rss,
        "pid": os.getpid(),
        "tasks": len(dask_scheduler.tasks) if dask_scheduler is not None else None,
        "clients": len(dask_scheduler.clients) if dask_scheduler is not None else None,
    }


def process_rss():
    """Runs on each worker: its process RSS in bytes."""
    return psutil.Process().memory_info().rss


def log(msg):
    print(f"[side_prefect_dask {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def snapshot_tree(root):
    """{relative path: (size, mtime_ns)} for every entry under root, or None if absent."""
    root = Path(root)
    if not root.exists():
        return None
    snap = {}
    for p in sorted(root.rglob("*")):
        try:
            st = p.stat()
        except OSError:
            continue
        snap[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return snap


def slope(ys):
    """Least-squares slope of ys against 0..len-1 (None if fewer than 2 points)."""
    n = len(ys)
    if n < 2:
        return None
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


class Budget:
    """One wall-time budget for the whole run."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()
        self.deadline = self.start + seconds

    def left(self):
        return self.deadline - time.monotonic()

    def phase(self, share):
        """A deadline for one phase: `share` of what is left of the budget."""
        return time.monotonic() + share * max(0.0, self.left())

    def elapsed(self):
        return time.monotonic() - self.start


class Output:
    """Collects the result dict; writes it exactly once to the real stdout."""

    def __init__(self):
        self.real_stdout = os.dup(1)
        os.dup2(2, 1)  # from now on fd 1 (ours and children's) goes to stderr
        self.result = {}
        self.warnings = []
        self._lock = threading.Lock()
        self._done = False

    def emit(self):
        with self._lock:
            if self._done:
                return
            self._done = True
            if self.warnings:
                self.result["warnings"] = self.warnings[:20]
            line = json.dumps(self.result, default=str) + "\n"
            os.write(self.real_stdout, line.encode())


def start_watchdog(out, budget, cleanup):
    """Hard stop: if the run outlives budget + grace, emit partial JSON and exit."""

    def watch():
        while True:
            left = budget.left() + WATCHDOG_GRACE_S
            if left <= 0:
                break
            time.sleep(min(left, 5.0))
        log("watchdog: budget exceeded, emitting partial result and exiting")
        out.result["capped"] = True
        out.result["aborted_by_watchdog"] = True
        out.result["total_s"] = round(budget.elapsed(), 3)
        out.emit()
        try:
            cleanup()
        finally:
            os._exit(3)

    t = threading.Thread(target=watch, name="watchdog", daemon=True)
    t.start()


def kill_own_children():
    """Kill the processes this script started (workers, nannies, API server)."""
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def run_flow(n, address, budget):
    """One flow call; returns (wall seconds, error or None)."""
    timeout = max(1.0, budget.left())
    f = map_flow.with_options(
        task_runner=DaskTaskRunner(address=address), timeout_seconds=timeout
    )
    t0 = time.perf_counter()
    try:
        total = f(n)
    except Exception as exc:  # timeout or failure: report it, don't hide it
        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:500]
    dt = time.perf_counter() - t0
    if total != n * (n + 1) // 2:
        return dt, f"wrong sum {total!r}"
    return dt, None


def phase_bare(client, n, reps, budget, res):
    log(f"bare: warm-up + {reps} reps of {n} tasks")
    times = []
    for rep in range(reps + 1):
        if budget.left() <= 0:
            res["bare_capped"] = True
            break
        t0 = time.perf_counter()
        got = client.gather([client.submit(inc, i, pure=False) for i in range(n)])
        dt = time.perf_counter() - t0
        assert sum(got) == n * (n + 1) // 2
        if rep == 0:
            res["bare_warmup_s"] = round(dt, 4)
        else:
            times.append(dt)
            log(f"bare rep {rep}: {dt:.3f}s ({dt / n * 1e3:.3f} ms/task)")
    res["bare_rep_s"] = [round(t, 4) for t in times]
    res["bare_per_task_s"] = min(times) / n if times else None


def no_time_for(last_s, phase_deadline, margin=1.25):
    """True if a repeat taking `margin` x the last one would overrun the phase.

    (Repeats vary by 10-20 % on a busy 2-core box; without the margin a repeat
    would start, hit the flow timeout and be thrown away.)
    """
    return time.monotonic() + margin * (last_s or 0.0) > phase_deadline


def phase_bare_memory(client, runs, tasks, res):
    """Control: scheduler RSS across bare Dask batches of the same size (cheap)."""
    rss = [round(client.run_on_scheduler(scheduler_stats)["rss"] / MIB, 2)]
    for _ in range(runs):
        client.gather([client.submit(inc, i, pure=False) for i in range(tasks)])
        rss.append(round(client.run_on_scheduler(scheduler_stats)["rss"] / MIB, 2))
    res["bare_scheduler_rss_mib"] = rss
    res["bare_scheduler_rss_growth_mib_per_run"] = slope(rss[1:])
    log(f"bare memory control: scheduler RSS {rss[0]} -> {rss[-1]} MiB over {runs} batches")


def phase_prefect(address, n, reps, budget, phase_deadline, res):
    log(f"prefect: warm-up flow + {reps} reps of {n} tasks")
    times = []
    last = None
    for rep in range(reps + 1):
        if no_time_for(last, phase_deadline):
            res["prefect_capped"] = True
            log(f"prefect: phase budget spent, stopping before rep {rep}")
            break
        dt, err = run_flow(n, address, budget)
        if err:
            res["prefect_error"] = err
            res["prefect_capped"] = budget.left() <= 0
            log(f"prefect rep {rep}: error after {dt:.1f}s: {err}")
            break
        last = dt
        if rep == 0:
            res["prefect_warmup_s"] = round(dt, 3)
            log(f"prefect warm-up: {dt:.3f}s")
        else:
            times.append(dt)
            log(f"prefect rep {rep}: {dt:.3f}s ({dt / n * 1e3:.2f} ms/task)")
    res["prefect_rep_s"] = [round(t, 3) for t in times]
    res["prefect_per_task_s"] = min(times) / n if times else None
    if not times and res.get("prefect_warmup_s"):
        # no timed rep fitted in the budget: fall back to the warm-up, flagged
        res["prefect_per_task_s"] = res["prefect_warmup_s"] / n
        res["prefect_per_task_from_warmup"] = True


def phase_memory(client, address, runs, tasks, budget, res):
    log(f"memory: {runs} flow runs of {tasks} tasks")
    before = client.run_on_scheduler(scheduler_stats)
    res["scheduler_rss_before_mib"] = round(before["rss"] / MIB, 2)
    rss, n_tasks, worker_rss, run_s = [], [], [], []
    res["scheduler_rss_mib"] = rss
    res["scheduler_tasks_after_run"] = n_tasks
    res["worker_rss_mib"] = worker_rss
    res["memory_run_s"] = run_s
    last = None
    for r in range(runs):
        if no_time_for(last, budget.deadline):
            res["memory_capped"] = True
            log(f"memory: budget spent, stopping before run {r + 1}")
            break
        dt, err = run_flow(tasks, address, budget)
        last = dt
        run_s.append(round(dt, 2))
        if err:
            res["memory_error"] = err
            res["memory_capped"] = budget.left() <= 0
            log(f"memory run {r + 1}: error: {err}")
            break
        st = client.run_on_scheduler(scheduler_stats)
        rss.append(round(st["rss"] / MIB, 2))
        n_tasks.append(st["tasks"])
        worker_rss.append([round(v / MIB, 1) for v in client.run(process_rss).values()])
        log(f"memory run {r + 1}/{runs}: {dt:.1f}s, scheduler RSS {rss[-1]:.1f} MiB, "
            f"{st['tasks']} tasks on scheduler")
    res["memory_runs_done"] = len(rss)
    if rss:
        res["scheduler_rss_growth_mib_per_run"] = slope(rss)
        res["scheduler_rss_growth_mib_per_run_endpoints"] = (
            (rss[-1] - res["scheduler_rss_before_mib"]) / len(rss)
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, help="tasks per timed batch (default 1000)")
    ap.add_argument("--reps", type=int, help="timed repeats, best taken (default 3)")
    ap.add_argument("--memory-runs", type=int, help="flow runs for memory (default 20)")
    ap.add_argument("--memory-tasks", type=int, help="tasks per memory run (default 1000)")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="wall-time budget for the whole run (default 600)")
    ap.add_argument("--prefect-share", type=float, default=0.5,
                    help="share of the budget left after the bare phases that the "
                         "Prefect timing phase may use; the memory phase gets the rest "
                         "(default 0.5)")
    ap.add_argument("--quick", action="store_true",
                    help="defaults become n=200, reps=1, memory-runs=3, memory-tasks=200")
    ap.add_argument("--keep-home", action="store_true",
                    help="keep the temporary PREFECT_HOME instead of deleting it")
    args = ap.parse_args()
    defaults = (200, 1, 3, 200) if args.quick else (1000, 3, 20, 1000)
    for name, value in zip(("n", "reps", "memory_runs", "memory_tasks"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)

    out = Output()
    budget = Budget(args.max_seconds)
    res = out.result
    res.update({
        "prefect": prefect.__version__,
        "prefect_dask": prefect_dask.__version__,
        "distributed": distributed.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "n": args.n,
        "reps": args.reps,
        "memory_runs": args.memory_runs,
        "memory_tasks": args.memory_tasks,
        "max_seconds": args.max_seconds,
        "quick": args.quick,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    })

    def on_warning(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {message} ({Path(filename).name}:{lineno})"
        if text not in out.warnings:
            out.warnings.append(text[:300])
        print(f"WARNING {text}", file=sys.stderr, flush=True)

    warnings.showwarning = on_warning

    real_home_prefect = Path.home() / ".prefect"
    home_before = snapshot_tree(real_home_prefect)

    server = None
    cluster = client = None

    def cleanup():
        for closer in (lambda: client and client.close(),
                       lambda: cluster and cluster.close(timeout=20),
                       lambda: server and server.stop()):
            try:
                closer()
            except Exception as exc:
                log(f"cleanup: {type(exc).__name__}: {exc}")
        kill_own_children()

    start_watchdog(out, budget, lambda: (kill_own_children(), remove_home()))
    try:
        # One ephemeral Prefect API for the driver and every Dask worker.
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, temporary_settings

        t0 = time.perf_counter()
        server = SubprocessASGIServer()
        server.start(timeout=120)
        os.environ["PREFECT_API_URL"] = server.api_url  # inherited by workers
        res["prefect_api"] = "ephemeral SubprocessASGIServer (shared)"
        res["server_start_s"] = round(time.perf_counter() - t0, 2)
        log(f"ephemeral Prefect API at {server.api_url} ({res['server_start_s']}s), "
            f"PREFECT_HOME={_PREFECT_HOME}")

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            t0 = time.perf_counter()
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = distributed.Client(cluster)
            res["cluster_start_s"] = round(time.perf_counter() - t0, 2)
            res["allowed_failures"] = dask.config.get("distributed.scheduler.allowed-failures")
            sched = client.run_on_scheduler(scheduler_stats)
            res["scheduler_in_driver_process"] = sched["pid"] == os.getpid()
            log(f"cluster at {cluster.scheduler_address} ({res['cluster_start_s']}s)")

            t = time.perf_counter()
            phase_bare(client, args.n, args.reps, budget, res)
            res["bare_phase_s"] = round(time.perf_counter() - t, 2)
            phase_bare_memory(client, args.memory_runs, args.memory_tasks, res)

            t = time.perf_counter()
            phase_prefect(cluster.scheduler_address, args.n, args.reps, budget,
                          budget.phase(args.prefect_share), res)
            res["prefect_phase_s"] = round(time.perf_counter() - t, 2)

            if res.get("bare_per_task_s") and res.get("prefect_per_task_s"):
                res["ratio"] = res["prefect_per_task_s"] / res["bare_per_task_s"]
            else:
                res["ratio"] = None

            t = time.perf_counter()
            phase_memory(client, cluster.scheduler_address, args.memory_runs,
                         args.memory_tasks, budget, res)
            res["memory_phase_s"] = round(time.perf_counter() - t, 2)
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"[:1000]
        log(f"error: {res['error']}")
    finally:
        cleanup()

    res["capped"] = any(res.get(k) for k in ("bare_capped", "prefect_capped", "memory_capped"))
    res.setdefault("scheduler_rss_mib", [])
    res.setdefault("ratio", None)
    res["home_prefect_untouched"] = snapshot_tree(real_home_prefect) == home_before
    res["total_s"] = round(budget.elapsed(), 2)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep_home:
        res["prefect_home"] = _PREFECT_HOME
    out.emit()
    return 1 if res.get("error") else 0


def remove_home():
    """Delete the temporary PREFECT_HOME (driver only; skipped with --keep-home)."""
    if _OWN_HOME and "--keep-home" not in sys.argv:
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


if __name__ == "__main__":
    try:
        code = main()
    finally:
        remove_home()
    sys.exit(code)
