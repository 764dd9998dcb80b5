"""Futures: results, waiting, timeouts, awaiting, wait/as_completed and flow final states."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from asyncflow import as_completed, flow, task, wait
from asyncflow.exceptions import FutureUsageError
from asyncflow.futures import as_completed_async, wait_async
from asyncflow.states import StateType


@task
def sleepy(seconds: float, value=None):
    time.sleep(seconds)
    return value


@task
async def asleep(seconds: float, value=None):
    await anyio.sleep(seconds)
    return value


@task
def explode():
    raise ValueError("boom")


# -- sync futures -----------------------------------------------------------------------------


def test_result_timeout_too_short_raises():
    """result(timeout=...) raises TimeoutError when the run is slower; later it returns."""

    @flow
    def f():
        future = sleepy.submit(0.5, "late")
        with pytest.raises(TimeoutError):
            future.result(timeout=0.01)
        return future.result(timeout=10)

    assert f() == "late"


def test_wait_with_timeout_returns_without_result():
    """wait(timeout) returns when the time is up; done() tells whether the run finished."""

    @flow
    def f():
        future = sleepy.submit(0.5)
        future.wait(0.01)
        early = future.done()
        future.wait()
        return early, future.done()

    assert f() == (False, True)


def test_state_progresses_to_completed():
    """future.state is non-final while running and the final state afterwards."""
    started = threading.Event()
    release = threading.Event()

    @task
    def gated():
        started.set()
        release.wait(10)
        return 7

    @flow
    def f():
        future = gated.submit()
        assert started.wait(10)
        running = future.state
        release.set()
        future.wait()
        return running.type, future.state.type, future.state.result()

    assert f() == (StateType.RUNNING, StateType.COMPLETED, 7)


def test_task_run_id_matches_registry(registry):
    """future.task_run_id is the id of the recorded task run, which has the final state."""

    @flow
    def f():
        future = sleepy.submit(0, "v")
        future.wait()
        return future.task_run_id

    run_id = f()
    record = registry.get(run_id)
    assert record.kind == "task"
    assert record.spec_name == "sleepy"
    assert record.state.is_completed()


def test_failed_future_result_raises_or_returns_exception():
    """result() re-raises the task's exception; raise_on_failure=False returns it."""

    @flow
    def f():
        future = explode.submit()
        with pytest.raises(ValueError, match="boom"):
            future.result()
        return future.result(raise_on_failure=False), future.state.is_failed()

    exc, failed = f()
    assert isinstance(exc, ValueError) and failed


def test_wait_function_splits_done_and_not_done():
    """asyncflow.wait returns (done, not_done) honouring its timeout."""

    @flow
    def f():
        fast = sleepy.submit(0)
        slow = sleepy.submit(1.0)
        done, not_done = wait([fast, slow], timeout=0.5)
        all_done, none_left = wait([fast, slow])
        return (fast in done, slow in not_done, len(all_done), len(none_left))

    assert f() == (True, True, 2, 0)


def test_as_completed_yields_in_finish_order():
    """as_completed yields the fastest future first and every future once."""

    @flow
    def f():
        futures = [sleepy.submit(0.6, "slow"), sleepy.submit(0, "fast")]
        return [fut.result() for fut in as_completed(futures)]

    assert f() == ["fast", "slow"]


def test_as_completed_timeout():
    """as_completed raises TimeoutError when futures remain after the timeout."""

    @flow
    def f():
        futures = [sleepy.submit(1.0)]
        with pytest.raises(TimeoutError):
            list(as_completed(futures, timeout=0.05))

    f()


# -- async futures ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_await_future_of_async_task():
    """`await fut` gives an async task's result inside an async flow."""

    @flow
    async def f():
        return await asleep.submit(0.01, "value")

    assert await f() == "value"


@pytest.mark.anyio
async def test_await_future_of_sync_task_from_async_flow():
    """A sync task submitted from an async flow runs in a thread and can be awaited."""

    @task
    def where():
        return threading.get_ident()

    @flow
    async def f():
        return await where.submit(), threading.get_ident()

    worker, loop = await f()
    assert worker != loop


@pytest.mark.anyio
async def test_await_failed_future_raises():
    """Awaiting a failed task's future raises the task's exception."""

    @task
    async def async_explode():
        raise KeyError("nope")

    @flow
    async def f():
        with pytest.raises(KeyError):
            await async_explode.submit()
        return "handled"

    assert await f() == "handled"


@pytest.mark.anyio
async def test_result_async_timeout():
    """result_async(timeout) raises TimeoutError for a slow async task."""

    @flow
    async def f():
        future = asleep.submit(0.5, 1)
        with pytest.raises(TimeoutError):
            await future.result_async(timeout=0.01)
        return await future.result_async()

    assert await f() == 1


@pytest.mark.anyio
async def test_async_submissions_run_concurrently():
    """20 async tasks sleeping 0.1 s each finish well under their 2 s sequential time."""

    @flow
    async def f():
        futures = [asleep.submit(0.1, i) for i in range(20)]
        return [await fut for fut in futures]

    start = time.monotonic()
    assert await f() == list(range(20))
    assert time.monotonic() - start < 1.5


@pytest.mark.anyio
async def test_as_completed_async_and_wait_async():
    """as_completed_async yields in finish order; wait_async returns (done, not_done)."""

    @flow
    async def f():
        futures = [asleep.submit(0.5, "slow"), asleep.submit(0, "fast")]
        order = [await fut async for fut in as_completed_async(futures)]
        pending = asleep.submit(1.0)
        done, not_done = await wait_async([futures[0], pending], timeout=0.05)
        return order, futures[0] in done, pending in not_done

    assert await f() == (["fast", "slow"], True, True)


@pytest.mark.anyio
async def test_as_completed_async_with_thread_futures():
    """as_completed_async also works for futures finished on worker threads."""

    @flow
    async def f():
        futures = [sleepy.submit(0.4, "slow"), sleepy.submit(0, "fast")]
        return [fut.state.result() async for fut in as_completed_async(futures)]

    assert await f() == ["fast", "slow"]


@pytest.mark.anyio
async def test_sync_result_on_async_future_in_loop_thread_raises():
    """Blocking .result() on an async task's future from the loop thread raises, not hangs."""

    @flow
    async def f():
        future = asleep.submit(0.05, 1)
        with pytest.raises(FutureUsageError):
            future.result()
        return await future

    with anyio.fail_after(10):
        assert await f() == 1


# -- final state from futures / structured concurrency ----------------------------------------


def test_flow_returning_futures_list_completed():
    """A flow returning a list of completed futures is Completed('All states completed.')."""

    @flow
    def f():
        return [sleepy.submit(0, 1), sleepy.submit(0, 2)]

    state = f(return_state=True)
    assert state.is_completed()
    assert state.message == "All states completed."


def test_flow_returning_futures_list_with_failure_fails():
    """One failed future among the returned ones fails the flow with '1/2 states failed.'."""

    @flow
    def f():
        return [sleepy.submit(0, 1), explode.submit()]

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."
    with pytest.raises(ValueError, match="boom"):
        state.result()


def test_flow_returning_single_failed_future_fails():
    """A flow returning one failed future ends Failed."""

    @flow
    def f():
        return explode.submit()

    assert f(return_state=True).is_failed()


def test_sync_flow_waits_for_unawaited_submission():
    """A sync flow does not finish while a task it submitted still runs."""
    kept = []

    @flow
    def f():
        kept.append(sleepy.submit(0.3, "done"))

    state = f(return_state=True)
    assert state.is_completed()
    assert kept[0].done()
    assert kept[0].state.is_completed()


@pytest.mark.anyio
async def test_async_flow_waits_for_unawaited_async_submission():
    """An async flow does not finish while an async task it submitted still runs."""
    kept = []

    @flow
    async def f():
        kept.append(asleep.submit(0.2, "done"))

    await f()
    assert kept[0].done()
    assert kept[0].state.result() == "done"


@pytest.mark.anyio
async def test_async_flow_waits_for_unawaited_thread_submission():
    """An async flow also waits for sync tasks it submitted to the thread pool."""
    kept = []

    @flow
    async def f():
        kept.append(sleepy.submit(0.2, "done"))

    await f()
    assert kept[0].done()


def test_future_done_callback_and_repr():
    """add_done_callback fires once with the future; done futures call back at once."""
    calls = []

    @flow
    def f():
        future = sleepy.submit(0.05, 3)
        future.add_done_callback(calls.append)
        future.wait()
        future.add_done_callback(calls.append)
        return future

    f()
    assert len(calls) == 2
    assert calls[0] is calls[1]
    assert "task_run_id" in repr(calls[0])
