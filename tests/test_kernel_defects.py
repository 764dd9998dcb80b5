"""Bad-input and cancellation defects of the kernel (issue 12), each a regression test."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import untraced

from asyncflow import cancel_run, flow, runtime, task
from asyncflow.exceptions import CancelledRun, InvalidDefinitionError
from asyncflow.states import StateType
from asyncflow.task_runners import ThreadPoolTaskRunner


# -- timeouts that the clock cannot wait for ------------------------------------------------------
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), threading.TIMEOUT_MAX * 2, -1])
def test_unwaitable_timeouts_are_refused_at_decoration(bad: float) -> None:
    """An infinite timeout was accepted and killed the deadline thread, so every later sync
    timeout in the process was ignored."""
    with pytest.raises(InvalidDefinitionError, match="timeout_seconds must be a finite number"):

        @flow(timeout_seconds=bad)
        def f() -> None: ...

    with pytest.raises(InvalidDefinitionError, match="timeout_seconds"):

        @task(timeout_seconds=bad)
        def t() -> None: ...


def test_infinite_retry_delay_is_refused() -> None:
    with pytest.raises(InvalidDefinitionError, match="retry_delay_seconds"):

        @task(retries=1, retry_delay_seconds=float("inf"))
        def t() -> None: ...


def test_later_timeouts_still_work_after_a_refused_infinite_one() -> None:
    with pytest.raises(InvalidDefinitionError):
        flow(timeout_seconds=float("inf"))(lambda: None)

    @task(timeout_seconds=0.2)
    def sleeper() -> None:
        for _ in range(100):
            time.sleep(0.02)

    seen: list[Any] = []

    @flow
    def runs_it() -> None:
        seen.append(sleeper(return_state=True))

    runs_it()
    assert seen[0].type is StateType.FAILED and seen[0].name == "TimedOut"


# -- retry_delay_seconds callables ---------------------------------------------------------------
def _raises(retries: int) -> float:
    raise RuntimeError("no delay for you")


@pytest.mark.parametrize(
    ("delay", "said"),
    [(_raises, "RuntimeError: no delay for you"), (lambda r: "soon", "returned 'soon'")],
)
def test_broken_retry_delay_callable_fails_the_run_clearly(delay: Any, said: str) -> None:
    """It escaped raw and left the task run Running; now the run ends Failed, not retried,
    and its message says why."""
    calls: list[int] = []

    @task(retries=3, retry_delay_seconds=delay)
    def flaky() -> None:
        calls.append(1)
        raise ValueError("first failure")

    seen: list[Any] = []

    @flow
    def runs_it() -> None:
        seen.append(flaky(return_state=True))

    runs_it()
    (state,) = seen
    assert state.type is StateType.FAILED
    assert "ValueError: first failure" in (state.message or "")
    assert said in (state.message or "") and "not retrying" in (state.message or "")
    assert calls == [1]


# -- cancellation during a retry delay ------------------------------------------------------------
def test_cancel_during_a_sync_flows_retry_delay_raises_cancelled_run() -> None:
    """It raised the internal RunInterrupted (a BaseException) out of the flow call."""
    ids: list[uuid.UUID] = []

    @flow(retries=3, retry_delay_seconds=30)
    def failing() -> None:
        ids.append(runtime.flow_run.id)
        raise ValueError("fails")

    timer = threading.Timer(0.3, lambda: cancel_run(ids[0]))
    timer.start()
    started = time.monotonic()
    with pytest.raises(CancelledRun):
        failing()
    assert time.monotonic() - started < 10


def test_cancelled_retry_delay_in_a_background_thread() -> None:
    """The same from a flow run in a worker thread (no SIGALRM there)."""
    ids: list[uuid.UUID] = []
    outcome: list[BaseException | None] = []

    @flow(retries=3, retry_delay_seconds=30)
    def failing() -> None:
        ids.append(runtime.flow_run.id)
        raise ValueError("fails")

    def run() -> None:
        try:
            failing()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not ids:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    assert cancel_run(ids[0])
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledRun), outcome


# -- parameters pydantic cannot serialize as UTF-8 -------------------------------------------------
def test_bytes_that_are_not_utf8_are_fine_parameters() -> None:
    """`f(b"\\xff\\xfe")` on `data: bytes` raised a raw PydanticSerializationError."""

    @flow
    def takes_bytes(data: bytes) -> int:
        return len(data)

    state = takes_bytes(b"\xff\xfe", return_state=True)
    assert state.is_completed() and state.result() == 2


# -- callables that are not functions -------------------------------------------------------------
def _add(a: int, b: int) -> int:
    return a + b


class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


class AsyncTripler:
    async def __call__(self, x: int) -> int:
        return 3 * x


def test_partials_and_callable_objects_are_flows_and_tasks() -> None:
    """They were accepted, then the call raised AttributeError: __name__."""
    add_one = flow(functools.partial(_add, 1))
    assert add_one.name == "add"
    assert add_one(2) == 3
    doubler = task(Doubler())
    assert doubler.name == "Doubler" and not doubler.isasync

    @flow
    def uses() -> int:
        return doubler(4)

    assert uses() == 8
    assert task(AsyncTripler()).isasync


@pytest.mark.anyio
async def test_async_callable_object_task() -> None:
    tripler = task(AsyncTripler())

    @flow
    async def uses() -> int:
        return await tripler(5)

    assert await uses() == 15


# -- run ids ---------------------------------------------------------------------------------------
def test_run_ids_are_valid_rfc_4122_uuids() -> None:
    """Version 8 with the RFC 4122 variant (they were neither), still compact per process."""

    @task
    def t() -> int:
        return 1

    seen: list[Any] = []

    @flow
    def f() -> None:
        seen.append(t(return_state=True))

    state = f(return_state=True)
    task_state = seen[0]
    for run_id in (state.state_details.flow_run_id, task_state.state_details.task_run_id):
        assert isinstance(run_id, uuid.UUID)
        assert run_id.version == 8 and run_id.variant == uuid.RFC_4122
        assert uuid.UUID(str(run_id)) == run_id
    from pydantic import TypeAdapter
    from pydantic.types import UUID8

    TypeAdapter(UUID8).validate_python(state.state_details.flow_run_id)


# -- a pool shut down right after a submission was interrupted ---------------------------------
def test_pool_shutdown_skips_a_thread_whose_start_was_interrupted() -> None:
    """A cancellation delivered while the pool starts a worker thread left a thread object
    that never started; shutting the pool down then raised 'cannot join thread before it
    is started' instead of the run ending Cancelled."""
    runner = ThreadPoolTaskRunner(max_workers=2)
    never_started = threading.Thread(target=lambda: None)
    runner._threads.append(never_started)  # what the interrupted start left behind
    runner.submit_work(lambda: None)
    runner.shutdown(wait=True)  # no RuntimeError


# -- cancellation is final ---------------------------------------------------------------------
def test_cancelled_sync_task_whose_deadline_passes_in_cleanup_is_not_retried() -> None:
    """future.cancel(), then the deadline passes while the body cleans up: it ended TimedOut
    and was retried (the body ran again)."""
    attempts: list[int] = []

    @task(timeout_seconds=0.3, retries=2)
    def slow_cleanup() -> None:
        attempts.append(1)
        try:
            for _ in range(100):
                time.sleep(0.01)
        finally:
            for _ in range(60):  # the deadline passes in here
                time.sleep(0.01)

    seen: list[Any] = []

    @flow
    def runs_it() -> None:
        future = slow_cleanup.submit()
        time.sleep(0.1)
        future.cancel()
        future.wait()
        seen.append(future.state)

    runs_it()
    assert attempts == [1]
    assert seen and seen[0].type is StateType.CANCELLED


@pytest.mark.anyio
async def test_cancelled_async_flow_whose_deadline_passes_in_cleanup_is_not_retried() -> None:
    import anyio
    import anyio.lowlevel

    attempts: list[int] = []
    ids: list[uuid.UUID] = []

    @flow(timeout_seconds=0.3, retries=2)
    async def slow_cleanup() -> None:
        attempts.append(1)
        ids.append(runtime.flow_run.id)
        try:
            await anyio.sleep(5)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.5)  # past the deadline

    async def cancel_soon() -> None:
        await anyio.sleep(0.1)
        cancel_run(ids[0])

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_soon)
        state = await slow_cleanup(return_state=True)
    assert attempts == [1]
    assert state.type is StateType.CANCELLED


# -- async task coroutines that never run --------------------------------------------------------
@pytest.mark.anyio
async def test_async_task_coroutine_never_awaited_is_no_pending_run(registry: Any) -> None:
    """It left a task run Pending for ever; now the run exists once the coroutine starts."""
    import anyio
    import anyio.lowlevel

    @task
    async def work(x: int) -> int:
        return x

    @flow
    async def parent() -> int:
        unused = work(1)
        unused.close()  # dropped without being awaited
        await anyio.lowlevel.checkpoint()
        return await work(3)

    assert await parent() == 3
    tasks = list(registry.runs(kind="task"))
    assert [(t.name, t.state.type) for t in tasks] == [("work-0", StateType.COMPLETED)]


@pytest.mark.anyio
async def test_async_task_blocking_the_loop_past_its_timeout_is_timed_out() -> None:
    """No checkpoint, so its cancel scope never fired: it was recorded Completed."""

    @task(timeout_seconds=0.1)
    async def blocks() -> int:
        time.sleep(0.3)  # noqa: ASYNC251 (blocks the loop on purpose: no checkpoint)
        return 1

    seen: list[Any] = []

    @flow
    async def parent() -> None:
        seen.append(await blocks(return_state=True))

    await parent()
    assert seen[0].type is StateType.FAILED and seen[0].name == "TimedOut"


# -- deep nesting ------------------------------------------------------------------------------
@flow
def rec(n: int) -> int:
    return 0 if n == 0 else rec(n - 1) + 1


@flow
async def arec(n: int) -> int:
    return 0 if n == 0 else await arec(n - 1) + 1


def _final(registry: Any) -> bool:
    return all(r.state is not None and r.state.is_final() for r in registry.runs())


@untraced
def test_deep_nesting_works_and_too_deep_fails_cleanly_once(registry: Any, logs: Any) -> None:
    """Nesting failed past ~130 levels with RecursionErrors inside the engine, 200k+ lines
    of tracebacks, and runs left open. Now 100 levels work, and 500 fail at the level that
    would pass Python's limit: one clear error, one traceback, every run final."""
    assert rec(100) == 100
    logs.records.clear()
    with pytest.raises(RecursionError, match="Flow run nesting is too deep"):
        rec(500)
    assert _final(registry)
    text = "\n".join(logs.messages)
    assert sum(r.exc_info is not None for r in logs.records) == 1, text[:2000]


@untraced
@pytest.mark.anyio
async def test_deep_async_nesting_fails_cleanly(registry: Any) -> None:
    assert await arec(100) == 100
    with pytest.raises(RecursionError, match="Flow run nesting is too deep"):
        await arec(500)
    assert _final(registry)


# -- under a tracer ----------------------------------------------------------------------------
TRACED_SCRIPT = """
import time
from asyncflow import flow, task

@task(timeout_seconds=0.3)
def slow() -> None:
    for _ in range(100):
        time.sleep(0.01)

@flow
def runs_it() -> str:
    future = slow.submit()
    future.wait()
    return future.state.name

print(runs_it())
"""


def test_timeout_in_a_worker_thread_under_coverage_ends_timed_out(tmp_path: Any) -> None:
    """Under a tracer the interrupted worker thread never finished and the flow waited for
    ever. Now the run is stopped cooperatively there and ends TimedOut."""
    import os
    import subprocess
    import sys

    script = tmp_path / "traced.py"
    script.write_text(TRACED_SCRIPT)
    env = {**os.environ, "ASYNCFLOW_STORE": "memory", "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    env["COVERAGE_FILE"] = str(tmp_path / ".coverage")
    result = subprocess.run(
        [sys.executable, "-m", "coverage", "run", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TimedOut"


# -- result(raise_on_failure=False) and failure messages -----------------------------------------
def test_result_without_raising_returns_the_states_data() -> None:
    """On an aggregate `Failed('1/3 states failed.')` it returned the first exception; Prefect
    returns the states (and a manual Failed's own data)."""
    from asyncflow.states import Failed

    @task
    def bad() -> None:
        raise ValueError("I am bad task")

    @task
    def good() -> str:
        return "foo"

    @flow
    def returns_states() -> Any:
        return bad(return_state=True), good(return_state=True)

    state = returns_states(return_state=True)
    assert state.message == "1/2 states failed."
    first, second = state.result(raise_on_failure=False)
    assert first.is_failed() and isinstance(first.result(raise_on_failure=False), ValueError)
    assert second.result() == "foo"
    assert Failed(data="hello!").result(raise_on_failure=False) == "hello!"
    with pytest.raises(ValueError, match="I am bad task"):
        state.result()


def test_task_failure_message_matches_the_seed() -> None:
    """'Task run encountered an exception ValueError: ...', without the extra colon."""
    seen: list[Any] = []

    @task
    def always_fails() -> None:
        raise ValueError("I fail successfully")

    @flow
    def runs_it() -> None:
        seen.append(always_fails(return_state=True))

    runs_it()
    assert seen[0].message == "Task run encountered an exception ValueError: I fail successfully"
