"""The workloads: sizes, repeats, floors and which of them run on Prefect.

Sizes are per mode. Prefect sizes are smaller where Prefect needs milliseconds to a second
per run (its figures are compared per item, so they stay comparable); None means the
workload is not run on Prefect (and the table says why).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    what: str  # what it measures, one line
    unit: str  # unit of the headline figure: "us" per item, or "s" per process
    n_quick: int
    n_full: int
    repeats: int  # best of this many (rounds in one process, or fresh processes)
    floor: str | None  # a side_floor workload
    prefect_quick: int | None
    prefect_full: int | None
    item: str = "item"
    prefect_note: str = ""  # why Prefect does not run it

    def n(self, quick: bool) -> int:
        return self.n_quick if quick else self.n_full

    def prefect_n(self, quick: bool) -> int | None:
        return self.prefect_quick if quick else self.prefect_full


WORKLOADS: list[Workload] = [
    Workload(
        "import",
        "`import asyncflow` in a fresh process (in-process time; floor: anyio+pydantic+sniffio)",
        "s",
        1,
        1,
        5,
        "import",
        1,
        1,
    ),
    Workload(
        "hello_flow",
        "flow + task + nested flow, whole process exec to exit (floor: a process importing "
        "anyio+pydantic+sniffio)",
        "s",
        1,
        1,
        3,
        "hello_flow",
        1,
        1,
    ),
    Workload(
        "noop_flow_sync",
        "call of a sync flow that returns None (floor: plain call)",
        "us",
        500,
        20_000,
        5,
        "plain_noop",
        3,
        5,
        item="run",
    ),
    Workload(
        "noop_flow_async",
        "await of an async flow that returns None, asyncio (floor: await a coroutine function)",
        "us",
        500,
        20_000,
        5,
        "await_noop",
        3,
        5,
        item="run",
    ),
    Workload(
        "sequential_tasks",
        "N sync task calls in one sync flow (floor: N plain calls)",
        "us",
        5_000,
        100_000,
        3,
        "plain_calls",
        20,
        200,
        item="task",
    ),
    Workload(
        "submit",
        "N .submit() of a sync task on the thread pool, then every .result() "
        "(floor: ThreadPoolExecutor.submit + .result())",
        "us",
        2_000,
        100_000,
        3,
        "executor_submit",
        50,
        1_000,
        item="task",
    ),
    Workload(
        "map",
        "task.map over N items, then .result() (floor: ThreadPoolExecutor.map)",
        "us",
        2_000,
        100_000,
        3,
        "executor_map",
        50,
        1_000,
        item="task",
    ),
    Workload(
        "async_gather",
        "N async task calls gathered in an async flow, asyncio (floor: asyncio.gather)",
        "us",
        2_000,
        100_000,
        3,
        "asyncio_gather",
        50,
        1_000,
        item="task",
    ),
    Workload(
        "subflows_gather_asyncio",
        "N concurrent async subflows via asyncio.gather (floor: anyio task-group spawn, asyncio)",
        "us",
        1_000,
        10_000,
        3,
        "anyio_tg_asyncio",
        5,
        30,
        item="subflow",
    ),
    Workload(
        "subflows_tg_asyncio",
        "N concurrent async subflows via an anyio task group, asyncio (floor: same spawn)",
        "us",
        1_000,
        10_000,
        3,
        "anyio_tg_asyncio",
        5,
        30,
        item="subflow",
    ),
    Workload(
        "subflows_tg_trio",
        "N concurrent async subflows via an anyio task group, trio (floor: same spawn on trio)",
        "us",
        1_000,
        10_000,
        3,
        "anyio_tg_trio",
        5,
        5,
        item="subflow",
    ),
    Workload(
        "retries",
        "N sync task runs in a flow, each failing once then retried (retries=1, delay 0) "
        "(floor: a try/except retry around a plain call)",
        "us",
        200,
        1_000,
        3,
        "retry_loop",
        10,
        100,
        item="task",
    ),
    Workload(
        "cancel_outer",
        "cancel the caller's cancel scope around a flow -> subflows -> N sleeping async tasks; "
        "time until the flow call returned with all N recorded Cancelled "
        "(floor: nested anyio task groups)",
        "us",
        200,
        1_000,
        3,
        "cancel_tree",
        10,
        100,
        item="task",
    ),
    Workload(
        "cancel_run",
        "asyncflow.cancel_run(root id) on the same tree; time until all N recorded Cancelled",
        "us",
        200,
        1_000,
        3,
        "cancel_tree",
        None,
        None,
        item="task",
        prefect_note="no in-process cancel-by-id in Prefect (it goes through its server)",
    ),
    Workload(
        "task_runs_batched",
        "N submitted sync task runs in one flow, batches of 10,000; futures dropped per batch "
        "(floor: ThreadPoolExecutor.submit in the same batches)",
        "us",
        20_000,
        1_000_000,
        1,
        "executor_batched",
        100,
        1_000,
        item="task",
    ),
    Workload(
        "task_runs_retained",
        "Python heap still allocated per finished task run after the flow, by tracemalloc",
        "B",
        10_000,
        100_000,
        1,
        None,
        None,
        None,
        item="task",
        prefect_note="Prefect keeps its records in its server's database",
    ),
    Workload(
        "task_runs_sqlite",
        "task_runs_batched with ASYNCFLOW_STORE=sqlite (floor: the memory-store run); "
        "timed from the flow call to process exit, so a store's last writes count",
        "us",
        20_000,
        1_000_000,
        1,
        None,
        None,
        None,
        item="task",
        prefect_note="Prefect always records to its server's SQLite: see task_runs_batched",
    ),
    Workload(
        "store_sqlite",
        "N inline sync task calls in one flow with ASYNCFLOW_STORE=sqlite vs memory (issue 5's "
        "benchmark); best of fresh processes, timed to process exit",
        "us",
        10_000,
        100_000,
        3,
        None,
        None,
        None,
        item="task",
        prefect_note="Prefect always records to its server's SQLite: see sequential_tasks",
    ),
    Workload(
        "flow_calls_flat",
        "N sequential flow calls (one task each) with ASYNCFLOW_STORE=sqlite: RSS growth per "
        "call after a warm-up of N/5 (a long-lived process must stay flat)",
        "B",
        20_000,
        1_000_000,
        1,
        None,
        None,
        None,
        item="flow",
        prefect_note="Prefect keeps its records in its server's database",
    ),
    Workload(
        "persist_results",
        "N task calls that persist a small result to local storage, each a new file (floor: "
        "pickle + atomic write of a file each)",
        "us",
        500,
        5_000,
        3,
        "pickle_to_files",
        None,
        None,
        item="task",
        prefect_note="not measured yet",
    ),
    Workload(
        "cache_hits",
        "N task calls answered from the cache (INPUTS policy; floor: read a file and unpickle)",
        "us",
        500,
        5_000,
        3,
        "unpickle_from_files",
        None,
        None,
        item="task",
        prefect_note="not measured yet",
    ),
]

BY_NAME = {w.name: w for w in WORKLOADS}
