"""The Prefect side: the same workloads, written for Prefect 3, run by Prefect's interpreter.

``PREFECT_PY -m benchmarks.side_prefect WORKLOAD N REPEATS`` with the repository on
PYTHONPATH. This module needs only Prefect (and the anyio/trio it may bring): Prefect is
never a dependency of asyncflow. Each workload runs one warm-up flow first, so the time its
temporary local server takes to start is not counted per run (the hello-flow workload is the
exception: it is timed end to end, as a user would see it).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from benchmarks._measure import (
    Result,
    Workload,
    child_main,
    peak_rss_bytes,
    per_item,
    rss_bytes,
    timed,
)

BATCH = 10_000


def hello_flow(n: int, repeats: int) -> Result:
    from prefect import flow, task

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
    from prefect import flow

    @flow
    def noop() -> None:
        return None

    noop()

    def run() -> None:
        for _ in range(n):
            noop()

    return per_item(timed(run), n)


def noop_flow_async(n: int, repeats: int) -> Result:
    from prefect import flow

    @flow
    async def noop() -> None:
        return None

    async def main() -> float:
        await noop()
        start = time.perf_counter()
        for _ in range(n):
            await noop()
        return time.perf_counter() - start

    return per_item(asyncio.run(main()), n)


def sequential_tasks(n: int, repeats: int) -> Result:
    from prefect import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def sequential(count: int) -> None:
        for i in range(count):
            inc(i)

    sequential(1)
    return per_item(timed(lambda: sequential(n)), n)


def submit(n: int, repeats: int) -> Result:
    from prefect import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def submitting(count: int) -> None:
        futures = [inc.submit(i) for i in range(count)]
        for future in futures:
            future.result()

    submitting(1)
    return per_item(timed(lambda: submitting(n)), n)


def map_tasks(n: int, repeats: int) -> Result:
    from prefect import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def mapping(count: int) -> None:
        inc.map(range(count)).result()

    mapping(1)
    return per_item(timed(lambda: mapping(n)), n)


def async_gather(n: int, repeats: int) -> Result:
    from prefect import flow, task

    @task
    async def inc(x: int) -> int:
        return x + 1

    @flow
    async def gathering(count: int) -> None:
        await asyncio.gather(*(inc(i) for i in range(count)))

    async def main() -> float:
        await gathering(1)
        start = time.perf_counter()
        await gathering(n)
        return time.perf_counter() - start

    return per_item(asyncio.run(main()), n)


def _subflows(n: int, backend: str, how: str) -> Result:
    import anyio
    from prefect import flow

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
        await parent(1)
        start = time.perf_counter()
        await parent(n)
        return time.perf_counter() - start

    return per_item(anyio.run(main, backend=backend), n)


def subflows_gather_asyncio(n: int, repeats: int) -> Result:
    return _subflows(n, "asyncio", "gather")


def subflows_tg_asyncio(n: int, repeats: int) -> Result:
    return _subflows(n, "asyncio", "task_group")


def subflows_tg_trio(n: int, repeats: int) -> Result:
    return _subflows(n, "trio", "task_group")


def retries(n: int, repeats: int) -> Result:
    from prefect import flow, task

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

    retrying(-1, 1)
    return per_item(timed(lambda: retrying(0, n)), n, attempts=len(failed_once))


def cancel_outer(n: int, repeats: int) -> Result:
    """Time from cancelling the caller's scope to the awaited flow having returned.

    Prefect records states on its server; reading them back is not part of the timing and
    not checked here (the asyncflow side checks every task run ended Cancelled).
    """
    import anyio
    from prefect import flow, task

    width = 100 if n >= 100 else n
    started = 0
    all_started = anyio.Event()

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
        async with anyio.create_task_group() as tg:
            for left in range(count, 0, -width):
                tg.start_soon(branch, min(width, left))

    @flow
    async def warm_up() -> None:
        return None

    async def main() -> float:
        await warm_up()
        async with anyio.create_task_group() as outer:
            scope = anyio.CancelScope()

            async def run_tree() -> None:
                with scope:
                    try:
                        await tree(n)
                    except Exception:
                        pass

            outer.start_soon(run_tree)
            await all_started.wait()
            start = time.perf_counter()
            scope.cancel()
        return time.perf_counter() - start

    seconds = anyio.run(main)
    return {"seconds": seconds, "per_item_us": seconds / n * 1e6, "states_checked": False}


def task_runs_batched(n: int, repeats: int) -> Result:
    from prefect import flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def batched(count: int) -> None:
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            futures: list[Any] = [inc.submit(i) for i in range(size)]
            for future in futures:
                future.result()
            del futures
            done += size

    batched(1)
    gc.collect()
    rss_before = rss_bytes()
    seconds = timed(lambda: batched(n))
    peak = peak_rss_bytes()
    gc.collect()
    rss_after = rss_bytes()
    return per_item(
        seconds,
        n,
        rss_before_bytes=rss_before,
        peak_rss_bytes=peak,
        rss_after_bytes=rss_after,
        retained_rss_bytes_per_task=(rss_after - rss_before) / n,
    )


WORKLOADS: dict[str, Workload] = {
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
    "task_runs_batched": task_runs_batched,
}

if __name__ == "__main__":
    import sys

    # hello_flow is timed from exec to exit, so only it pays Prefect's shutdown.
    child_main(WORKLOADS, hard_exit=sys.argv[1] != "hello_flow")
