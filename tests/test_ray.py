"""RayTaskRunner (issue 17, first slice) against a real local Ray: a nested flow on a Ray
the runner starts (and shuts down), then, on a Ray this module starts, retries, timeouts
(`ray.cancel`), failures with the user's exception, `remote_options`, a worker that
crashes mid-task, async flows on asyncio and trio, and runs in flight holding no thread."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from asyncflow import flow, task, unmapped  # noqa: E402
from asyncflow.task_runners.ray import RayTaskRunner, remote_options  # noqa: E402

# (no token file in the user's home, no dashboard: a test machine's local Ray)
INIT = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}


@pytest.fixture(scope="module", autouse=True)
def _local_ray_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import cloudpickle

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_TMPDIR", "RAY_TQDM_PATCH_PRINT")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_TQDM_PATCH_PRINT"] = "0"  # (Ray would put its own builtins.print in)
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # (workers cannot import this module)
    # (ray.init installs SIGTERM/SIGINT handlers of its own and leaves them: later tests of
    # asyncflow's own SIGTERM handling would then skip)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    cloudpickle.unregister_pickle_by_value(module)
    if ray.is_initialized():
        ray.shutdown()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@task
def square(x: int) -> int:
    return x * x


def test_a_nested_flow_on_a_ray_it_starts(registry: Any) -> None:
    """The seed's pattern on Ray; ray.init inside leaves this process's SIGTERM handler."""
    assert not ray.is_initialized()

    def mine(signum: int, frame: Any) -> None:
        raise AssertionError("not called")

    signal.signal(signal.SIGTERM, mine)

    @flow(task_runner=RayTaskRunner(init_kwargs=INIT))
    def on_ray(n: int) -> int:
        return sum(square.map(range(n)).result())

    @flow
    def parent() -> int:
        return on_ray(200)

    assert parent() == sum(i * i for i in range(200))
    assert not ray.is_initialized()  # (it started Ray, so it shut it down)
    assert signal.getsignal(signal.SIGTERM) is mine
    (nested,) = [r for r in registry.runs(kind="flow") if r.parent_flow_run_id is not None]
    tasks = [r for r in registry.runs(kind="task") if r.spec_name == "square"]
    assert len(tasks) == 200 and {r.parent_flow_run_id for r in tasks} == {nested.id}


@pytest.fixture(scope="module")
def running_ray() -> Iterator[None]:
    ray.init(**INIT)
    yield
    ray.shutdown()


def test_retries_timeouts_failures_and_options(running_ray: None, tmp_path: Path) -> None:
    marker = tmp_path / "attempted"

    @task(retries=1, retry_delay_seconds=0)
    def once_flaky() -> str:
        if not marker.exists():
            marker.write_text("x")
            raise ValueError("first attempt fails")
        return "second attempt"

    @task(timeout_seconds=1)
    def too_slow() -> None:
        time.sleep(30)

    @task
    def broken() -> None:
        raise KeyError("no such thing")

    @flow(task_runner=RayTaskRunner())
    def mixed() -> tuple[Any, ...]:
        with remote_options(resources={"unicorn": 1}, num_cpus=1):
            starved = square.with_options(timeout_seconds=2).submit(2, return_state=True)
        return (
            once_flaky.submit().result(),
            too_slow.submit(return_state=True).name,
            broken.submit(return_state=True),
            starved.name,
        )

    value, slow, failed, starved = mixed()
    assert value == "second attempt"
    assert slow == "TimedOut"
    assert failed.is_failed() and "KeyError" in (failed.message or "")
    assert starved == "TimedOut"  # (no node has a unicorn: Ray never ran it)
    assert ray.is_initialized()  # (a Ray it did not start is left running)


def test_a_crashed_worker_crashes_the_attempt_and_the_retry_completes(
    running_ray: None, registry: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"

    @task(retries=1, retry_delay_seconds=0)
    def dies_once() -> str:
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)  # (the worker process dies mid-task)
        return "survived"

    @flow(task_runner=RayTaskRunner())
    def resilient() -> str:
        return dies_once.submit().result()

    assert resilient() == "survived"
    (run,) = [r for r in registry.runs(kind="task") if r.spec_name == "dies_once"]
    assert "Crashed" in run.state_names and run.state_names[-1] == "Completed"


@pytest.mark.anyio
async def test_an_async_flow_awaits_ray_tasks(running_ray: None) -> None:
    @flow(task_runner=RayTaskRunner())
    async def gathered(n: int) -> int:
        futures = [square.submit(i) for i in range(n)]
        return sum([await f for f in futures])

    assert await gathered(20) == sum(i * i for i in range(20))


def test_runs_in_flight_hold_no_thread_each(running_ray: None) -> None:
    @task
    def nap(i: int) -> int:
        time.sleep(0.01)
        return i

    @flow(task_runner=RayTaskRunner())
    def many(n: int) -> tuple[int, int]:
        futures = nap.map(range(n))
        time.sleep(0.5)
        return threading.active_count(), sum(futures.result())

    before = threading.active_count()
    during, total = many(500)
    assert total == sum(range(500)) and during - before < 50


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="init_kwargs must be a dict"):
        RayTaskRunner(init_kwargs=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="address must be"):
        RayTaskRunner(address=5)  # type: ignore[arg-type]


@task
def make_big(size: int, gate: str) -> Any:
    from _ray_trap import Big

    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return Big(size)


@task
def size_of(value: Any, label: str = "") -> int:
    if isinstance(value, list):
        return sum(len(v.data) for v in value)
    return len(value.data)


def test_upstream_results_stay_in_ray_for_their_consumers(tmp_path: Path) -> None:
    """Consumers on the same runner get Ray's copy (a top-level argument, a keyword, inside
    a list: the flow's copy refuses to be pickled) while the flow holds its own; a consumer
    submitted after the value reached the flow gets the flow's copy (here: fails)."""
    gate = tmp_path / "go"
    os.environ["ASYNCFLOW_TEST_FLOW_PID"] = str(os.getpid())
    here = str(Path(__file__).parent)
    env = {"PYTHONPATH": here, "ASYNCFLOW_TEST_FLOW_PID": str(os.getpid())}
    sys.path.insert(0, here)
    if ray.is_initialized():  # (the module's own setup may have started one)
        ray.shutdown()
    ray.init(**INIT, runtime_env={"env_vars": env})
    try:

        @flow(task_runner=RayTaskRunner())
        def pipeline() -> tuple[Any, ...]:
            parts = make_big.map([1_000, 200_000], unmapped(str(gate)))
            one = size_of.submit(parts[0], label="one")
            both = size_of.submit(value=list(parts))
            gate.write_text("go")  # (the producers finish only once their consumers wait)
            values = one.result(), both.result(), len(parts[1].result().data)
            late = size_of.submit(parts[0], return_state=True)
            return (*values, late.name)

        assert pipeline() == (1_000, 201_000, 200_000, "Failed")
    finally:
        ray.shutdown()
        sys.path.remove(here)
        os.environ.pop("ASYNCFLOW_TEST_FLOW_PID", None)
