"""The asyncflow side: each workload runs in a fresh child process of its own.

``python -m benchmarks.side_asyncflow WORKLOAD N REPEATS`` prints one result line (see
`_measure`). asyncflow is imported inside the workloads, never at module level (import time has a
module of its own, `side_import`, that loads nothing first).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from benchmarks._measure import (
    Result,
    Workload,
    best_of,
    child_main,
    peak_rss_bytes,
    per_item,
    rss_bytes,
    timed,
)

BATCH = 10_000  # task runs per batch in the batched workloads


def hello_flow(n: int, repeats: int) -> Result:
    """The seed's hello.py shape: a flow that calls a task and a nested flow.

    The harness times the whole process, from exec to exit.
    """
    from asyncflow import flow, task

    @task(name="Print Hello")
    def print_hello(name: str) -> str:
        msg = f"Hello {name}!"
        print(msg)
        return msg

    @flow(name="Nestedflow")
    def my_nested_flow(msg: str) -> None:
        print(f"Nestedflow says: {msg}")

    @flow(name="Hello Flow")
    def hello_world(name: str = "world") -> None:
        message = print_hello(name)
        my_nested_flow(message)

    hello_world("Marvin")
    return {}


def noop_flow_sync(n: int, repeats: int) -> Result:
    from asyncflow import flow

    @flow
    def noop() -> None:
        return None

    noop()  # warm-up: first-call costs (validators, logging setup) are not per-run costs

    def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            noop()
        return time.perf_counter() - start

    return per_item(best_of(repeats, run), n)


def noop_flow_async(n: int, repeats: int) -> Result:
    from asyncflow import flow

    @flow
    async def noop() -> None:
        return None

    async def main() -> float:
        await noop()

        async def run() -> float:
            start = time.perf_counter()
            for _ in range(n):
                await noop()
            return time.perf_counter() - start

        return min([await run() for _ in range(max(1, repeats))])

    return per_item(asyncio.run(main()), n)


def sequential_tasks(n: int, repeats: int) -> Result:
    from asyncflow import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def sequential(count: int) -> None:
        for i in range(count):
            inc(i)

    sequential(10)
    return per_item(best_of(repeats, lambda: timed(lambda: sequential(n))), n)


def submit(n: int, repeats: int) -> Result:
    from asyncflow import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def submitting(count: int) -> None:
        futures = [inc.submit(i) for i in range(count)]
        for future in futures:
            future.result()

    submitting(10)
    return per_item(best_of(repeats, lambda: timed(lambda: submitting(n))), n)


def map_tasks(n: int, repeats: int) -> Result:
    from asyncflow import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def mapping(count: int) -> None:
        inc.map(range(count)).result()

    mapping(10)
    return per_item(best_of(repeats, lambda: timed(lambda: mapping(n))), n)


def async_gather(n: int, repeats: int) -> Result:
    from asyncflow import flow, task

    @task
    async def inc(x: int) -> int:
        return x + 1

    @flow
    async def gathering(count: int) -> None:
        await asyncio.gather(*(inc(i) for i in range(count)))

    async def main() -> float:
        await gathering(10)
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            await gathering(n)
            best = min(best, time.perf_counter() - start)
        return best

    return per_item(asyncio.run(main()), n)


def _subflows(n: int, repeats: int, backend: str, how: str) -> Result:
    import anyio

    from asyncflow import flow

    @flow
    async def child(i: int) -> int:
        return i

    @flow
    async def parent_gather(count: int) -> None:
        await asyncio.gather(*(child(i) for i in range(count)))

    @flow
    async def parent_task_group(count: int) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(child, i)

    parent = parent_gather if how == "gather" else parent_task_group

    async def main() -> float:
        await parent(10)
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            await parent(n)
            best = min(best, time.perf_counter() - start)
        return best

    return per_item(anyio.run(main, backend=backend), n)


def subflows_gather_asyncio(n: int, repeats: int) -> Result:
    return _subflows(n, repeats, "asyncio", "gather")


def subflows_tg_asyncio(n: int, repeats: int) -> Result:
    return _subflows(n, repeats, "asyncio", "task_group")


def subflows_tg_trio(n: int, repeats: int) -> Result:
    return _subflows(n, repeats, "trio", "task_group")


def retries(n: int, repeats: int) -> Result:
    """N task runs that fail their first attempt and succeed on the retry (delay 0)."""
    from asyncflow import flow, task

    failed_once: set[int] = set()

    @task(retries=1, retry_delay_seconds=0)
    def flaky(i: int) -> int:
        if i not in failed_once:
            failed_once.add(i)
            raise ValueError(f"first attempt of {i} fails")
        return i

    @flow
    def retrying(start: int, count: int) -> None:
        for i in range(start, start + count):
            flaky(i)

    retrying(-10, 10)
    offsets = iter(range(0, n * max(1, repeats), n))  # fresh ids, so every run fails once
    best = best_of(repeats, lambda: timed(lambda: retrying(next(offsets), n)))
    return per_item(best, n, attempts=len(failed_once))


def _cancel_tree(n: int, repeats: int, via: str) -> Result:
    """A flow -> subflows -> N sleeping async tasks; cancel it, time until all are Cancelled."""
    import anyio

    from asyncflow import cancel_run, flow, runtime, task
    from asyncflow.registry import get_registry
    from asyncflow.states import StateType

    width = 100 if n >= 100 else n  # tasks per subflow
    started = 0
    all_started = anyio.Event()
    root_id: list[Any] = []

    @task
    async def sleeper(i: int) -> None:
        nonlocal started
        started += 1
        if started == n:
            all_started.set()
        await anyio.sleep(3600)

    @flow
    async def branch(count: int) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(sleeper, i)

    @flow
    async def tree(count: int) -> None:
        root_id.append(runtime.flow_run.id)
        async with anyio.create_task_group() as tg:
            for left in range(count, 0, -width):
                tg.start_soon(branch, min(width, left))

    async def once() -> tuple[float, int]:
        nonlocal started, all_started
        started = 0
        all_started = anyio.Event()
        root_id.clear()
        registry = get_registry()
        first_row = len(registry)
        async with anyio.create_task_group() as outer:
            scope = anyio.CancelScope()

            async def run_tree() -> None:
                with scope:
                    try:
                        await tree(n)
                    except Exception:
                        pass  # cancel_run: the awaited flow raises CancelledRun

            outer.start_soon(run_tree)
            await all_started.wait()
            start = time.perf_counter()
            if via == "outer":
                scope.cancel()
            else:
                cancel_run(root_id[0])
        # Both ways, the awaited flow has returned here: every run in the tree is final.
        elapsed = time.perf_counter() - start
        cancelled = sum(
            1
            for row in range(first_row, len(registry))
            if registry.name_of(row).startswith("sleeper-")
            and registry.history(row)[-1].type is StateType.CANCELLED
        )
        return elapsed, cancelled

    async def main() -> Result:
        results = [await once() for _ in range(max(1, repeats))]
        best, cancelled = min(results)
        if cancelled != n:
            raise RuntimeError(f"only {cancelled} of {n} tasks were recorded Cancelled")
        return {"seconds": best, "per_item_us": best / n * 1e6, "cancelled": cancelled}

    return anyio.run(main)


def cancel_outer(n: int, repeats: int) -> Result:
    return _cancel_tree(n, repeats, "outer")


def cancel_by_run_id(n: int, repeats: int) -> Result:
    return _cancel_tree(n, repeats, "cancel_run")


def _batched_flow() -> Any:
    from asyncflow import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def batched(count: int) -> None:
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            futures = [inc.submit(i) for i in range(size)]
            for future in futures:
                future.result()
            del futures  # drop this batch's futures before the next batch starts
            done += size

    return batched


def task_runs_batched(n: int, repeats: int) -> Result:
    """N submitted task runs in one flow, in batches; time, RSS, and recorded transitions."""
    from asyncflow.registry import get_registry

    batched = _batched_flow()
    batched(100)
    gc.collect()
    rss_before = rss_bytes()
    transitions_before = get_registry().transition_count
    seconds = timed(lambda: batched(n))
    # `get_registry()` again: a store may swap the registry; it is whatever runs record into.
    transitions = get_registry().transition_count - transitions_before
    peak = peak_rss_bytes()
    gc.collect()
    rss_after = rss_bytes()
    return per_item(
        seconds,
        n,
        transitions=transitions,
        transitions_per_s=transitions / seconds,
        rss_before_bytes=rss_before,
        peak_rss_bytes=peak,
        rss_after_bytes=rss_after,
        retained_rss_bytes_per_task=(rss_after - rss_before) / n,
    )


def task_runs_retained(n: int, repeats: int) -> Result:
    """Bytes still allocated per finished task run once its future is gone (tracemalloc).

    tracemalloc counts every Python allocation still alive after the flow, from all threads:
    the registry's rows and anything else the engine keeps. It slows the run down, so this
    is a separate, smaller run than the timed one.
    """
    import tracemalloc

    batched = _batched_flow()
    batched(100)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    batched(n)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"bytes_per_task": (after - before) / n, "retained_bytes": after - before}


def store_sequential(n: int, repeats: int) -> Result:
    """N inline sync task calls in one flow, timed once, with the recorded transitions.

    The fastest way runs produce transitions, so it shows what recording costs per run.
    """
    from asyncflow import flow, task
    from asyncflow.registry import get_registry

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def sequential(count: int) -> None:
        for i in range(count):
            inc(i)

    sequential(10)
    transitions_before = get_registry().transition_count
    seconds = timed(lambda: sequential(n))
    transitions = get_registry().transition_count - transitions_before
    return per_item(seconds, n, transitions=transitions)


def flow_calls_flat(n: int, repeats: int) -> Result:
    """RSS growth per sequential flow call after a warm-up (n/5 calls), SQLite store on.

    Finished run trees leave the in-memory registry once the writer has stored them, so a
    process that runs flows for ever stays flat; this is the slope of its RSS.
    """
    from asyncflow import flow, task

    @task
    def one(i: int) -> int:
        return i

    @flow
    def call(i: int) -> int:
        return one(i) + 1

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    warm = max(n // 5, 1)
    for i in range(warm):
        call(i)
    gc.collect()
    before = rss()
    start = time.perf_counter()
    for i in range(n):
        call(i)
    seconds = time.perf_counter() - start
    gc.collect()
    after = rss()
    return {
        "bytes_per_call": (after - before) / n,
        "rss_before_mb": before / 1e6,
        "rss_after_mb": after / 1e6,
        "seconds": seconds,
        "per_call_us": seconds / n * 1e6,
    }


def store_checked(workload: Workload) -> Workload:
    """Run `workload` as is, or under ASYNCFLOW_STORE=sqlite only once the store is there.

    Without the store module (not built yet), or when the setting wrote no database file
    (not wired into the engine), the result says so instead of passing off memory-store
    figures as SQLite ones.
    """

    def run(n: int, repeats: int) -> Result:
        if os.environ.get("ASYNCFLOW_STORE") != "sqlite":
            return workload(n, repeats)
        if importlib.util.find_spec("asyncflow.store.sqlite") is None:
            return {"unavailable": "store not available (no asyncflow.store.sqlite yet)"}
        result = workload(n, repeats)
        from asyncflow.store import writer

        writer.flush()  # what the exit hook would write: the check below looks at the file
        home = Path(os.environ["ASYNCFLOW_HOME"])
        files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
        if not files:
            return {
                "unavailable": f"store not wired: ASYNCFLOW_STORE=sqlite wrote nothing in {home}"
            }
        return {**result, "store_files": files, "home": str(home)}

    return run


def count_stored_transitions(home: Path) -> int | None:
    """Transitions in the store's database, for the harness to check after the child exits.

    The schema is the store's business, so this is best effort: a table or view named
    `transitions`, else one whose name mentions transitions; None when there is none.
    """
    import sqlite3

    for db in sorted(home.rglob("*.db")):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                names = [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                    )
                ]
                candidates = [n for n in names if n == "transitions"] or [
                    n for n in names if "transition" in n
                ]
                if candidates:
                    query = f'SELECT count(*) FROM "{candidates[0]}"'
                    return int(conn.execute(query).fetchone()[0])
        except sqlite3.Error:
            continue
    return None


def persist_results(n: int, repeats: int) -> Result:
    """N calls of a task that persists a small result (pickle, to $ASYNCFLOW_HOME/storage),
    each with new inputs: every call is a cache miss that writes a file."""
    from asyncflow import flow, task

    @task(persist_result=True)
    def small(x: int) -> dict[str, int]:
        return {"x": x}

    @flow
    def persisting(start: int, count: int) -> None:
        for i in range(start, start + count):
            small(i)

    persisting(-10, 10)
    rounds = iter(range(repeats))
    return per_item(best_of(repeats, lambda: timed(lambda: persisting(next(rounds) * n, n))), n)


def cache_hits(n: int, repeats: int) -> Result:
    """N calls of a cached task whose result is stored already (INPUTS policy): each reads
    its record back instead of running."""
    from asyncflow import flow, task
    from asyncflow.cache_policies import INPUTS

    @task(cache_policy=INPUTS)
    def small(x: int) -> dict[str, int]:
        return {"x": x}

    @flow
    def calling(count: int) -> None:
        for i in range(count):
            small(i)

    calling(n)  # stores them
    return per_item(best_of(repeats, lambda: timed(lambda: calling(n))), n)


WORKLOADS: dict[str, Workload] = {
    "persist_results": persist_results,
    "cache_hits": cache_hits,
    "hello_flow": hello_flow,
    "noop_flow_sync": noop_flow_sync,
    "noop_flow_async": noop_flow_async,
    "sequential_tasks": sequential_tasks,
    "submit": submit,
    "map": map_tasks,
    "async_gather": async_gather,
    "subflows_gather_asyncio": subflows_gather_asyncio,
    "subflows_tg_asyncio": subflows_tg_asyncio,
    "subflows_tg_trio": subflows_tg_trio,
    "retries": retries,
    "cancel_outer": cancel_outer,
    "cancel_run": cancel_by_run_id,
    "task_runs_batched": store_checked(task_runs_batched),
    "task_runs_retained": task_runs_retained,
    "store_sequential": store_checked(store_sequential),
    "flow_calls_flat": flow_calls_flat,
}

if __name__ == "__main__":
    child_main(WORKLOADS)
