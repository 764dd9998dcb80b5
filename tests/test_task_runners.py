"""Task runners: thread pool bounds and long dependency chains, per-flow runners, processes."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import ClassVar

import pytest
from _process_tasks import cpu_bound, echo, fail_in_worker

from asyncflow import StateType, flow, task
from asyncflow.engine import kernel
from asyncflow.exceptions import InvalidDefinitionError, SerializationError
from asyncflow.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner


@task
def inc(x: int) -> int:
    return x + 1


def _run_in_thread(fn, timeout: float):
    """Run fn() in a daemon thread; fail (instead of hanging) if it does not finish in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not finish within {timeout} s (deadlock?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- thread pool ------------------------------------------------------------------------------


def test_ten_thousand_chained_submissions_do_not_deadlock(registry):
    """10,000 sync submissions, each taking the previous future, complete on 4 workers."""

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def chain(n: int) -> int:
        future = inc.submit(0)
        for _ in range(n - 1):
            future = inc.submit(future)
        return future.result()

    start = time.monotonic()
    assert _run_in_thread(lambda: chain(10_000), timeout=60) == 10_000
    assert time.monotonic() - start < 20
    runs = list(registry.runs(kind="task"))
    assert len(runs) == 10_000
    assert all(r.state.is_completed() for r in runs[::997])


def test_chained_wait_for_on_one_worker():
    """A wait_for chain never blocks the single worker waiting on an upstream."""
    order = []

    @task
    def step(i):
        order.append(i)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def chain():
        future = step.submit(0)
        for i in range(1, 300):
            future = step.submit(i, wait_for=[future])
        future.wait()

    _run_in_thread(chain, timeout=30)
    assert order == list(range(300))


def test_max_workers_one_serialises_tasks():
    """With max_workers=1 every submitted task runs on the same thread, one at a time."""
    active = []
    peak = []
    threads = set()
    lock = threading.Lock()

    @task
    def work():
        with lock:
            active.append(1)
            peak.append(len(active))
            threads.add(threading.get_ident())
        time.sleep(0.01)
        with lock:
            active.pop()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        for _ in range(8):
            work.submit()

    f()
    assert max(peak) == 1
    assert len(threads) == 1


def test_max_workers_four_runs_four_at_once():
    """With max_workers=4, four tasks meeting at a barrier all run concurrently."""
    barrier = threading.Barrier(4, timeout=10)

    @task
    def meet(i):
        return barrier.wait()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def f():
        return sorted(meet.map(range(4)).result())

    assert f() == [0, 1, 2, 3]


def test_default_runner_is_a_thread_pool():
    """Without task_runner=, submitted sync tasks run on worker threads, not the flow's."""

    @task
    def where():
        return threading.get_ident()

    @flow
    def f():
        return where.submit().result(), threading.get_ident()

    worker, flow_thread = f()
    assert worker != flow_thread


class RecordingRunner(ThreadPoolTaskRunner):
    """A thread pool that remembers every started instance and whether it was shut down."""

    started: ClassVar[list[RecordingRunner]] = []

    def start(self) -> None:
        RecordingRunner.started.append(self)
        self.was_shut_down = False
        super().start()

    def shutdown(self, wait: bool = True) -> None:
        self.was_shut_down = True
        super().shutdown(wait)


def test_per_flow_runner_is_a_fresh_copy_shut_down_after():
    """The flow's task_runner is duplicated per run, started on submit, shut down at the end."""
    RecordingRunner.started.clear()
    template = RecordingRunner(max_workers=2)

    @flow(task_runner=template)
    def f():
        return inc.submit(1).result()

    assert f() == 2
    assert f() == 2
    first, second = RecordingRunner.started
    assert first is not second
    assert all(template is not r for r in (first, second))  # equal (same config), not the same
    assert first.max_workers == 2
    assert first.was_shut_down and second.was_shut_down


def test_runner_given_as_class():
    """task_runner may be a TaskRunner class; a non-runner is rejected at decoration."""
    RecordingRunner.started.clear()

    @flow(task_runner=RecordingRunner)
    def f():
        return inc.submit(1).result()

    assert f() == 2
    assert len(RecordingRunner.started) == 1
    with pytest.raises(InvalidDefinitionError):
        flow(task_runner="threads")(lambda: None)


def test_nested_flows_get_their_own_runner():
    """A nested flow run uses its own runner instance, shut down when the nested run ends."""
    RecordingRunner.started.clear()
    seen = {}

    @flow(task_runner=RecordingRunner(max_workers=2))
    def child():
        result = inc.submit(10).result()
        seen["child_runner"] = RecordingRunner.started[-1]
        return result

    @flow(task_runner=RecordingRunner(max_workers=2))
    def parent():
        first = inc.submit(1).result()
        nested = child()
        assert seen["child_runner"].was_shut_down
        assert not RecordingRunner.started[0].was_shut_down
        late = inc.submit(first).result()  # the parent's runner still works
        return first, nested, late

    assert parent() == (2, 11, 3)
    parent_runner, child_runner = RecordingRunner.started
    assert parent_runner is not child_runner
    assert parent_runner.was_shut_down


def test_thread_pool_runner_used_directly():
    """A runner runs the engine's work callables; after shutdown it refuses new work."""
    done = threading.Event()
    with ThreadPoolTaskRunner(max_workers=2) as runner:
        runner.submit_work(done.set)
        assert done.wait(10)
    with pytest.raises(RuntimeError):
        runner.submit_work(lambda: None)
    assert isinstance(runner, TaskRunner)
    assert isinstance(runner.duplicate(), ThreadPoolTaskRunner)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_thread_pool_rejects_bad_max_workers(bad):
    """max_workers must be a positive int."""
    with pytest.raises(ValueError, match="max_workers"):
        ThreadPoolTaskRunner(max_workers=bad)


# -- async tasks from sync flows --------------------------------------------------------------


@task
async def async_where():
    import sniffio

    return threading.get_ident(), sniffio.current_async_library()


async def _loop_thread_ident() -> int:
    return threading.get_ident()


def test_async_task_submitted_from_sync_flow_runs_on_kernel_loop():
    """An async task submitted from a sync flow runs on the kernel's event loop thread."""

    @flow
    def f():
        return async_where.submit().result(timeout=10), threading.get_ident()

    (thread, library), flow_thread = f()
    assert library == "asyncio"
    assert thread != flow_thread
    assert thread == kernel.portal().call(_loop_thread_ident)


def test_async_task_called_from_sync_flow_blocks_until_done():
    """Calling an async task inline in a sync flow returns its result, not a coroutine."""

    @flow
    def f():
        return async_where()

    _thread, library = f()
    assert library == "asyncio"


# -- process pool -----------------------------------------------------------------------------


def test_process_pool_runs_task_in_another_process(registry):
    """A module-level CPU-bound task runs in a worker process; its run is recorded here."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def crunch():
        return [f.result(timeout=60) for f in cpu_bound.map([10, 1000])]

    (pid_a, small), (pid_b, big) = crunch()
    assert small == sum(i * i for i in range(10))
    assert big == sum(i * i for i in range(1000))
    assert os.getpid() not in (pid_a, pid_b)
    runs = list(registry.runs(kind="task"))
    assert [r.state.is_completed() for r in runs] == [True, True]


def test_process_pool_unpicklable_argument_fails_with_serialization_error(registry):
    """An unpicklable argument fails the run with a SerializationError naming the task."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def send_lock():
        state_ok = echo.submit("fine").result(timeout=60)
        return state_ok, echo.submit(threading.Lock()).state, echo.submit(threading.Lock())

    state = send_lock(return_state=True)
    assert state.is_completed()
    ok, _, bad = state.result()  # the returned future stands for its final state
    assert ok == "fine"
    assert bad.is_failed()
    assert isinstance(bad.data, SerializationError)
    assert "'echo'" in str(bad.data)
    with pytest.raises(SerializationError, match="echo"):
        bad.result()


def test_process_pool_worker_exception_fails_run():
    """An exception raised in the worker process fails the task run with that exception."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f():
        return fail_in_worker.submit("from the worker").result(raise_on_failure=False)

    exc = f()
    assert isinstance(exc, ValueError)
    assert "from the worker" in str(exc)


_LOCK = threading.Lock()


def test_process_pool_unpicklable_task_fails_with_serialization_error_naming_it():
    """A task whose function cannot be pickled fails its run with an error naming the task."""

    @task
    def holds_lock(x: int) -> int:
        with _LOCK:
            return x

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f():
        return holds_lock.submit(1)

    state = f(return_state=True)
    assert state.is_failed()
    with pytest.raises(SerializationError, match="Task 'holds_lock' cannot be sent to a worker"):
        state.result()


def test_process_pool_runs_a_task_defined_inside_a_function():
    """A picklable task defined in a function travels by value (cloudpickle) and runs."""

    @task
    def square_and_pid(x: int) -> tuple[int, int]:
        return x * x, os.getpid()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f():
        return square_and_pid.submit(7).result(timeout=60)

    value, pid = f()
    assert value == 49
    assert pid != os.getpid()


# -- many threads writing at once ---------------------------------------------------------------
def test_a_transition_never_waits_for_the_registry_lock(registry):
    """A writer that finds the lock taken leaves its transition in the inbox and returns;
    the next holder (here a read) records it. Blocking there made worker pools convoy."""
    row = registry.add_run(1, "t", -1)
    with registry._lock:  # as if another thread were mid-write
        _run_in_thread(lambda: registry.add_transition(row, StateType.RUNNING, 1.0), 5)
        assert registry.transition_count == 2  # counted, though not yet in place
    assert [s.type for s in registry.history(row)] == [StateType.PENDING, StateType.RUNNING]


def test_concurrent_writers_record_every_transition_in_order(registry):
    rows = [registry.add_run(1, "t", -1) for _ in range(8)]
    types = [StateType.RUNNING, StateType.FAILED, StateType.RUNNING, StateType.COMPLETED]

    def write(row: int) -> None:
        for _ in range(500):
            for type_ in types:
                registry.add_transition(row, type_, time.time())

    threads = [threading.Thread(target=write, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.transition_count == 8 * (1 + 500 * 4)
    for row in rows:
        assert [s.type for s in registry.history(row)] == [StateType.PENDING] + types * 500


def _cyclic_garbage(fn) -> list[object]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        fn()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_finished_submissions_and_subflows_leave_no_reference_cycles(registry):
    """Each finished run is freed by reference counting alone: garbage cycles per run made
    the cyclic GC a third of `.submit()`'s cost."""

    @flow
    def child(x: int) -> int:
        return x

    @flow
    def parent(n: int) -> int:
        futures = [inc.submit(i) for i in range(n)]
        return sum(f.result() for f in futures) + sum(child(i) for i in range(n))

    parent(5)
    assert _cyclic_garbage(lambda: parent(200)) == []


class _Holding(TaskRunner):
    """Keeps submitted work until the test runs or drops it."""

    held: ClassVar[list] = []

    def duplicate(self):
        return self

    def submit_work(self, work):
        self.held.append(work)

    def shutdown(self, wait=True):
        pass


def test_queued_work_is_claimed_once_by_cancel_drop_or_worker(registry):
    """`future.cancel()`, the runner dropping queued work, and a worker picking it up all
    race for a queued run: exactly one of them gets it, and it finishes once."""
    _Holding.held.clear()

    @flow(task_runner=_Holding())
    def racing():
        future = inc.submit(1)
        (work,) = _Holding.held
        assert future.cancel()
        work.cancel()  # the runner drops it too
        work()  # and a worker picks it up
        return future.task_run_id, future.state.name

    run_id, name = racing()
    assert name == "Cancelled"
    history = registry.history(registry.row_of(run_id))
    assert [s.type for s in history] == [StateType.PENDING, StateType.CANCELLED]


def test_process_pool_runs_in_flight_hold_no_thread_each():
    """The process pool is a remote runner: its runs in flight are awaited on the kernel
    loop, so 300 of them add a few threads (the loop, the pool's manager), not one each."""
    import time

    from _process_tasks import nap

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def many():
        before = threading.active_count()
        futures = nap.map([0.02] * 300)
        time.sleep(0.3)
        during = threading.active_count()
        return before, during, sum(f.result(timeout=120) for f in futures)

    before, during, total = many()
    assert during - before < 10 and total == pytest.approx(6.0)


@pytest.mark.anyio
async def test_process_pool_task_times_out_and_retries_from_an_async_flow(registry):
    from _process_tasks import nap

    slow = nap.with_options(timeout_seconds=0.5, retries=1, retry_delay_seconds=0)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def timed() -> tuple[bool, str]:
        future = slow.submit(1.5)
        await future.wait_async()
        return future.state.is_failed(), future.state.message or ""

    failed, message = await timed()
    assert failed and "timeout" in message.lower()
    (run,) = registry.runs(kind="task")
    assert run.run_count == 2  # (timed out, retried, timed out again)
