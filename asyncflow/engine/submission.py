"""`Task.submit()`: a task run started concurrently, and the future that follows it.

A submitted run is registered at once (`entry.open_run`) and started once its upstream
futures are final, without holding a thread meanwhile: a sync task on its flow's task
runner, an async task in its flow's task group (or on the kernel loop from sync code).
Cancellation has one path for every run: `engine.request_cancel()`, which sets the flag and
calls `engine.stop`, set here to drop queued work, interrupt a worker thread, or cancel the
run's scope.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import anyio

from asyncflow.backend import threadsafe_caller
from asyncflow.engine import cancellation, drivers, entry, interrupts, kernel, resolve
from asyncflow.engine.context import flow_run_var
from asyncflow.engine.resolve import needs_resolving
from asyncflow.engine.run import FlowRunEngine, TaskRunEngine
from asyncflow.futures import TaskRunFuture
from asyncflow.states import State
from asyncflow.task_runners import TaskRunner, ThreadPoolTaskRunner
from asyncflow.task_runners.handoff import Place


def submit(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], runner: TaskRunner | None = None
) -> Any:
    """Register a task run, start it when its inputs are ready, and return its future (or,
    with `return_state=True`, wait and return its final State, as Prefect does). A sync
    task runs on `runner`, by default its flow run's."""
    wait_for = kwargs.pop("wait_for", None)
    if kwargs.pop("return_state", False):
        future = submit(task, args, {**kwargs, "wait_for": wait_for}, runner)
        future.wait()
        return future.state
    args = task._args(args)
    parent = flow_run_var.get()
    if parent is not None:
        parent.check_deadline()
    engine: TaskRunEngine = entry.open_run(task, parent, args, kwargs, wait_for, task.isasync)
    if task.isasync:
        return _submit_async(engine, parent, wait_for)
    runner = runner or runner_for(parent)
    if runner.remote:  # (driven on a loop, its body awaited: no thread while in flight)
        return _submit_async(engine, parent, wait_for, runner)
    return _submit_sync(engine, parent, wait_for, runner)


class _SyncWork:
    """One submitted sync task run, handed to a runner once its dependencies are final."""

    __slots__ = ("context", "engine", "future", "pending", "runner", "started", "wait_for")

    def __init__(
        self,
        engine: TaskRunEngine,
        future: TaskRunFuture[Any],
        runner: Any,
        wait_for: Any,
        pending: set[TaskRunFuture[Any]] | None,
    ) -> None:
        self.engine = engine
        self.future = future
        self.runner = runner
        self.wait_for = wait_for
        self.pending = pending
        self.context = contextvars.copy_context()  # the flow run (and the user's context vars)
        self.started = False
        engine.stop = self.stop

    def __call__(self) -> None:
        engine = self.engine
        # Who gets the work, its worker or a canceller, is decided under the run's own lock
        # (its future's): one lock shared by all runs would make the workers queue up on it.
        with self.future._lock:
            if self.started:  # a canceller claimed it while it was queued
                return
            self.started = True
        try:
            with interrupts.guard() as target:
                engine.interrupt_target = target  # (`stop` reads it)
                state = entry.ready(engine, self.wait_for)
                if state is None:
                    fn, args, kwargs = entry.body(engine)
                    if not self.runner.in_thread:
                        fn, args, kwargs = self.runner.body(engine.spec, fn, args, kwargs), (), {}
                    state = self.context.run(drivers.drive_sync, engine, fn, args, kwargs)
        except BaseException as exc:  # recorded by the driver, or not started: record it here
            state = engine.state or engine.finish(engine.outcome_of_error(exc))
        self._resolve(state)

    def stop(self) -> None:
        """From any thread, after the cancel flag is set: drop the work if queued, interrupt
        it if running."""
        engine = self.engine
        with self.future._lock:
            queued = not self.started
            self.started = True
            target = engine.interrupt_target
        if queued:
            self._never_started()
        elif target is not None:
            interrupts.interrupt(target, engine.interrupt_error(timeout=False))

    def cancel(self) -> None:
        """The runner dropped the work before it started (unless someone else claimed it)."""
        with self.future._lock:
            if self.started:
                return
            self.started = True
        self._never_started()

    def _never_started(self) -> None:
        self._resolve(self.engine.finish(self.engine.cancelled("Cancelled before it started.")))

    def _resolve(self, state: State[Any]) -> None:
        self.engine.stop = None  # a final run cannot be stopped; breaks the cycle
        self.future._set_state(state)
        cancellation.untrack(self.engine.registry, self.engine.row)
        if self.pending is not None:
            self.pending.discard(self.future)


def _submit_sync(
    engine: TaskRunEngine, parent: FlowRunEngine | None, wait_for: Any, runner: TaskRunner
) -> TaskRunFuture[Any]:
    future: TaskRunFuture[Any] = TaskRunFuture(engine.registry, engine.row)
    future._canceller = engine.request_cancel
    pending = parent.pending if parent is not None else None
    work = _SyncWork(engine, future, runner, wait_for, pending)
    cancellation.track(engine.registry, engine.row, engine.request_cancel)
    if pending is not None:
        pending.add(future)
    deps = entry.dependencies(engine.args, engine.kwargs, wait_for)
    if deps:
        _when_ready(deps, lambda: runner.submit_work(work))
    else:
        runner.submit_work(work)
    return future


def _when_ready(deps: list[TaskRunFuture[Any]], start: Callable[[], None]) -> None:
    """Call `start` once every dependency is final, without blocking any thread meanwhile."""
    remaining = [len(deps)]
    lock = threading.Lock()

    def one_done(_: TaskRunFuture[Any]) -> None:
        with lock:
            remaining[0] -= 1
            ready = remaining[0] == 0
        if ready:
            start()

    for dep in deps:
        dep.add_done_callback(one_done)


def _submit_async(
    engine: TaskRunEngine, parent: FlowRunEngine | None, wait_for: Any, remote: Any = None
) -> TaskRunFuture[Any]:
    """An async task run, or a sync one on a `remote` runner (its body awaited there)."""
    prepared = None
    if remote is not None:
        places: list[Place] = []
        if needs_resolving(engine.args, engine.kwargs):
            arguments: list[tuple[int | str, Any]] = [*enumerate(engine.args)]
            for at, value in [*arguments, *engine.kwargs.items()]:
                futures = list(resolve.upstreams(value))
                if futures:
                    places.append(Place(at, value, futures))
        prepared = remote.prepare(places)
    group = parent.task_group if parent is not None else None
    # (a remote runner's runs go to the kernel loop, also from an async flow: a sync task's
    # future may be waited for by blocking, as on a thread pool, which on the flow's own
    # loop would deadlock)
    on_flow_loop = (
        remote is None
        and group is not None
        and parent is not None
        and parent.thread_id == threading.get_ident()
    )
    future: TaskRunFuture[Any] = TaskRunFuture(
        engine.registry, engine.row, threading.get_ident() if on_flow_loop else None
    )
    if remote is not None:
        future._remote = prepared
    # On the flow's loop a real task group keeps the task inside the flow; a hosted group
    # (nested flows) and the kernel loop need the flow to wait for it explicitly.
    hosted = group is not None and getattr(group, "host", None) is not None
    pending = parent.pending if parent is not None and (hosted or not on_flow_loop) else None

    # On the kernel loop the scope can only be made once `work` runs there; until then a
    # cancel request is the flag, which `work` checks when it starts.
    scope: Any = parent.scope_type() if on_flow_loop and parent is not None else None
    call_soon = parent.call_soon if on_flow_loop and parent is not None else None
    loop_thread: list[int | None] = [future._loop_thread]

    def stop() -> None:
        if scope is None:
            return
        if call_soon is None or threading.get_ident() == loop_thread[0]:
            scope.cancel()
        else:
            call_soon(scope.cancel)

    engine.stop = stop
    future._canceller = engine.request_cancel
    cancellation.track(engine.registry, engine.row, engine.request_cancel)

    async def work() -> None:
        nonlocal scope, call_soon
        state = None
        if scope is None:
            call_soon = threadsafe_caller()
            loop_thread[0] = threading.get_ident()
            scope = anyio.CancelScope()  # set last: `stop` reads it first
            if engine.cancel_requested:
                scope.cancel()
        try:
            with scope:
                state = await entry.run_async(
                    engine.spec, engine.parent, engine.args, engine.kwargs, wait_for, True,
                    engine, remote, prepared,
                )  # fmt: skip
        except BaseException as exc:
            state = engine.state or engine.finish(engine.outcome_of_error(exc))
            future._set_state(state)
            raise
        finally:
            engine.stop = None
            cancellation.untrack(engine.registry, engine.row)
            if remote is not None:
                remote.finished(prepared)
            if pending is not None:
                pending.discard(future)
        if state is None:  # cancelled through `future.cancel()`: the scope swallowed it
            state = engine.state or engine.finish(engine.cancelled())
        future._set_state(state)

    if pending is not None:
        pending.add(future)
    if on_flow_loop:
        group.start_soon(work)  # type: ignore[union-attr]
    else:  # from a sync flow or outside any flow: the kernel loop runs it
        context = contextvars.copy_context()
        kernel.spawn(lambda: context.run(work))
    return future


_default_runner: TaskRunner | None = None


def runner_for(parent: FlowRunEngine | None) -> TaskRunner:
    """The flow run's own task runner (created on first submit), or a process-wide one."""
    global _default_runner
    if parent is None:
        if _default_runner is None:
            _default_runner = ThreadPoolTaskRunner()
        return _default_runner
    runner = parent.task_runner
    if runner is None:
        template = parent.spec.task_runner
        runner = template.duplicate() if template is not None else ThreadPoolTaskRunner()
        runner.start()
        parent.task_runner = runner
    return runner


__all__ = ["runner_for", "submit"]
