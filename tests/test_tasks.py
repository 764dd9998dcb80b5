"""Tasks: the seed examples, task options, inline calls, `.submit()` arguments and `.map()`."""

from __future__ import annotations

import re
import threading
import time

import anyio
import anyio.lowlevel
import pytest

from asyncflow import allow_failure, flow, quote, task, unmapped
from asyncflow.exceptions import (
    InvalidDefinitionError,
    MappingLengthMismatch,
    MappingMissingIterable,
    UpstreamTaskError,
)
from asyncflow.futures import TaskRunFuture
from asyncflow.states import Completed, Failed, StateType
from asyncflow.tasks import exponential_backoff

# -- seed examples ----------------------------------------------------------------------------


@task(name="Print Hello")
def print_hello(name: str) -> str:
    msg = f"Hello {name}!"
    print(msg)
    return msg


@flow(name="Hello Flow")
def hello_world(name: str = "world") -> str:
    return print_hello(name)


def test_print_hello_recorded_under_hello_flow(registry, logs):
    """The seed's print_hello runs as 'Print Hello-0' inside 'Hello Flow' with a full history."""
    assert hello_world("Marvin") == "Hello Marvin!"
    (flow_run,) = registry.runs(kind="flow")
    (task_run,) = registry.runs(kind="task")
    assert task_run.name == "Print Hello-0"
    assert task_run.spec_name == "Print Hello"
    assert task_run.parent_flow_run_id == flow_run.id
    assert task_run.state_names == ["Pending", "Running", "Completed"]
    assert "Task run 'Print Hello-0' - Created task run 'Print Hello-0' for task 'Print Hello'" in (
        logs.lines
    )


@task
def always_fails_task():
    raise ValueError("I fail successfully")


@task
def always_succeeds_task():
    return "success"


@flow
def return_a_future_flow():
    x = always_fails_task.submit().result(raise_on_failure=False)
    y = always_succeeds_task.submit(wait_for=[x])
    return y


def test_return_a_future_variant_completes():
    """Seed 'Return a future': waiting on a failure's *exception* lets the next task run."""
    state = return_a_future_flow(return_state=True)
    assert state.is_completed()
    assert state.message == "All states completed."


@flow
def return_manual_state_flow():
    always_fails_task.submit()
    y = always_succeeds_task.submit()
    if y.result() == "success":
        return Completed(message="I am happy with this result")
    return Failed(message="How did this happen!?")


def test_return_a_manual_state_variant(registry):
    """Seed 'Return a manual state': the flow ends with the state it returned."""
    state = return_manual_state_flow(return_state=True)
    assert state.is_completed()
    assert state.message == "I am happy with this result"
    by_name = {r.spec_name: r.state for r in registry.runs(kind="task")}
    assert by_name["always_fails_task"].is_failed()
    assert by_name["always_succeeds_task"].is_completed()


@task
def add_one(x):
    return x + 1


@flow
def add_one_flow():
    state = add_one("1", return_state=True)
    assert state.is_failed()
    return state.message


def test_return_state_true_failure_does_not_fail_flow():
    """`add_one("1", return_state=True)` is Failed and the flow still completes."""
    state = add_one_flow(return_state=True)
    assert state.is_completed()
    assert state.result().startswith("Task run encountered an exception")
    assert "TypeError" in state.result()


def test_failed_task_state_message_and_error():
    """A failed task's state message names the exception; result() re-raises it."""
    state = always_fails_task(return_state=True)
    assert state.type is StateType.FAILED
    assert state.message.startswith("Task run encountered an exception")
    with pytest.raises(ValueError, match="I fail successfully"):
        state.result()


# -- task options -----------------------------------------------------------------------------


def test_name_tags_and_defaults():
    """`name` and `tags` are kept; the name defaults to the function's name."""

    @task(name="Custom", tags=["a", "b"])
    def named():
        return 1

    assert named.name == "Custom"
    assert named.tags == frozenset({"a", "b"})
    assert add_one.name == "add_one"
    assert add_one.tags == frozenset()


def test_tags_visible_in_runtime():
    """A task sees its own tags through asyncflow.runtime.task_run."""
    from asyncflow.runtime import task_run

    @task(tags=["x", "y"])
    def read_tags():
        return task_run.tags

    assert read_tags() == ["x", "y"]


def test_with_options_returns_a_modified_copy():
    """with_options gives a new Task; the original keeps its options."""
    copy = add_one.with_options(name="Add One Copy", retries=2, tags=["t"])
    assert copy is not add_one
    assert (copy.name, copy.retries, copy.tags) == ("Add One Copy", 2, frozenset({"t"}))
    assert (add_one.name, add_one.retries, add_one.tags) == ("add_one", 0, frozenset())
    assert copy(1) == 2


def test_retries_then_success(registry):
    """A task failing twice with retries=2 completes on the third attempt, history recorded."""
    attempts = []

    @task(retries=2, retry_delay_seconds=0)
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "ok"

    assert flaky() == "ok"
    (run,) = registry.runs(kind="task")
    assert run.run_count == 3
    assert run.state_names.count("AwaitingRetry") == 2
    assert run.state_names.count("Retrying") == 2
    assert run.state_names[-1] == "Completed"


def test_retries_exhausted_end_failed(registry):
    """When every attempt fails the final state is Failed after retries+1 attempts."""
    calls = []

    @task(retries=1)
    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    state = broken(return_state=True)
    assert state.is_failed()
    assert len(calls) == 2


def _retry_messages(registry) -> list[str]:
    (run,) = registry.runs(kind="task")
    return [s.message for s in run.states if s.name == "AwaitingRetry"]


def test_retry_delay_number(registry):
    """A number delay waits that long before every retry."""

    @task(retries=2, retry_delay_seconds=0.05)
    def fails():
        raise RuntimeError

    start = time.monotonic()
    fails(return_state=True)
    assert time.monotonic() - start >= 0.09
    assert _retry_messages(registry) == ["Retry 1 of 2 in 0.05s", "Retry 2 of 2 in 0.05s"]


def test_retry_delay_list(registry):
    """A list of delays is used one per retry."""

    @task(retries=3, retry_delay_seconds=[0.01, 0.02, 0.03])
    def fails():
        raise RuntimeError

    fails(return_state=True)
    assert _retry_messages(registry) == [
        "Retry 1 of 3 in 0.01s",
        "Retry 2 of 3 in 0.02s",
        "Retry 3 of 3 in 0.03s",
    ]


def test_retry_delay_callable(registry):
    """A callable gets the number of retries and returns the delays (exponential_backoff)."""
    seen = []

    def delays(retries):
        seen.append(retries)
        return exponential_backoff(0.01)(retries)

    @task(retries=3, retry_delay_seconds=delays)
    def fails():
        raise RuntimeError

    fails(return_state=True)
    assert set(seen) == {3}
    assert _retry_messages(registry) == [
        "Retry 1 of 3 in 0.01s",
        "Retry 2 of 3 in 0.02s",
        "Retry 3 of 3 in 0.04s",
    ]


def test_retry_jitter_factor(registry):
    """Jitter keeps each delay within delay*(1±factor); a negative factor is rejected."""

    @task(retries=4, retry_delay_seconds=0.02, retry_jitter_factor=0.5)
    def fails():
        raise RuntimeError

    fails(return_state=True)
    delays = [float(re.search(r"in ([\d.e-]+)s", m).group(1)) for m in _retry_messages(registry)]
    assert len(delays) == 4
    assert all(0.01 - 1e-9 <= d <= 0.03 + 1e-9 for d in delays)
    with pytest.raises(InvalidDefinitionError):
        task(retry_jitter_factor=-1)(lambda: None)


def test_retry_condition_fn_can_refuse_retry():
    """retry_condition_fn(task, run, state) returning False ends the run after one attempt."""
    calls = []
    seen_states = []

    def only_value_errors(tsk, run, state):
        seen_states.append(state)
        return isinstance(state.result(raise_on_failure=False), ValueError)

    @task(retries=3, retry_condition_fn=only_value_errors)
    def fails(exc_type):
        calls.append(1)
        raise exc_type("x")

    assert fails(TypeError, return_state=True).is_failed()
    assert len(calls) == 1
    assert seen_states[0].is_failed()
    calls.clear()
    assert fails(ValueError, return_state=True).is_failed()
    assert len(calls) == 4


@pytest.mark.anyio
async def test_async_task_timeout_is_timed_out():
    """An async task past timeout_seconds ends Failed named 'TimedOut', promptly."""

    @task(timeout_seconds=0.1)
    async def slow():
        await anyio.sleep(10)

    with anyio.fail_after(5):
        state = await slow(return_state=True)
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert "timeout" in state.message


@pytest.mark.anyio
async def test_async_task_timeout_inside_async_flow():
    """A timed-out async task inside an async flow fails the flow with TimeoutError."""

    @task(timeout_seconds=0.1)
    async def slow():
        await anyio.sleep(10)

    @flow
    async def timing_flow():
        await slow()

    with anyio.fail_after(5):
        state = await timing_flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(TimeoutError):
        state.result()


def test_task_run_name_template(registry):
    """task_run_name templates are rendered from the call's parameters."""

    @task(task_run_name="add-{x}-and-{y}")
    def add(x, y):
        return x + y

    assert add(1, y=2) == 3
    (run,) = registry.runs(kind="task")
    assert run.name == "add-1-and-2"


def test_task_run_name_callable(registry):
    """A callable task_run_name is called for each run."""
    names = iter(["first", "second"])

    @task(task_run_name=lambda: next(names))
    def noop():
        return None

    @flow
    def two():
        noop()
        noop()

    two()
    assert [r.name for r in registry.runs(kind="task")] == ["first", "second"]


def test_task_run_name_unknown_field_rejected():
    """A template naming a non-parameter fails at decoration time."""
    with pytest.raises(InvalidDefinitionError, match="nope"):
        task(task_run_name="{nope}")(lambda x: x)


def test_log_prints_task_in_plain_flow(logs):
    """A task with log_prints=True sends print() to its run logger (flow has no log_prints)."""

    @task(log_prints=True)
    def speak():
        print("task says hi")

    @flow
    def quiet_flow():
        speak()

    quiet_flow()
    assert any(
        line.endswith("task says hi") and "Task run 'speak-0'" in line for line in logs.lines
    )


def test_log_prints_inherited_and_overridden(logs, capsys):
    """Tasks inherit log_prints from the flow unless they set log_prints=False."""

    @task
    def inherits():
        print("inherited print")

    @task(log_prints=False)
    def opts_out():
        print("plain print")

    @flow(log_prints=True)
    def loud():
        inherits()
        opts_out()

    loud()
    assert "inherited print" in logs.messages
    assert "plain print" not in logs.messages
    assert "plain print" in capsys.readouterr().out


def test_task_outside_flow_is_recorded_without_parent(registry):
    """A task called outside any flow runs and is recorded with no parent flow run."""
    assert add_one(41) == 42
    (run,) = registry.runs(kind="task")
    assert run.parent_flow_run_id is None
    assert run.state_names == ["Pending", "Running", "Completed"]
    assert list(registry.runs(kind="flow")) == []


@pytest.mark.anyio
async def test_async_task_outside_flow():
    """An async task awaited outside a flow runs on the current backend and is recorded."""

    @task
    async def async_add(x):
        await anyio.lowlevel.checkpoint()
        return x + 1

    assert await async_add(1) == 2


def test_task_submit_outside_flow(registry):
    """`.submit()` outside a flow runs on the default runner and gives a working future."""
    future = add_one.submit(1)
    assert future.result(timeout=10) == 2
    assert registry.get(future.task_run_id).parent_flow_run_id is None


# -- submit: dependencies ---------------------------------------------------------------------


def test_wait_for_orders_runs():
    """A downstream with wait_for starts only after its upstream finished."""
    events = []
    lock = threading.Lock()

    @task
    def upstream():
        time.sleep(0.2)
        with lock:
            events.append("upstream-end")

    @task
    def downstream():
        with lock:
            events.append("downstream-start")

    @flow
    def ordered():
        up = upstream.submit()
        down = downstream.submit(wait_for=[up])
        down.wait()

    ordered()
    assert events == ["upstream-end", "downstream-start"]


@pytest.mark.anyio
async def test_wait_for_orders_async_runs():
    """In an async flow, an async downstream waits for its async upstream."""
    events = []

    @task
    async def upstream():
        await anyio.sleep(0.1)
        events.append("upstream-end")

    @task
    async def downstream():
        events.append("downstream-start")

    @flow
    async def ordered():
        down = downstream.submit(wait_for=[upstream.submit()])
        await down

    await ordered()
    assert events == ["upstream-end", "downstream-start"]


def test_upstream_failure_blocks_downstream(registry):
    """A failed upstream means the downstream never runs and ends Failed 'NotReady'."""
    ran = []

    @task
    def downstream(value):
        ran.append(value)

    @flow
    def chain():
        up = always_fails_task.submit()
        return downstream.submit(up)

    state = chain(return_state=True)
    assert state.is_failed()
    assert ran == []
    (down,) = (r for r in registry.runs(kind="task") if r.spec_name == "downstream")
    assert down.state.type is StateType.FAILED
    assert down.state.name == "NotReady"
    assert "Running" not in down.state_names


def test_upstream_failure_in_wait_for_gives_upstream_task_error():
    """With wait_for, the NotReady state holds an UpstreamTaskError."""

    @flow
    def chain():
        up = always_fails_task.submit()
        down = always_succeeds_task.submit(wait_for=[up])
        down.wait()
        return {"state": down.state}

    state = chain()["state"]
    assert state.name == "NotReady"
    assert isinstance(state.data, UpstreamTaskError)
    with pytest.raises(UpstreamTaskError):
        state.result()


def test_allow_failure_runs_downstream_with_exception():
    """allow_failure(fut) lets the downstream run and receive the upstream's exception."""

    @task
    def inspect_value(value):
        return value

    @flow
    def tolerant():
        up = always_fails_task.submit()
        return inspect_value.submit(allow_failure(up)).result()

    received = tolerant()
    assert isinstance(received, ValueError)
    assert str(received) == "I fail successfully"


def test_allow_failure_in_wait_for():
    """allow_failure inside wait_for lets the downstream run after a failure."""

    @flow
    def tolerant():
        up = always_fails_task.submit()
        return always_succeeds_task.submit(wait_for=[allow_failure(up)]).result()

    assert tolerant() == "success"


def test_quote_passes_future_unresolved():
    """quote(fut) hands the task the future object itself, not its result."""
    received = []

    @task
    def keep(value):
        received.append(value)
        return isinstance(value, TaskRunFuture)

    @flow
    def quoting():
        up = add_one.submit(1)
        return keep.submit(quote(up)).result(), up.task_run_id

    is_future, up_id = quoting()
    assert is_future is True
    assert [f.task_run_id for f in received] == [up_id]


def test_futures_nested_in_containers_are_resolved():
    """Futures inside list, tuple and dict arguments are replaced by their results."""

    @task
    def combine(items, mapping, pair):
        return items, mapping, pair

    @flow
    def nested():
        a, b, c = add_one.submit(1), add_one.submit(2), add_one.submit(3)
        return combine.submit([a, b], {"k": c, "deep": [a]}, (b, 5)).result()

    assert nested() == ([2, 3], {"k": 4, "deep": [2]}, (3, 5))


def test_inline_call_resolves_future_argument():
    """Calling a task inline with a future argument passes the future's result."""

    @flow
    def inline():
        return add_one(add_one.submit(1))

    assert inline() == 3


# -- map --------------------------------------------------------------------------------------


@task
def add(x, y):
    return x + y


def test_map_with_unmapped():
    """map iterates the iterable argument and passes unmapped(...) to every call."""

    @flow
    def mapping():
        return add.map([1, 2, 3], unmapped(10)).result()

    assert mapping() == [11, 12, 13]


def test_unmapped_list_is_not_iterated():
    """unmapped(list) passes the whole list to each call."""

    @task
    def length(x, items):
        return x + len(items)

    @flow
    def mapping():
        return length.map([0, 100], unmapped([1, 2, 3])).result()

    assert mapping() == [3, 103]


def test_map_zips_two_iterables_and_records_runs(registry):
    """Two equal-length iterables are zipped; each element is its own task run."""

    @flow
    def mapping():
        return add.map([1, 2], [10, 20]).result()

    assert mapping() == [11, 22]
    assert sorted(r.name for r in registry.runs(kind="task")) == ["add-0", "add-1"]


def test_map_over_future_result():
    """map over a future whose result is a list maps over that list."""

    @task
    def make():
        return [1, 2, 3]

    @flow
    def mapping():
        return add.map(make.submit(), unmapped(1)).result()

    assert mapping() == [2, 3, 4]


def test_map_length_mismatch():
    """Iterables of different lengths raise MappingLengthMismatch naming them and their sizes."""

    @flow
    def mapping():
        add.map([1, 2], [1, 2, 3])

    with pytest.raises(MappingLengthMismatch) as info:
        mapping()
    message = str(info.value)
    assert "x=2" in message and "y=3" in message
    assert "unmapped" in message


def test_map_missing_iterable():
    """map with no iterable argument raises MappingMissingIterable; strings don't count."""

    @flow
    def mapping():
        add.map("ab", unmapped([1]))

    with pytest.raises(MappingMissingIterable, match="add"):
        mapping()


@pytest.mark.anyio
async def test_map_async_task_in_async_flow():
    """map of an async task inside an async flow gives awaitable futures (both backends)."""

    @task
    async def slow_double(x):
        await anyio.sleep(0.01)
        return x * 2

    @flow
    async def mapping():
        futures = slow_double.map(range(5))
        return [await f for f in futures]

    assert await mapping() == [0, 2, 4, 6, 8]


def test_map_failure_isolated_to_one_element():
    """One failing mapped element fails only its own run; FutureList.result can skip raising."""

    @task
    def inverse(x):
        return 1 / x

    @flow
    def mapping():
        return inverse.map([1, 0, 2]).result(raise_on_failure=False)

    results = mapping()
    assert results[0] == 1.0 and results[2] == 0.5
    assert isinstance(results[1], ZeroDivisionError)


def test_submit_returns_task_run_future():
    """submit returns a TaskRunFuture inside a flow."""

    @flow
    def f():
        future = add_one.submit(1)
        return isinstance(future, TaskRunFuture), future.result()

    assert f() == (True, 2)


def test_progress_summary_replaces_per_task_lines_past_the_threshold(monkeypatch, logs, registry):
    """Past ASYNCFLOW_TASK_LOG_THRESHOLD task runs, per-task lines drop to DEBUG and a
    progress summary (counts by state, rate) is logged at INFO; every run is still recorded."""
    import logging

    from asyncflow.settings import reload_settings

    monkeypatch.setenv("ASYNCFLOW_TASK_LOG_THRESHOLD", "5")
    reload_settings()
    root = logging.getLogger("asyncflow")
    level = root.level
    root.setLevel(logging.DEBUG)  # so the demoted per-task lines are visible to the test
    try:

        @task
        def tick(i: int) -> int:
            if i == 7:
                raise ValueError("seven")
            return i

        @flow
        def many() -> int:
            states = [tick(i, return_state=True) for i in range(20)]
            return sum(1 for s in states if s.is_completed())

        assert many() == 19
    finally:
        root.setLevel(level)
        monkeypatch.undo()
        reload_settings()

    info = [r for r in logs.records if r.levelno >= logging.INFO]
    created_info = [r for r in info if r.getMessage().startswith("Created task run")]
    assert len(created_info) == 5
    created_debug = [
        r
        for r in logs.records
        if r.levelno == logging.DEBUG and r.getMessage().startswith("Created task run")
    ]
    assert len(created_debug) == 15
    progress = [r.getMessage() for r in info if r.getMessage().startswith("Progress:")]
    assert progress, "no progress summary was logged"
    assert "20 task runs started, 20 finished (19 completed, 1 failed)" in progress[-1]
    assert "task runs/s" in progress[-1]
    tick_runs = [r for r in registry.runs(kind="task") if r.spec_name == "tick"]
    assert len(tick_runs) == 20
    assert all(len(r.states) == 3 for r in tick_runs)
