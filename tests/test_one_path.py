"""Every kind of run enters through one preparation and passes the same lifecycle hook points
(issue 12): `before_body`, `after_outcome`, `before_terminal`, in that order, from the same
engine methods, for flows and tasks, sync and async, plain and generator, called or submitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asyncflow import flow, task
from asyncflow.engine.lifecycle import RunHook
from asyncflow.exceptions import UpstreamTaskError
from asyncflow.states import Completed, State, StateType


class Recorder(RunHook):
    """Records each point it passes; optionally replaces the state at one of them."""

    def __init__(self, replace_at: str | None = None, replacement: Any = None) -> None:
        self.points: list[tuple[str, str]] = []
        self.replace_at = replace_at
        self.replacement = replacement

    def before_body(self, run: Any) -> State[Any] | None:
        self.points.append(("before_body", run.label_word))
        return self.replacement if self.replace_at == "before_body" else None

    def after_outcome(self, run: Any, state: State[Any]) -> State[Any]:
        self.points.append(("after_outcome", state.type.value))
        return self.replacement if self.replace_at == "after_outcome" else state

    def before_terminal(self, run: Any, state: State[Any]) -> State[Any]:
        self.points.append(("before_terminal", state.type.value))
        return self.replacement if self.replace_at == "before_terminal" else state


def hooked(spec: Any, hook: RunHook) -> Any:
    spec.lifecycle = (hook,)
    return spec


ORDER = ["before_body", "after_outcome", "before_terminal"]


def _points(hook: Recorder) -> list[str]:
    return [name for name, _ in hook.points]


# -- the eight kinds --------------------------------------------------------------------------
def test_sync_flow_and_task_pass_every_point_in_order() -> None:
    flow_hook, task_hook = Recorder(), Recorder()

    @task
    def double(x: int) -> int:
        return 2 * x

    hooked(double, task_hook)

    @flow
    def plain(x: int) -> int:
        return double(x) + double.submit(x).result()

    hooked(plain, flow_hook)
    assert plain(2) == 8
    assert _points(flow_hook) == ORDER
    assert _points(task_hook) == ORDER * 2


def test_generator_flow_and_task_pass_every_point_in_order() -> None:
    flow_hook, task_hook = Recorder(), Recorder()

    @task
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    hooked(count, task_hook)

    @flow
    def numbers() -> Iterator[int]:
        yield from count(3)

    hooked(numbers, flow_hook)
    assert list(numbers()) == [0, 1, 2]
    assert _points(flow_hook) == ORDER
    assert _points(task_hook) == ORDER


@pytest.mark.anyio
async def test_async_flow_and_task_pass_every_point_in_order() -> None:
    flow_hook, task_hook = Recorder(), Recorder()

    @task
    async def double(x: int) -> int:
        return 2 * x

    hooked(double, task_hook)

    @flow
    async def plain(x: int) -> int:
        return await double(x) + await double.submit(x)

    hooked(plain, flow_hook)
    assert await plain(2) == 8
    assert _points(flow_hook) == ORDER
    assert _points(task_hook) == ORDER * 2


@pytest.mark.anyio
async def test_async_generator_flow_and_task_pass_every_point_in_order() -> None:
    flow_hook, task_hook = Recorder(), Recorder()

    @task
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    hooked(count, task_hook)

    @flow
    async def numbers() -> AsyncIterator[int]:
        async for i in count(3):
            yield i

    hooked(numbers, flow_hook)
    assert [i async for i in numbers()] == [0, 1, 2]
    assert _points(flow_hook) == ORDER
    assert _points(task_hook) == ORDER


def test_retries_pass_before_body_and_after_outcome_once_per_attempt() -> None:
    hook = Recorder()
    attempts = []

    @task(retries=2)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "ok"

    hooked(flaky, hook)
    assert flaky() == "ok"
    assert hook.points == [
        ("before_body", "Task"),
        ("after_outcome", "FAILED"),
        ("before_body", "Task"),
        ("after_outcome", "FAILED"),
        ("before_body", "Task"),
        ("after_outcome", "COMPLETED"),
        ("before_terminal", "COMPLETED"),
    ]


# -- replacing states at each point -----------------------------------------------------------
def test_before_body_state_stands_for_the_body(registry: Any) -> None:
    """What a cache hit will do: the body is not called, the run ends with the hook's state."""
    called = []
    hook = Recorder("before_body", Completed(data=42, name="Cached"))

    @task
    def expensive() -> int:
        called.append(1)
        return 0

    hooked(expensive, hook)

    @flow
    def uses_it() -> int:
        return expensive()

    assert uses_it() == 42
    assert called == []
    (run,) = registry.runs(kind="task")
    assert run.state.name == "Cached"
    assert [s.type for s in run.states] == [
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]


@pytest.mark.anyio
async def test_before_body_state_stands_for_an_async_body() -> None:
    called = []

    @task
    async def expensive() -> int:
        called.append(1)
        return 0

    hooked(expensive, Recorder("before_body", Completed(data=7)))

    @flow
    async def uses_it() -> int:
        return await expensive()

    assert await uses_it() == 7
    assert called == []


def test_after_outcome_and_before_terminal_replace_the_state() -> None:
    @task
    def one() -> int:
        return 1

    @flow
    def run_both() -> tuple[int, int]:
        return (
            hooked(one.with_options(name="a"), Recorder("after_outcome", Completed(data=10)))(),
            hooked(one.with_options(name="b"), Recorder("before_terminal", Completed(data=20)))(),
        )

    assert run_both() == (10, 20)


def test_specs_without_hooks_share_an_empty_lifecycle() -> None:
    @task
    def plain() -> None: ...

    assert plain.lifecycle == ()


# -- one preparation: registration when a run starts, wait_for on subflows ---------------------
def test_a_generator_never_iterated_is_no_run(registry: Any) -> None:
    """Registered when iteration starts, as an async run is when its coroutine starts."""

    @flow
    def numbers() -> Iterator[int]:
        yield 1

    gen = numbers()
    assert list(registry.runs()) == []
    assert list(gen) == [1]
    assert len(list(registry.runs(kind="flow"))) == 1


@pytest.mark.anyio
async def test_an_async_generator_never_iterated_is_no_run(registry: Any) -> None:
    @flow
    async def numbers() -> AsyncIterator[int]:
        yield 1

    agen = numbers()
    assert list(registry.runs()) == []
    assert [i async for i in agen] == [1]
    assert len(list(registry.runs(kind="flow"))) == 1


def test_subflow_waits_for_wait_for(registry: Any) -> None:
    order: list[str] = []

    @task
    def first() -> None:
        import time

        time.sleep(0.1)
        order.append("first")

    @flow
    def child() -> None:
        order.append("child")

    @flow
    def parent() -> None:
        child(wait_for=[first.submit()])

    parent()
    assert order == ["first", "child"]


def test_subflow_with_a_failed_upstream_ends_not_ready(registry: Any) -> None:
    @task
    def broken() -> int:
        raise ValueError("no")

    @flow
    def child(x: int) -> int:
        return x

    @flow
    def parent() -> str:
        future = broken.submit()
        future.wait()
        with pytest.raises(UpstreamTaskError):
            child(future)
        return "went on"

    assert parent() == "went on"
    (run,) = [r for r in registry.runs(kind="flow") if r.spec_name == "child"]
    assert run.state.type is StateType.FAILED and run.state.name == "NotReady"


@pytest.mark.anyio
async def test_async_subflow_takes_a_pending_future_from_its_loop() -> None:
    """The future is awaited before the subflow starts, not blocked on (which would
    deadlock the loop and raised FutureUsageError)."""

    @task
    async def slow() -> int:
        import anyio

        await anyio.sleep(0.05)
        return 5

    @flow
    async def child(x: int) -> int:
        return x + 1

    @flow
    async def parent() -> int:
        return await child(slow.submit())

    assert await parent() == 6
