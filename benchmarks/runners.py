"""Distributed task runners: asyncflow's DaskTaskRunner and RayTaskRunner against bare Dask
and bare Ray on the same cluster, in one run (issue 17).

``python -m benchmarks.runners [--quick] [--prefect-python PATH] [--json PATH] [--check]``

The Dask cluster is a scheduler and two single-threaded worker processes started as
processes of their own (`dask scheduler`, `dask worker`), so that the scheduler's memory is
its own; this process is only the client. Ray is a local `ray.init(num_cpus=2)`.

- `dask_per_task`: one flow run with `DaskTaskRunner(address=...)` mapping a trivial task over
  N inputs, wall time / N, against bare `client.gather([client.submit(inc, i, pure=False)
  ...])` on the same cluster. Interleaved, best of the repetitions each.
- `ray_per_task`: the same with `RayTaskRunner()` against bare `ray.get([f.remote(i) ...])`.
- `dask_pass_through`: N producers of 1 MB each and N consumers of them: asyncflow (results
  kept on the cluster for their consumers), asyncflow with keeping off (each consumer gets
  the flow's copy), and bare Dask passing its futures.
- `scheduler_memory`: 20 flow runs of 1,000 tasks each on the one scheduler: its RSS after
  each, and the tasks it still holds (none, if everything was released).
- Prefect 3.8.8 with prefect-dask (`benchmarks/side_prefect_dask.py`, run by
  `--prefect-python`): its per-task cost against bare Dask on its own cluster of the same
  shape, and its scheduler's RSS over the same 20 flow runs.

`--check` fails when a per-task ratio is over 1.3 (the issue's target) or the scheduler
grows by more than 1 MiB per flow run beyond what the same batches of bare Dask tasks
grow it (Dask keeps bounded logs and statistics of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RATIO_TARGET = 1.3
GROWTH_TARGET_MIB = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dask_cluster() -> Iterator[str]:
    """A scheduler and 2 workers (1 thread each) in processes of their own; its address."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1",
         "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = subprocess.Popen(
        [str(bin_dir / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
         "--no-dashboard", "--memory-limit", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import distributed

        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        from asyncflow.task_runners import dask as runner_module

        runner_module._close_clients()  # (the runners' shared client, before its scheduler)
        for process in (workers, scheduler):
            process.terminate()
        for process in (workers, scheduler):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _best(fn: Callable[[], float], reps: int) -> float:
    return min(fn() for _ in range(reps))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scheduler_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def bench_dask(address: str, n: int, reps: int, pass_n: int, memory_runs: int,
               memory_tasks: int) -> dict[str, Any]:  # fmt: skip
    import distributed

    from asyncflow import flow
    from asyncflow.task_runners.dask import DaskTaskRunner
    from benchmarks import _runner_tasks as t

    client = distributed.Client(address)

    def bare() -> float:
        return _timed(lambda: client.gather([client.submit(t.inc, i, pure=False)
                                             for i in range(n)]))  # fmt: skip

    @flow(task_runner=DaskTaskRunner(address=address))
    def mapped(k: int) -> int:
        return len(t.inc_task.map(range(k)).result())

    mapped(50)  # (warm: imports, the first connection)
    bare()
    bare_s, ours_s = [], []
    for _ in range(reps):  # (interleaved: the machine's drift hits both)
        bare_s.append(bare())
        ours_s.append(_timed(lambda: mapped(n)))
    per_task = {"n": n, "bare_s": min(bare_s) / n, "asyncflow_s": min(ours_s) / n}
    per_task["ratio"] = per_task["asyncflow_s"] / per_task["bare_s"]

    size = 1_000_000

    class NoKeep(DaskTaskRunner):
        keep_on_cluster_bytes = 1 << 62

    def chain(runner: Any) -> Callable[[], int]:
        @flow(task_runner=runner)
        def passing(k: int) -> int:
            return sum(t.length_task.map(t.produce_task.map([size] * k)).result())

        return lambda: passing(pass_n)

    def bare_chain() -> int:
        made = [client.submit(t.produce, size, pure=False) for _ in range(pass_n)]
        return sum(client.gather([client.submit(t.length, m, pure=False) for m in made]))

    kept_run, copied_run = chain(DaskTaskRunner(address=address)), chain(NoKeep(address=address))
    passing = {"n": pass_n, "bytes": size}
    for name, fn in (("bare_s", bare_chain), ("asyncflow_s", kept_run),
                     ("asyncflow_without_keeping_s", copied_run)):  # fmt: skip
        passing[name] = _best(lambda fn=fn: _timed(fn), reps) / pass_n
    passing["ratio"] = passing["asyncflow_s"] / passing["bare_s"]
    passing["ratio_without_keeping"] = passing["asyncflow_without_keeping_s"] / passing["bare_s"]

    def growth(batch: Callable[[], object]) -> tuple[list[float], list[int], float]:
        rss = [client.run_on_scheduler(scheduler_rss)]
        held: list[int] = []
        for _ in range(memory_runs):
            batch()
            time.sleep(0.5)  # (releases reach the scheduler)
            rss.append(client.run_on_scheduler(scheduler_rss))
            held.append(client.run_on_scheduler(_scheduler_task_count))
        mib = [r / 2**20 for r in rss]
        # (from after the first batch, which warms the scheduler's caches)
        return [round(m, 1) for m in mib], held, (mib[-1] - mib[1]) / max(1, memory_runs - 1)

    def bare_batch() -> None:
        client.gather([client.submit(t.inc, i, pure=False) for i in range(memory_tasks)])

    bare_rss, _, bare_growth = growth(bare_batch)
    rss, held, ours_growth = growth(lambda: mapped(memory_tasks))
    memory = {
        "runs": memory_runs, "tasks_per_run": memory_tasks,
        "rss_mib": rss, "growth_mib_per_run": ours_growth, "tasks_held_after_each": held,
        "bare_rss_mib": bare_rss, "bare_growth_mib_per_run": bare_growth,
    }  # fmt: skip
    client.close()
    return {"dask_per_task": per_task, "dask_pass_through": passing, "scheduler_memory": memory}


def _scheduler_task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def bench_ray(n: int, reps: int, tmp: str) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    os.environ["RAY_TMPDIR"] = tmp
    import ray

    from asyncflow import flow
    from asyncflow.task_runners.ray import RayTaskRunner
    from benchmarks import _runner_tasks as t

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        inc = ray.remote(max_retries=0)(t.inc)

        def bare() -> float:
            return _timed(lambda: ray.get([inc.remote(i) for i in range(n)]))

        @flow(task_runner=RayTaskRunner())
        def mapped(k: int) -> int:
            return len(t.inc_task.map(range(k)).result())

        mapped(50)
        bare()
        bare_s, ours_s = [], []
        for _ in range(reps):
            bare_s.append(bare())
            ours_s.append(_timed(lambda: mapped(n)))
    finally:
        ray.shutdown()
    result = {"n": n, "bare_s": min(bare_s) / n, "asyncflow_s": min(ours_s) / n}
    result["ratio"] = result["asyncflow_s"] / result["bare_s"]
    return {"ray_per_task": result}


def bench_prefect(python: str, quick: bool, memory_tasks: int) -> dict[str, Any]:
    script = Path(__file__).with_name("side_prefect_dask.py")
    # (Prefect takes ~0.1 s a task here: its memory phase gets 3 flow runs, not 20)
    sizes = ["--quick"] if quick else ["--n", "1000", "--reps", "1", "--memory-runs", "3",
                                       "--memory-tasks", str(memory_tasks),
                                       "--max-seconds", "1500"]  # fmt: skip
    args = [python, str(script), *sizes]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=1800, cwd=tempfile.gettempdir()
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runners")
    parser.add_argument("--quick", action="store_true", help="small sizes (~1 min)")
    parser.add_argument("--prefect-python", metavar="PATH",
                        help="a Python with prefect 3.8.8 and prefect-dask")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 over the targets")
    args = parser.parse_args(argv)
    n, reps, pass_n = (300, 2, 20) if args.quick else (2000, 3, 100)
    memory_runs, memory_tasks = (3, 200) if args.quick else (20, 1000)

    with tempfile.TemporaryDirectory() as home:
        # (asyncflow records into a store of its own here, never the user's)
        os.environ["ASYNCFLOW_HOME"] = home
        os.environ.setdefault("ASYNCFLOW_LOGGING_LEVEL", "WARNING")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )  # (the workers import benchmarks._runner_tasks)
        results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                               "python": sys.version.split()[0]}}  # fmt: skip
        with dask_cluster() as address:
            results.update(bench_dask(address, n, reps, pass_n, memory_runs, memory_tasks))
        ray_tmp = Path(home) / "ray"
        ray_tmp.mkdir()
        results.update(bench_ray(n, reps, str(ray_tmp)))
    if args.prefect_python:
        results["prefect"] = bench_prefect(args.prefect_python, args.quick, memory_tasks)

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.check:
        over = [name for name in ("dask_per_task", "ray_per_task")
                if results[name]["ratio"] > RATIO_TARGET]  # fmt: skip
        memory = results["scheduler_memory"]
        if memory["growth_mib_per_run"] - memory["bare_growth_mib_per_run"] > GROWTH_TARGET_MIB:
            over.append("scheduler_memory")
        if over:
            print("over target:", ", ".join(over))
            return 1
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def report(results: dict[str, Any]) -> None:
    d, r, p = results["dask_per_task"], results["ray_per_task"], results["dask_pass_through"]
    m = results["scheduler_memory"]
    for label, row in (("Dask per task", d), ("Ray per task", r)):
        print(f"{label:<18} bare {_ms(row['bare_s'])}   asyncflow {_ms(row['asyncflow_s'])}"
              f"   ratio {row['ratio']:.2f}x (target <= {RATIO_TARGET})")  # fmt: skip
    print(f"{'Dask 1 MB chain':<18} bare {_ms(p['bare_s'])}   asyncflow {_ms(p['asyncflow_s'])}"
          f" ({p['ratio']:.2f}x)   not kept {_ms(p['asyncflow_without_keeping_s'])}"
          f" ({p['ratio_without_keeping']:.2f}x)")  # fmt: skip
    print(f"{'Scheduler RSS':<18} {m['rss_mib'][0]} -> {m['rss_mib'][-1]} MiB over {m['runs']}"
          f" flow runs of {m['tasks_per_run']} tasks: {m['growth_mib_per_run']:+.2f} MiB/run;"
          f" tasks held after each: max {max(m['tasks_held_after_each'])};"
          f" bare Dask batches: {m['bare_growth_mib_per_run']:+.2f} MiB/run")  # fmt: skip
    prefect = results.get("prefect")
    if prefect is None:
        return
    if "error" in prefect:
        print("Prefect: failed:", prefect["error"].strip().splitlines()[-1:])
        return
    print(f"Prefect {prefect.get('prefect')} + prefect-dask {prefect.get('prefect_dask')}:"
          f" per task {_ms(prefect['prefect_per_task_s'])} ({prefect['ratio']:.1f}x its bare"
          f" Dask, {prefect['prefect_per_task_s'] / d['asyncflow_s']:.1f}x asyncflow's);"
          f" its scheduler {prefect.get('scheduler_rss_growth_mib_per_run', float('nan')):+.2f}"
          " MiB/run")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
