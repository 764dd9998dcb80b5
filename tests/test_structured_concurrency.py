"""Issue 4: nested flows, concurrency, timeouts, retries, cancellation, crashes, generators."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import anyio
import anyio.lowlevel
import pytest
from conftest import untraced

from asyncflow import cancel_run, flow, task
from asyncflow.exceptions import CancelledRun, FlowRunTimeoutError, TaskRunTimeoutError
from asyncflow.runtime import flow_run
from asyncflow.states import StateType

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

# -- nested flows -------------------------------------------------------------------------------


@task
def double(x: int) -> int:
    return x * 2


@flow(name="Nestedflow")
def nested(value: int) -> int:
    return value + 1


@flow
def parent_passing_future() -> int:
    future = double.submit(20)
    return nested(future)  # the future becomes data before the child validates it


def test_nested_flow_links_and_future_resolution(registry):
    """Child flow and the parent's stand-in task run link both ways; futures become data."""
    assert parent_passing_future() == 41
    parent, child = registry.runs(kind="flow")
    stand_in = next(r for r in registry.runs(kind="task") if r.spec_name == "Nestedflow")
    assert child.parent_flow_run_id == parent.id
    assert child.parent_task_run_id == stand_in.id
    assert stand_in.child_flow_run_id == child.id
    assert stand_in.parent_flow_run_id == parent.id
    assert child.state.state_details.parent_task_run_id == stand_in.id
    assert stand_in.state_names == ["Pending", "Running", "Completed"]


@pytest.mark.anyio
async def test_stand_in_task_run_follows_a_retried_and_failed_subflow(registry):
    """The stand-in enters Running once, however often its flow retries, and ends in the
    flow's final state with its message; its name counts per flow name in the parent."""
    seen: list[object] = []

    @flow(name="Flaky", retries=1, retry_delay_seconds=0)
    async def flaky() -> None:
        seen.append(flow_run.parent_task_run_id)
        raise ValueError("still broken")

    @flow(name="Checked")
    async def checked(x: int) -> int:
        return x

    @flow
    async def outer() -> list[str]:
        states = [await flaky(return_state=True), await checked("nope", return_state=True)]
        return [s.type.value for s in states]

    assert await outer() == ["FAILED", "FAILED"]
    by_name = {r.name: r for r in registry.runs(kind="task")}
    assert set(by_name) == {"Flaky-0", "Checked-0"}
    flaky_stand_in, checked_stand_in = by_name["Flaky-0"], by_name["Checked-0"]
    flaky_run = registry.get(flaky_stand_in.child_flow_run_id)
    assert flaky_run.state_names == [
        "Pending", "Running", "Failed", "AwaitingRetry", "Retrying", "Failed"
    ]  # fmt: skip
    assert flaky_stand_in.state_names == ["Pending", "Running", "Failed"]
    assert flaky_stand_in.state.message == flaky_run.state.message
    assert "still broken" in flaky_stand_in.state.message
    assert seen == [flaky_stand_in.id, flaky_stand_in.id]  # flow_run.parent_task_run_id
    # Invalid parameters: neither run enters Running.
    assert checked_stand_in.state_names == ["Pending", "Failed"]
    assert registry.get(checked_stand_in.child_flow_run_id).state_names == ["Pending", "Failed"]


def test_nested_flow_logs_subflow_creation(logs):
    """The parent logs "Created subflow run '...' for flow 'Nestedflow'"."""
    parent_passing_future()
    assert any(
        line.startswith("Flow run '") and "Created subflow run" in line and "'Nestedflow'" in line
        for line in logs.lines
    )


# -- concurrency ---------------------------------------------------------------------------------


@flow
async def sleepy_child(i: int, seconds: float) -> int:
    await anyio.sleep(seconds)
    return i


@flow
async def gather_parent(n: int) -> list[int]:
    return list(await asyncio.gather(*(sleepy_child(i, 0.2) for i in range(n))))


@flow
async def group_parent(n: int, seconds: float) -> int:
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(sleepy_child, i, seconds)
    return n


@pytest.mark.anyio
async def test_task_group_children_run_concurrently(registry):
    """100 children sleeping 0.2 s in an anyio task group finish in well under 1 s."""
    start = time.monotonic()
    assert await group_parent(100, 0.2) == 100
    assert time.monotonic() - start < 1.0
    children = [r for r in registry.runs(kind="flow") if r.spec_name == "sleepy-child"]
    assert len(children) == 100
    assert {r.state.type for r in children} == {StateType.COMPLETED}


def test_asyncio_gather_children_run_concurrently():
    """asyncio.gather of 100 subflows sleeping 0.2 s takes about 0.2 s, not 20 s."""
    start = time.monotonic()
    assert asyncio.run(gather_parent(100)) == list(range(100))
    assert time.monotonic() - start < 1.0


# -- timeouts -----------------------------------------------------------------------------------


@flow(timeout_seconds=0.1)
async def sleeps_too_long() -> None:
    await anyio.sleep(10)


@pytest.mark.anyio
async def test_async_flow_timeout_is_a_cancel_scope(registry):
    """An async body sleeping 10 s with timeout 0.1 s ends TimedOut within ~0.15 s."""
    start = time.monotonic()
    state = await sleeps_too_long(return_state=True)
    elapsed = time.monotonic() - start
    assert elapsed < 0.1 + 0.05 + 0.25  # the 50 ms, plus slack for a shared machine
    assert state.name == "TimedOut"
    assert state.type is StateType.FAILED
    assert state.message == "Flow run exceeded timeout of 0.1 second(s)"
    assert isinstance(state.result(raise_on_failure=False), FlowRunTimeoutError)
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Running", "TimedOut"]


@flow(timeout_seconds=0.2)
async def parent_with_slow_children() -> None:
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(sleepy_child, i, 10)


@pytest.mark.anyio
async def test_children_of_a_timed_out_flow_are_cancelled(registry):
    """When a flow times out, its running child flows end Cancelled."""
    state = await parent_with_slow_children(return_state=True)
    assert state.name == "TimedOut"
    children = [r for r in registry.runs(kind="flow") if r.spec_name == "sleepy-child"]
    assert len(children) == 5
    assert {r.state.type for r in children} == {StateType.CANCELLED}


@task
async def quick_task() -> None:
    await anyio.lowlevel.checkpoint()


async def blocks_past_the_deadline_then_calls_a_task() -> None:
    time.sleep(0.15)  # noqa: ASYNC251  (holds the loop past the deadline, unseen by any checkpoint)
    await quick_task()  # the task call is where the deadline is noticed


@flow(timeout_seconds=0.05)
async def times_out_inside_a_task_group() -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(blocks_past_the_deadline_then_calls_a_task)


@pytest.mark.anyio
@pytest.mark.parametrize("outer_cancel", [False, True])
async def test_timeout_noticed_inside_a_users_task_group_is_a_timeout(registry, outer_cancel):
    """The deadline reaching the body wrapped in an ExceptionGroup still ends it TimedOut.

    Found by the property test on a loaded machine: the group used to end the run Failed, or
    with a cancellation beside it, leak the run's own timeout error past the caller's scope.
    """
    with anyio.CancelScope() as outer:
        if outer_cancel:
            outer.cancel()
        state = await times_out_inside_a_task_group(return_state=True)
    assert state.name == "TimedOut", state
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Running", "TimedOut"]


@flow(timeout_seconds=0.2)
def sync_sleeps_too_long() -> str:
    time.sleep(10)
    return "finished"


def test_sync_flow_timeout_interrupts_main_thread():
    """A sync flow blocked in time.sleep is interrupted at its deadline and ends TimedOut."""
    start = time.monotonic()
    state = sync_sleeps_too_long(return_state=True)
    assert time.monotonic() - start < 2
    assert state.name == "TimedOut"


@flow(timeout_seconds=0.2)
def sync_swallows_timeouts() -> str:
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except Exception:  # the timeout is swallowed by careless user code
            pass
    return "claims success"


def test_sync_flow_never_reports_completed_after_its_deadline():
    """Even when the body swallows the timeout, the run ends TimedOut, not Completed."""
    assert sync_swallows_timeouts(return_state=True).name == "TimedOut"


@task(timeout_seconds=0.2)
def busy_task() -> str:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        pass
    return "done"


@untraced
def test_sync_task_timeout_in_worker_thread(registry):
    """A CPU-bound sync task in a pool thread is interrupted at its deadline (TimedOut)."""
    start = time.monotonic()

    @flow
    def runner():
        return busy_task.submit().result(raise_on_failure=False)

    result = runner()
    assert isinstance(result, TaskRunTimeoutError)
    assert time.monotonic() - start < 3
    (task_run,) = registry.runs(kind="task")
    assert task_run.state_names == ["Pending", "Running", "TimedOut"]


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_flow_retries_record_each_attempt(registry):
    """A flow failing twice then succeeding records Failed -> AwaitingRetry -> Retrying twice."""
    attempts: list[int] = []

    @flow(retries=3, retry_delay_seconds=0)
    async def flaky() -> str:
        attempts.append(flow_run.run_count)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "ok"

    assert await flaky() == "ok"
    assert attempts == [1, 2, 3]
    (run,) = registry.runs(kind="flow")
    assert run.state_names == [
        "Pending", "Running",
        "Failed", "AwaitingRetry", "Retrying",
        "Failed", "AwaitingRetry", "Retrying",
        "Completed",
    ]  # fmt: skip
    assert run.run_count == 3


def test_retry_condition_fn_refuses_retry(registry):
    """retry_condition_fn is asked after each failure and can refuse further retries."""
    calls: list[int] = []

    @task(retries=5, retry_condition_fn=lambda task, run, state: run.run_count < 2)
    def always_fails() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    @flow
    def f() -> bool:
        return always_fails(return_state=True).is_failed()

    assert f() is True
    assert len(calls) == 2


def test_validation_failures_are_not_retried(registry):
    """A flow with retries whose parameters are invalid fails once, without Running."""

    @flow(retries=3)
    def typed(x: int) -> int:
        return x

    state = typed("not a number", return_state=True)
    assert state.is_failed()
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Failed"]


@pytest.mark.anyio
async def test_cancelling_during_retry_delay_ends_cancelled(registry):
    """A cancellation that arrives while a run waits to retry ends it Cancelled at once."""

    @flow(retries=1, retry_delay_seconds=30)
    async def fails_then_waits() -> None:
        raise ValueError("first attempt fails")

    start = time.monotonic()
    with anyio.move_on_after(0.2):
        await fails_then_waits()
    assert time.monotonic() - start < 2
    (run,) = registry.runs(kind="flow")
    assert run.state_names[-2:] == ["AwaitingRetry", "Cancelled"]


# -- cancellation -------------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.running = 0
        self.started = 0


@pytest.mark.anyio
async def test_outer_cancel_scope_cancels_the_whole_subtree(registry):
    """move_on_after around an awaited flow cancels it and every child; none keeps running."""
    counter = Counter()

    @flow
    async def child(i: int) -> None:
        counter.running += 1
        counter.started += 1
        try:
            await anyio.sleep(10)
        finally:
            counter.running -= 1

    @flow
    async def parent() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(child, i)

    with anyio.move_on_after(0.2) as scope:
        await parent()
    assert scope.cancelled_caught  # propagated to us as native cancellation
    assert counter.started == 100
    assert counter.running == 0
    runs = list(registry.runs(kind="flow"))
    assert {r.state.type for r in runs} == {StateType.CANCELLED}
    await anyio.sleep(0.05)
    assert counter.running == 0


@pytest.mark.anyio
async def test_cancel_run_from_another_thread_cancels_async_flow(registry):
    """cancel_run(id) from another thread ends an async flow Cancelled; calling it raises."""
    started = threading.Event()
    ids: list[object] = []

    @flow
    async def long_running() -> None:
        ids.append(flow_run.id)
        started.set()
        await anyio.sleep(10)

    def canceller() -> None:
        started.wait(5)
        assert cancel_run(ids[0]) is True

    thread = threading.Thread(target=canceller)
    thread.start()
    start = time.monotonic()
    with pytest.raises(CancelledRun):
        await long_running()
    thread.join()
    assert time.monotonic() - start < 2
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Running", "Cancelled"]
    assert cancel_run(ids[0]) is False  # already final


@untraced
def test_cancel_run_cancels_sync_flow_and_its_submitted_tasks(registry):
    """cancel_run on a sync flow interrupts its body and cancels the task runs it submitted."""
    ids: list[object] = []
    gate = threading.Event()

    @task
    def slow(i: int) -> int:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.01)
        return i

    @flow(task_runner=None)
    def submits_and_waits() -> None:
        ids.append(flow_run.id)
        for i in range(3):
            slow.submit(i)
        gate.set()
        time.sleep(10)

    def canceller() -> None:
        gate.wait(5)
        time.sleep(0.1)
        cancel_run(ids[0])

    thread = threading.Thread(target=canceller)
    thread.start()
    start = time.monotonic()
    state = submits_and_waits(return_state=True)
    thread.join()
    assert time.monotonic() - start < 5
    assert state.is_cancelled()
    tasks = list(registry.runs(kind="task"))
    assert len(tasks) == 3
    assert {t.state.type for t in tasks} == {StateType.CANCELLED}


@pytest.mark.anyio
async def test_future_cancel_stops_one_async_task(registry):
    """future.cancel() cancels that task run only; the flow continues and completes."""

    @task
    async def sleeper(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @flow
    async def f() -> list[str]:
        slow = sleeper.submit(10)
        fast = sleeper.submit(0.01)
        await anyio.sleep(0.05)
        assert slow.cancel() is True
        await slow.wait_async()
        return [slow.state.name, (await fast) and fast.state.name]

    assert await f() == ["Cancelled", "Completed"]


# -- crash vs failure ---------------------------------------------------------------------------


def test_keyboard_interrupt_crashes_and_reraises(registry):
    """A BaseException that is not the user's (KeyboardInterrupt) ends the run Crashed."""

    @flow
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    (run,) = registry.runs(kind="flow")
    assert run.state.type is StateType.CRASHED
    assert "KeyboardInterrupt" in (run.state.message or "")


@pytest.mark.anyio
async def test_several_failing_children_surface_as_exception_group(registry):
    """Children failing at once in a task group surface as an ExceptionGroup: Failed."""

    @flow
    async def bad_child(i: int) -> None:
        raise ValueError(f"child {i}")

    @flow
    async def parent() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(bad_child, i)

    state = await parent(return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, BaseExceptionGroup)
    assert all(isinstance(e, ValueError) for e in exc.exceptions)


# -- generators ---------------------------------------------------------------------------------


def test_generator_flow_is_running_while_yielding(registry):
    """A generator flow is Running while it yields and Completed once exhausted."""

    @flow
    def numbers():
        yield from range(3)

    gen = numbers()
    assert next(gen) == 0
    (run,) = registry.runs(kind="flow")
    assert run.state.type is StateType.RUNNING
    assert list(gen) == [1, 2]
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Running", "Completed"]


def test_generator_failing_mid_iteration_fails(registry):
    """An exception raised between yields fails the run and reaches the consumer."""

    @flow
    def breaks():
        yield 1
        raise RuntimeError("mid-iteration")

    gen = breaks()
    assert next(gen) == 1
    with pytest.raises(RuntimeError, match="mid-iteration"):
        next(gen)
    (run,) = registry.runs(kind="flow")
    assert run.state.type is StateType.FAILED


def test_generator_closed_early_completes(registry):
    """A consumer that stops early (close) ends the run Completed with a message saying so."""

    @flow
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    gen = endless()
    next(gen)
    gen.close()
    (run,) = registry.runs(kind="flow")
    assert run.state.type is StateType.COMPLETED
    assert run.state.message == "Generator closed before it was exhausted."


@pytest.mark.anyio
async def test_async_generator_flow(registry):
    """Async generator flows follow the same Running/Completed rules."""

    @flow
    async def ticks():
        for i in range(3):
            await anyio.lowlevel.checkpoint()
            yield i

    assert [i async for i in ticks()] == [0, 1, 2]
    (run,) = registry.runs(kind="flow")
    assert run.state_names == ["Pending", "Running", "Completed"]


# -- hooks --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_state_hooks_called_and_failing_hook_only_logged(registry, logs):
    """Hooks get (flow, run, state); an async hook is awaited; a failing one changes nothing."""
    seen: list[tuple[str, str]] = []

    def on_done(fl, run, state):
        seen.append(("sync", state.name))

    async def on_done_async(fl, run, state):
        await anyio.lowlevel.checkpoint()
        seen.append(("async", state.name))

    def broken(fl, run, state):
        raise RuntimeError("hook is broken")

    @flow(on_completion=[on_done, broken, on_done_async], on_failure=[on_done])
    async def fine() -> int:
        return 1

    assert await fine() == 1
    assert seen == [("sync", "Completed"), ("async", "Completed")]
    assert any("hook is broken" in m for m in logs.messages)
    (run,) = registry.runs(kind="flow")
    assert run.state.is_completed()


def test_task_failure_hook(registry):
    """A task's on_failure hook runs with the Failed state."""
    seen: list[str] = []

    @task(on_failure=[lambda t, run, state: seen.append(f"{t.name}:{state.type.value}")])
    def fails() -> None:
        raise ValueError("nope")

    @flow
    def f() -> None:
        fails(return_state=True)

    f()
    assert seen == ["fails:FAILED"]


# -- nested flows borrow the root's task group ---------------------------------------------------


@task
async def nap(seconds: float, log: list[str]) -> float:
    await anyio.sleep(seconds)
    log.append(f"napped {seconds}")
    return seconds


@pytest.mark.anyio
async def test_nested_flow_waits_for_the_tasks_it_submitted(registry):
    """A nested flow finishes only after the async tasks it submitted (and not awaited) end."""
    log: list[str] = []

    @flow
    async def inner() -> str:
        nap.submit(0.05, log)
        nap.submit(0.1, log)
        return "inner done"

    @flow
    async def outer() -> list[str]:
        result = await inner()
        return [*log, result]

    assert await outer() == ["napped 0.05", "napped 0.1", "inner done"]
    naps = [r for r in registry.runs(kind="task") if r.spec_name == "nap"]
    assert {r.state.type for r in naps} == {StateType.COMPLETED}


@pytest.mark.anyio
async def test_failing_nested_flow_cancels_its_submitted_tasks(registry):
    """When a nested flow's body fails, the tasks it submitted end Cancelled, not orphaned."""
    log: list[str] = []

    @flow
    async def inner() -> None:
        nap.submit(10, log)
        await anyio.sleep(0.05)
        raise RuntimeError("inner fails")

    @flow
    async def outer() -> str:
        state = await inner(return_state=True)
        return state.type.value

    start = time.monotonic()
    assert await outer() == "FAILED"
    assert time.monotonic() - start < 2
    (nap_run,) = [r for r in registry.runs(kind="task") if r.spec_name == "nap"]
    assert nap_run.state.type is StateType.CANCELLED
    assert log == []


@pytest.mark.anyio
async def test_cancel_run_on_nested_flow_leaves_parent_running(registry):
    """cancel_run on a nested flow cancels it (and its tasks); the parent goes on."""
    log: list[str] = []
    ids: list[object] = []

    @flow
    async def inner() -> None:
        ids.append(flow_run.id)
        nap.submit(10, log)
        await anyio.sleep(10)

    @flow
    async def outer() -> str:
        async with anyio.create_task_group() as tg:

            async def run_inner() -> None:
                with pytest.raises(CancelledRun):
                    await inner()

            tg.start_soon(run_inner)
            await anyio.sleep(0.05)
            assert cancel_run(ids[0]) is True
        return "parent finished"

    assert await outer() == "parent finished"
    runs = {r.spec_name: r for r in registry.runs(kind="flow")}
    assert runs["inner"].state.type is StateType.CANCELLED
    assert runs["outer"].state.type is StateType.COMPLETED
    (nap_run,) = [r for r in registry.runs(kind="task") if r.spec_name == "nap"]
    assert nap_run.state.type is StateType.CANCELLED


@pytest.mark.anyio
async def test_detached_flow_outlives_its_cancelled_caller(registry):
    """A flow whose coroutine is made in a fresh context and started in a task group outside
    the caller is a top-level run: cancelling the caller does not cancel it."""
    import contextvars

    finished: list[str] = []

    @flow
    async def background(tag: str) -> str:
        await anyio.sleep(0.1)
        finished.append(tag)
        return tag

    async with anyio.create_task_group() as app_group:  # owned by the app, not by a flow

        @flow
        async def caller() -> None:
            app_group.start_soon(contextvars.Context().run, background, "detached")
            await anyio.sleep(10)

        with anyio.move_on_after(0.02):
            await caller()

    assert finished == ["detached"]
    runs = {r.spec_name: r for r in registry.runs(kind="flow")}
    assert runs["caller"].state.type is StateType.CANCELLED
    assert runs["background"].state.type is StateType.COMPLETED
    assert runs["background"].parent_flow_run_id is None


def test_sync_flow_timeout_leaves_a_program_sigalrm_handler_alone():
    """If the program takes SIGALRM over, a sync flow's timeout does not fire the program's
    handler; the flow is still stopped at its next task call and ends TimedOut."""
    import signal

    @flow
    def warm_up() -> None:  # installs asyncflow's handler, which the program then replaces
        return None

    @task
    def step() -> None:
        time.sleep(0.3)

    @flow(timeout_seconds=0.1)
    def slow() -> None:
        step()
        step()

    warm_up()
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        state = slow(return_state=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert state.name == "TimedOut"
    assert fired == []
