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
