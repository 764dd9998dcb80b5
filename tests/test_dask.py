"""DaskTaskRunner (issue 17, first slice) against a real `distributed.LocalCluster` with
worker processes: the seed's nested-flow pattern, retries, timeouts, failures, async
flows on asyncio and trio, and runs in flight that hold no local thread each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from asyncflow import flow, task, unmapped  # noqa: E402
from asyncflow.task_runners.dask import DaskTaskRunner, get_dask_client  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _by_value() -> Iterator[None]:
    """Workers cannot import this test module: its tasks travel by value."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from asyncflow.task_runners import dask as runner_module

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as running:
        yield running
        runner_module._close_clients()  # (the runners' shared client, before its scheduler)


@task
def square(x: int) -> int:
    return x * x


@task
def pid() -> int:
    import os

    return os.getpid()


def test_a_nested_flow_on_its_own_cluster(registry: Any) -> None:
    """The seed's pattern: the parent on the default runner, the nested flow mapping 1,000
    tasks on a Dask cluster it starts, which is closed when the nested flow ends."""
    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 2,
                                                     "dashboard_address": ":0"}))  # fmt: skip
    def on_dask(n: int) -> int:
        futures = square.map(range(n))
        seen["cluster"] = distributed.default_client().cluster
        seen["pids"] = {pid.submit().result() for _ in range(4)}
        return sum(futures.result())

    @flow
    def parent() -> int:
        return on_dask(1000)

    import os

    assert parent() == sum(i * i for i in range(1000))
    assert os.getpid() not in seen["pids"]
    assert seen["cluster"].status.name == "closed"
    (nested,) = [r for r in registry.runs(kind="flow") if r.parent_flow_run_id is not None]
    tasks = [r for r in registry.runs(kind="task") if r.spec_name == "square"]
    assert len(tasks) == 1000 and all(r.state and r.state.is_completed() for r in tasks)
    assert {r.parent_flow_run_id for r in tasks} == {nested.id}


def test_retries_timeouts_and_failures(cluster: Any, tmp_path: Path) -> None:
    marker = tmp_path / "attempted"

    @task(retries=2, retry_delay_seconds=0)
    def once_flaky() -> str:
        if not marker.exists():  # (the first attempt, on whichever worker)
            marker.write_text("x")
            raise ValueError("first attempt fails")
        return "second attempt"

    @task(timeout_seconds=0.5)
    def too_slow() -> None:
        time.sleep(3)

    @task
    def broken() -> None:
        raise KeyError("no such thing")

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def mixed() -> tuple[Any, ...]:
        return (
            once_flaky.submit().result(),
            too_slow.submit(return_state=True),
            broken.submit(return_state=True),
        )

    value, slow, failed = mixed()
    assert value == "second attempt"
    assert slow.is_failed() and slow.name == "TimedOut"
    assert "cannot stop a task body that has started" in (slow.message or "")
    assert failed.is_failed() and "KeyError" in (failed.message or "")
    assert cluster.status.name == "running"  # (a cluster given is not closed)


@pytest.mark.anyio
async def test_an_async_flow_awaits_dask_tasks(cluster: Any) -> None:
    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    async def gathered(n: int) -> int:
        futures = [square.submit(i) for i in range(n)]
        return sum([await f for f in futures])

    assert await gathered(50) == sum(i * i for i in range(50))


def test_ten_thousand_runs_in_flight_hold_no_thread_each(cluster: Any, tmp_path: Path) -> None:
    """10,000 runs submitted and waiting on the cluster at once (they wait for a file the
    test writes once it has counted this process's threads)."""
    n = 10_000
    go = tmp_path / "go"

    @task
    def held(i: int) -> int:
        while not go.exists():
            time.sleep(0.01)
        return i

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def many() -> tuple[int, int, int]:
        futures = held.map(range(n))
        client = distributed.default_client()
        deadline = time.monotonic() + 120
        while len(client.who_has()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        on_cluster = len(client.who_has())
        during = threading.active_count()
        go.write_text("go")
        return during, on_cluster, sum(futures.result())

    before = threading.active_count()
    during, on_cluster, total = many()
    assert total == sum(range(n))
    assert on_cluster >= n  # (all of them were on the cluster at once)
    assert during - before < 50


def test_get_dask_client_inside_a_task(cluster: Any) -> None:
    @task
    def nested_sum(n: int) -> int:
        client = get_dask_client()
        return sum(client.gather(client.map(lambda x: x + 1, range(n))))

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def uses_client() -> int:
        return nested_sum.submit(10).result()

    assert uses_client() == sum(range(1, 11))
    with pytest.raises(RuntimeError, match="inside a task"):
        get_dask_client()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        DaskTaskRunner(cluster=object(), address="tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match="cluster_kwargs must be a dict"):
        DaskTaskRunner(cluster_kwargs=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a cluster it starts"):
        DaskTaskRunner(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})


def test_a_killed_worker_crashes_the_attempt_and_the_retry_completes(
    registry: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-once"

    @task(retries=1, retry_delay_seconds=0)
    def dies_once() -> str:
        import os
        import signal

        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)  # (the worker process dies mid-task)
        return "survived"

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1,
                                                     "dashboard_address": ":0"}))  # fmt: skip
    def resilient() -> str:
        return dies_once.submit().result()

    assert resilient() == "survived"
    (run,) = [r for r in registry.runs(kind="task") if r.spec_name == "dies_once"]
    assert run.state_names[-5:] == ["Running", "Crashed", "AwaitingRetry", "Retrying",
                                    "Completed"]  # fmt: skip


def test_dask_annotate_resources_and_priority_are_honoured(cluster: Any) -> None:
    import dask

    @task
    def where() -> str:
        from distributed import get_worker

        return str(get_worker().address)

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def pinned(address: str) -> set[str]:
        with dask.annotate(workers=[address], allow_other_workers=False, priority=10):
            futures = [where.submit() for _ in range(8)]
        return {f.result() for f in futures}

    first = sorted(cluster.scheduler_info["workers"])[0]
    assert pinned(first) == {first}

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def needs_gpu() -> str:
        with dask.annotate(resources={"GPU": 1}):  # (no worker has one: it stays queued)
            state = where.with_options(timeout_seconds=1).submit(return_state=True)
        return state.name

    assert needs_gpu() == "TimedOut"


def test_cancelling_a_flow_cancels_its_remote_runs(cluster: Any, registry: Any) -> None:
    """cancel_run of a flow with 100 runs on the cluster: every run ends Cancelled, and
    none is left queued on the scheduler (the few running ones are abandoned there)."""
    from asyncflow import runtime
    from asyncflow.cancel import cancel_run
    from asyncflow.exceptions import CancelledRun

    @task
    def long(i: int) -> int:
        time.sleep(3)
        return i

    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def busy() -> int:
        futures = long.map(range(100))
        client = distributed.default_client()
        while sum(key.startswith("long-") for key in client.who_has()) < 100:
            time.sleep(0.05)
        seen["client"] = client
        threading.Thread(target=cancel_run, args=(runtime.flow_run.id,)).start()
        return sum(futures.result())

    with pytest.raises(CancelledRun):
        busy()
    runs = [r for r in registry.runs(kind="task") if r.spec_name == "long"]
    assert len(runs) == 100 and all(r.state and r.state.is_cancelled() for r in runs)
    scheduler = cluster.scheduler
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = [t for t in scheduler.tasks.values() if t.key.startswith("long-")
                   and t.state in ("queued", "no-worker", "waiting", "released")]  # fmt: skip
        if not waiting:
            break
        time.sleep(0.1)
    assert not waiting


FLOW_PID = os.getpid()


class Big:
    """A result that refuses to be pickled in the flow's process: a consumer that gets it
    must have been given the cluster's copy."""

    def __init__(self, size: int) -> None:
        self.data = b"x" * size

    def __sizeof__(self) -> int:
        return len(self.data) + 64

    def __reduce__(self) -> Any:
        if os.getpid() == FLOW_PID:
            raise RuntimeError("the flow's copy of a kept result was sent to Dask")
        return (Big, (len(self.data),))


@task
def make_big(size: int, gate: str) -> Big:
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return Big(size)


@task
def size_of(value: Any) -> int:
    return len(value.data) if isinstance(value, Big) else sum(len(v.data) for v in value)


def test_upstream_results_stay_on_the_cluster_for_their_consumers(
    cluster: Any, tmp_path: Path
) -> None:
    """A consumer on the same runner gets the cluster's copy (top level, inside a list),
    the flow still holds the value, and the copy is released once no consumer pends."""
    seen: dict[str, Any] = {}
    gate = tmp_path / "go"

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def pipeline() -> tuple[int, int, int]:
        parts = make_big.map([200_000, 300_000], unmapped(str(gate)))
        one = size_of.submit(parts[0])
        both = size_of.submit(list(parts))
        gate.write_text("go")  # (the producers finish only once their consumers wait)
        held = parts[1].result()  # (the flow has its own copy)
        values = one.result(), both.result(), len(held.data)
        deadline = time.monotonic() + 20
        while any(k.startswith("make_big-") for k in cluster.scheduler.tasks):
            assert time.monotonic() < deadline, "kept results were not released"
            time.sleep(0.05)
        seen["released"] = True
        return values

    assert pipeline() == (200_000, 500_000, 300_000)
    assert seen["released"]


def test_small_results_and_later_consumers_travel_with_the_flow(
    cluster: Any, tmp_path: Path
) -> None:
    (tmp_path / "go").write_text("go")

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def later() -> tuple[int, int]:
        small = square.submit(7)
        square.submit(small).result()  # (small: sent along, not kept)
        big = make_big.submit(100_000, str(tmp_path / "go"))
        big.wait()
        # Nothing was pending when it finished: not kept, so the flow's copy would be
        # sent; a Big refuses that, so the run fails with a SerializationError.
        return square.submit(small).result(), size_of.submit(big, return_state=True).name

    value, name = later()
    assert value == 49 * 49
    assert name == "Failed"


def _producer(tmp_path: Path) -> tuple[Any, Path, Path]:
    """A task returning 2 MB that appends to `ran` on each run and writes its worker's pid
    to `where`."""
    ran = tmp_path / "ran"
    where = tmp_path / "pid"

    @task
    def produce() -> bytes:
        with ran.open("a") as out:
            out.write("x")
        where.write_text(str(os.getpid()))
        return b"y" * 2_000_000

    return produce, ran, where


def test_a_kept_result_lost_with_its_worker_is_not_computed_again(
    registry: Any, tmp_path: Path
) -> None:
    """The worker holding a result kept for a pending consumer dies: Dask does not run the
    finished task again, and the consumer gets the flow's copy instead (no attempt lost)."""
    produce, ran, where = _producer(tmp_path)

    seen: dict[str, bool] = {}

    @task
    async def kill_its_worker() -> None:
        import anyio

        tasks = distributed.default_client().cluster.scheduler.tasks
        seen["kept"] = any(k.startswith("produce-") and t.state == "memory"
                           for k, t in tasks.items())  # fmt: skip
        os.kill(int(where.read_text()), signal.SIGKILL)
        await anyio.sleep(3)  # (Dask notices and forgets the result)

    @task
    def consume(data: bytes, _: Any) -> int:
        return len(data)

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                                     "dashboard_address": ":0"}))  # fmt: skip
    def fragile() -> int:
        produced = produce.submit()
        killed = kill_its_worker.submit(wait_for=[produced])
        return consume.submit(produced, killed).result()

    assert fragile() == 2_000_000
    assert seen["kept"]
    time.sleep(1)
    assert ran.read_text() == "x"  # (run once)
    (run,) = [r for r in registry.runs(kind="task") if r.spec_name == "consume"]
    assert run.state_names == ["Pending", "Running", "Completed"]


def test_flow_runs_leave_nothing_on_a_shared_scheduler(cluster: Any) -> None:
    """Several flow runs on one given cluster share one client, and once each ends the
    scheduler holds none of its tasks, results, functions or tokens."""
    clients: set[int] = set()

    @task
    def payload(size: int) -> bytes:
        return b"z" * size

    @task
    def length(data: bytes) -> int:
        return len(data)

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def chain(n: int) -> int:
        clients.add(id(distributed.default_client()))
        firsts = payload.map([70_000] * n)
        return sum(length.map(firsts).result())

    for _ in range(3):
        assert chain(50) == 50 * 70_000
        deadline = time.monotonic() + 20
        while cluster.scheduler.tasks:
            assert time.monotonic() < deadline, sorted(cluster.scheduler.tasks)[:5]
            time.sleep(0.05)
    assert len(clients) == 1


def test_an_input_lost_while_its_consumer_waits_on_dask_is_sent_again(
    registry: Any, tmp_path: Path
) -> None:
    """The consumer is on the scheduler, waiting for a worker it can run on, when the
    worker holding its kept input dies: Dask forgets the input (it does not run the finished
    task again) and the consumer is sent again with the flow's copy, in the same attempt."""
    import dask

    produce, ran, where = _producer(tmp_path)

    @task
    def consume(data: bytes) -> int:
        return len(data)

    worker: list[Any] = []

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1,
                                                     "dashboard_address": ":0"}))  # fmt: skip
    def fragile() -> int:
        produced = produce.submit()
        with dask.annotate(resources={"late": 1}):  # (no worker has it yet)
            consumed = consume.submit(produced)
        client = distributed.default_client()
        tasks = client.cluster.scheduler.tasks
        deadline = time.monotonic() + 30
        while not any(k.startswith("consume-") and t.state == "no-worker"
                      for k, t in tasks.items()):  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(int(where.read_text()), signal.SIGKILL)
        worker.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "dask"), "worker",
             client.scheduler.address, "--nthreads", "1", "--resources", "late=1",
             "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        return consumed.result()

    try:
        assert fragile() == 2_000_000
    finally:
        for process in worker:
            process.terminate()
            process.wait(30)
    assert ran.read_text() == "x"  # (run once)
    (run,) = [r for r in registry.runs(kind="task") if r.spec_name == "consume"]
    assert run.state_names == ["Pending", "Running", "Completed"]


def test_a_consumer_submitted_after_the_flow_got_the_value_sees_the_flows_copy(
    cluster: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "go"

    @task
    def numbers(n: int) -> list[int]:
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(range(n))

    @task
    def count(values: list[int]) -> int:
        return len(values)

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def changed() -> tuple[int, int]:
        made = numbers.submit(20_000)
        early = count.submit(made)  # (pending when the value arrives: gets Dask's copy)
        gate.write_text("go")
        values = made.result()
        values.append(-1)  # (the flow changes its copy)
        return early.result(), count.submit(made).result()

    assert changed() == (20_000, 20_001)


class Unsized:
    """A value whose size cannot be taken."""

    def __sizeof__(self) -> int:
        raise RuntimeError("no size")


def test_a_value_whose_size_cannot_be_taken_is_still_delivered(cluster: Any) -> None:
    @task
    def odd() -> Unsized:
        return Unsized()

    @task
    def name_of(value: Any) -> str:
        return type(value).__name__

    @flow(task_runner=DaskTaskRunner(cluster=cluster))
    def sized() -> str:
        made = odd.submit()
        return name_of.submit(made).result()

    assert sized() == "Unsized"


def test_a_consumer_that_kills_its_worker_crashes_once(registry: Any, tmp_path: Path) -> None:
    """Its kept input dies with it, but the consumer ran: the attempt is Crashed (no free
    second run), and with no retries the run ends so."""
    ran = tmp_path / "ran"

    @task
    def produce() -> bytes:
        return b"y" * 2_000_000

    @task
    def dies(data: bytes) -> int:
        with ran.open("a") as out:
            out.write("x")
        os.kill(os.getpid(), signal.SIGKILL)
        return len(data)

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1,
                                                     "dashboard_address": ":0"}))  # fmt: skip
    def doomed() -> str:
        return dies.submit(produce.submit(), return_state=True).name

    assert doomed() == "Crashed"
    assert ran.read_text() == "x"
