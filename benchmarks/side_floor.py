"""The bare floor: the same shapes of work with no workflow engine at all.

``python -m benchmarks.side_floor WORKLOAD N REPEATS``; workload names match the asyncflow
side's, so each asyncflow figure has its floor measured the same way in a fresh process.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks._measure import Result, Workload, best_of, child_main, per_item, timed

BATCH = 10_000


def inc(x: int) -> int:
    return x + 1


async def ainc(x: int) -> int:
    return x + 1


def hello_flow(n: int, repeats: int) -> Result:
    """A process that imports what asyncflow stands on and does nothing (timed from outside)."""
    import anyio  # noqa: F401
    import pydantic  # noqa: F401
    import sniffio  # noqa: F401

    return {}


def plain_noop(n: int, repeats: int) -> Result:
    """A plain call of a function that returns None."""

    def noop() -> None:
        return None

    def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            noop()
        return time.perf_counter() - start

    return per_item(best_of(repeats, run), n)


def await_noop(n: int, repeats: int) -> Result:
    """Awaiting a plain coroutine function that returns None, in asyncio."""

    async def noop() -> None:
        return None

    async def main() -> float:
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            for _ in range(n):
                await noop()
            best = min(best, time.perf_counter() - start)
        return best

    return per_item(asyncio.run(main()), n)


def plain_calls(n: int, repeats: int) -> Result:
    """N calls of a plain function in a loop."""

    def sequential(count: int) -> None:
        for i in range(count):
            inc(i)

    return per_item(best_of(repeats, lambda: timed(lambda: sequential(n))), n)


def executor_submit(n: int, repeats: int) -> Result:
    """ThreadPoolExecutor.submit per item, then every result (default pool size)."""

    def run() -> None:
        with ThreadPoolExecutor() as pool:
            futures = [pool.submit(inc, i) for i in range(n)]
            for future in futures:
                future.result()

    return per_item(best_of(repeats, lambda: timed(run)), n)


def executor_map(n: int, repeats: int) -> Result:
    """ThreadPoolExecutor.map over N items."""

    def run() -> None:
        with ThreadPoolExecutor() as pool:
            list(pool.map(inc, range(n)))

    return per_item(best_of(repeats, lambda: timed(run)), n)


def executor_batched(n: int, repeats: int) -> Result:
    """ThreadPoolExecutor.submit in batches of 10,000, each batch's results collected."""

    def run() -> None:
        with ThreadPoolExecutor() as pool:
            done = 0
            while done < n:
                size = min(BATCH, n - done)
                futures = [pool.submit(inc, i) for i in range(size)]
                for future in futures:
                    future.result()
                done += size

    return per_item(best_of(repeats, lambda: timed(run)), n)


def asyncio_gather(n: int, repeats: int) -> Result:
    """asyncio.gather of N coroutines."""

    async def main() -> float:
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            await asyncio.gather(*(ainc(i) for i in range(n)))
            best = min(best, time.perf_counter() - start)
        return best

    return per_item(asyncio.run(main()), n)


def _task_group_spawn(n: int, repeats: int, backend: str) -> Result:
    import anyio

    async def main() -> float:
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(ainc, i)
            best = min(best, time.perf_counter() - start)
        return best

    return per_item(anyio.run(main, backend=backend), n)


def anyio_tg_asyncio(n: int, repeats: int) -> Result:
    """anyio task group spawning N trivial coroutines, on asyncio."""
    return _task_group_spawn(n, repeats, "asyncio")


def anyio_tg_trio(n: int, repeats: int) -> Result:
    """anyio task group spawning N trivial coroutines, on trio."""
    return _task_group_spawn(n, repeats, "trio")


def retry_loop(n: int, repeats: int) -> Result:
    """N plain calls that raise on the first try and are retried once by a loop."""
    failed_once: set[int] = set()

    def flaky(i: int) -> int:
        if i not in failed_once:
            failed_once.add(i)
            raise ValueError(f"first attempt of {i} fails")
        return i

    def call_with_retry(i: int) -> int:
        try:
            return flaky(i)
        except ValueError:
            return flaky(i)

    offsets = iter(range(0, n * max(1, repeats), n))

    def run() -> None:
        start = next(offsets)
        for i in range(start, start + n):
            call_with_retry(i)

    return per_item(best_of(repeats, lambda: timed(run)), n)


def cancel_tree(n: int, repeats: int) -> Result:
    """Nested anyio task groups with N sleeping coroutines; time from cancel to all exited."""
    import anyio

    width = 100 if n >= 100 else n

    async def once() -> float:
        started = 0
        all_started = anyio.Event()

        async def sleeper() -> None:
            nonlocal started
            started += 1
            if started == n:
                all_started.set()
            await anyio.sleep(3600)

        async def branch(count: int) -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(sleeper)

        async def tree() -> None:
            async with anyio.create_task_group() as tg:
                for left in range(n, 0, -width):
                    tg.start_soon(branch, min(width, left))

        async with anyio.create_task_group() as outer:
            scope = anyio.CancelScope()

            async def run_tree() -> None:
                with scope:
                    await tree()

            outer.start_soon(run_tree)
            await all_started.wait()
            start = time.perf_counter()
            scope.cancel()
        return time.perf_counter() - start

    async def main() -> float:
        return min([await once() for _ in range(max(1, repeats))])

    seconds = anyio.run(main)
    return {"seconds": seconds, "per_item_us": seconds / n * 1e6}


def _result_dir() -> str:
    import os
    import tempfile

    return tempfile.mkdtemp(dir=os.environ.get("ASYNCFLOW_HOME"))


def pickle_to_files(n: int, repeats: int) -> Result:
    """N small values pickled, each written to a file of its own atomically (temp + rename)."""
    import os
    import pickle
    import tempfile

    base = _result_dir()
    rounds = iter(range(repeats))

    def write(start: int, count: int) -> None:
        for i in range(start, start + count):  # new files each round, as asyncflow's side
            fd, temp = tempfile.mkstemp(dir=base)
            with os.fdopen(fd, "wb") as f:
                f.write(pickle.dumps({"x": i}))
            os.replace(temp, os.path.join(base, str(i)))

    return per_item(best_of(repeats, lambda: timed(lambda: write(next(rounds) * n, n))), n)


def unpickle_from_files(n: int, repeats: int) -> Result:
    """N small pickled values read back from a file each."""
    import os
    import pickle

    base = _result_dir()
    for i in range(n):
        with open(os.path.join(base, str(i)), "wb") as f:
            f.write(pickle.dumps({"x": i}))

    def read(count: int) -> None:
        for i in range(count):
            with open(os.path.join(base, str(i)), "rb") as f:
                pickle.loads(f.read())

    return per_item(best_of(repeats, lambda: timed(lambda: read(n))), n)


WORKLOADS: dict[str, Workload] = {
    "pickle_to_files": pickle_to_files,
    "unpickle_from_files": unpickle_from_files,
    "hello_flow": hello_flow,
    "plain_noop": plain_noop,
    "await_noop": await_noop,
    "plain_calls": plain_calls,
    "executor_submit": executor_submit,
    "executor_map": executor_map,
    "executor_batched": executor_batched,
    "asyncio_gather": asyncio_gather,
    "anyio_tg_asyncio": anyio_tg_asyncio,
    "anyio_tg_trio": anyio_tg_trio,
    "retry_loop": retry_loop,
    "cancel_tree": cancel_tree,
}

if __name__ == "__main__":
    child_main(WORKLOADS)
