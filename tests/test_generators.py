"""Generator flows and tasks go through the whole run lifecycle (issue 12): timeouts,
cancellation, children waited for, task runners shut down, inputs resolved, wait_for."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from conftest import untraced

from asyncflow import cancel_run, flow, runtime, task
from asyncflow.exceptions import CancelledRun, FlowRunTimeoutError, UpstreamTaskError
from asyncflow.states import StateType


def _flow_state(registry: Any, name: str) -> Any:
    (run,) = [r for r in registry.runs(kind="flow") if r.spec_name == name]
    return run.state


def test_sync_generator_flow_times_out(registry: Any) -> None:
    """timeout_seconds was ignored for generators."""

    @flow(timeout_seconds=0.3)
    def slow_numbers() -> Iterator[int]:
        for i in range(10):
            time.sleep(0.1)
            yield i

    got: list[int] = []
    with pytest.raises(FlowRunTimeoutError):
        for value in slow_numbers():
            got.append(value)
    assert 1 <= len(got) < 10
    state = _flow_state(registry, "slow-numbers")
    assert state.type is StateType.FAILED and state.name == "TimedOut"


@task
def pause(i: int) -> int:
    time.sleep(0.2)
    return i


def test_sync_generator_flow_waits_for_its_task_runs_and_shuts_its_runner(
    registry: Any,
) -> None:
    """It ended Completed while its submitted runs still ran, and left pool threads alive."""
    baseline = threading.active_count()

    @flow
    def submits() -> Iterator[int]:
        for i in range(3):
            pause.submit(i)
            yield i

    for _ in range(5):
        assert list(submits()) == [0, 1, 2]
    tasks = list(registry.runs(kind="task"))
    assert len(tasks) == 15 and all(t.state.type is StateType.COMPLETED for t in tasks)
    for run in registry.runs(kind="flow"):
        flow_end = run.state.timestamp
        children = registry.children(run.id)
        assert all(c.state.timestamp <= flow_end for c in children)
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline:
        assert time.monotonic() < deadline, threading.enumerate()
        time.sleep(0.02)


def test_cancelled_sync_generator_flow_raises_cancelled_run(registry: Any) -> None:
    ids: list[uuid.UUID] = []

    @flow
    def endless() -> Iterator[int]:
        ids.append(runtime.flow_run.id)
        i = 0
        while True:
            yield i
            i += 1

    with pytest.raises(CancelledRun):
        for value in endless():
            if value == 3:
                cancel_run(ids[0])
    assert _flow_state(registry, "endless").type is StateType.CANCELLED


@task
def numbers(n: int) -> Iterator[int]:
    yield from range(n)


@task
def three() -> int:
    return 3


def test_sync_generator_task_gets_the_result_of_a_future() -> None:
    """It received the future itself."""

    @flow
    def uses() -> list[int]:
        future = three.submit()
        return list(numbers(future))

    assert uses() == [0, 1, 2]


@task
def boom() -> int:
    raise ValueError("upstream broke")


def test_sync_generator_task_honours_wait_for() -> None:
    """wait_for was dropped: the generator ran before (or despite) its upstream."""
    order: list[str] = []

    @task
    def first() -> None:
        time.sleep(0.2)
        order.append("first")

    @task
    def gen() -> Iterator[int]:
        order.append("gen")
        yield 1

    @flow
    def uses() -> list[int]:
        upstream = first.submit()
        return list(gen(wait_for=[upstream]))

    assert uses() == [1]
    assert order == ["first", "gen"]

    @flow
    def broken() -> None:
        list(gen(wait_for=[boom.submit()]))

    with pytest.raises(UpstreamTaskError):
        broken()


@pytest.mark.anyio
async def test_async_generator_flow_times_out(registry: Any) -> None:
    @flow(timeout_seconds=0.3)
    async def slow_numbers() -> AsyncIterator[int]:
        for i in range(10):
            await anyio.sleep(0.1)
            yield i

    got: list[int] = []
    with pytest.raises(FlowRunTimeoutError):
        async for value in slow_numbers():
            got.append(value)
    assert 1 <= len(got) < 10
    state = _flow_state(registry, "slow-numbers")
    assert state.type is StateType.FAILED and state.name == "TimedOut"


@task
async def on_this_loop(i: int) -> str:
    import sniffio

    await anyio.sleep(0.01)
    return f"{i}:{sniffio.current_async_library()}"


@pytest.mark.anyio
async def test_async_generator_flow_submits_on_the_callers_loop(anyio_backend: str) -> None:
    """Its .submit() went to the kernel loop (asyncio) even under trio."""

    @flow
    async def submits() -> AsyncIterator[str]:
        for i in range(3):
            future = on_this_loop.submit(i)
            yield await future

    got = [value async for value in submits()]
    assert got == [f"{i}:{anyio_backend}" for i in range(3)]


@pytest.mark.anyio
async def test_async_generator_flow_cancelled(registry: Any) -> None:
    ids: list[uuid.UUID] = []

    @flow
    async def endless() -> AsyncIterator[int]:
        ids.append(runtime.flow_run.id)
        i = 0
        while True:
            await anyio.sleep(0.01)
            yield i
            i += 1

    with pytest.raises(CancelledRun):
        async for value in endless():
            if value == 3:
                cancel_run(ids[0])
    assert _flow_state(registry, "endless").type is StateType.CANCELLED


# -- what a second read of the generator drivers found ---------------------------------------
@task
def sleeps(seconds: float) -> str:
    for _ in range(int(seconds / 0.01)):
        time.sleep(0.01)
    return "slept"


@pytest.mark.anyio
async def test_consumer_cancelled_mid_async_generator_flow_ends_the_run(registry: Any) -> None:
    """The consumer's cancel scope fired while the flow settled its children: the run stayed
    Running for ever."""

    @flow
    async def submits_then_yields() -> AsyncIterator[int]:
        sleeps.submit(0.3)
        yield 1

    with anyio.move_on_after(0.1):  # fires while the flow waits for its child at the end
        async for _ in submits_then_yields():
            pass
    assert _flow_state(registry, "submits-then-yields").is_final()


@untraced  # its child never reaches a checkpoint, and a tracer rules out the interrupt
@pytest.mark.anyio
async def test_async_generator_flow_timeout_cancels_its_thread_pool_children(
    registry: Any,
) -> None:
    @flow(timeout_seconds=0.3)
    async def slow_child() -> AsyncIterator[int]:
        sleeps.submit(3.0)
        await anyio.sleep(5)
        yield 1

    started = time.monotonic()
    with pytest.raises(FlowRunTimeoutError):
        async for _ in slow_child():
            pass
    assert time.monotonic() - started < 2.5
    (child,) = list(registry.runs(kind="task"))
    assert child.state.type is StateType.CANCELLED


@pytest.mark.anyio
async def test_async_generator_timeout_holds_when_steps_never_await(registry: Any) -> None:
    @flow(timeout_seconds=0.3)
    async def instant_items() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    got: list[int] = []
    with pytest.raises(FlowRunTimeoutError):
        async for value in instant_items():
            got.append(value)
            await anyio.sleep(0.1)  # the consumer's time is the run's
    assert len(got) < 10
    assert _flow_state(registry, "instant-items").name == "TimedOut"


def test_generator_flow_past_its_deadline_at_the_end_is_timed_out(registry: Any) -> None:
    """It waited for a child past its deadline, then ended Completed."""

    @flow(timeout_seconds=0.3)
    def waits_long() -> Iterator[int]:
        sleeps.submit(0.8)
        yield 1

    with pytest.raises(FlowRunTimeoutError):
        list(waits_long())
    assert _flow_state(registry, "waits-long").name == "TimedOut"


def test_cancel_then_break_ends_cancelled(registry: Any) -> None:
    ids: list[uuid.UUID] = []

    @flow
    def numbers_flow() -> Iterator[int]:
        ids.append(runtime.flow_run.id)
        yield from range(100)

    for value in numbers_flow():
        if value == 2:
            cancel_run(ids[0])
            break
    assert _flow_state(registry, "numbers-flow").type is StateType.CANCELLED


def test_deadline_entries_of_finished_steps_do_not_pile_up() -> None:
    """One timer entry per step stayed until the run's deadline (1M steps: 476 MB)."""
    from asyncflow.engine import interrupts

    @flow(timeout_seconds=3600)
    def many() -> Iterator[int]:
        yield from range(20_000)

    assert sum(many()) == sum(range(20_000))
    assert len(interrupts._heap) < 5_000


@task
async def async_part(i: int) -> int:
    return i


def test_sync_generator_flow_consumed_in_another_thread() -> None:
    """Its async task calls returned coroutines there (never awaited, no run at all)."""
    from concurrent.futures import ThreadPoolExecutor

    @flow
    def yields_results() -> Iterator[int]:
        for i in range(2):
            yield async_part(i)

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(list, yields_results()).result(timeout=30) == [0, 1]
