"""`@task`, the `Task` object, `.submit()` and `.map()`."""

from __future__ import annotations

import contextvars
import copy
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, overload

import anyio

from asyncflow._spec import (
    UNBOUND,
    Spec,
    StateHook,
    check_option_names,
    check_retries,
    check_timeout,
    load_by_name,
)
from asyncflow.annotations import quote, unmapped
from asyncflow.backend import threadsafe_caller
from asyncflow.engine import cancellation, drivers, interrupts, kernel
from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.engine.resolve import check_wait_for, needs_resolving, resolve, upstreams
from asyncflow.engine.run import FlowRunEngine, TaskRunEngine
from asyncflow.exceptions import (
    InvalidDefinitionError,
    MappingLengthMismatch,
    MappingMissingIterable,
    UpstreamTaskError,
)
from asyncflow.futures import FutureList, TaskRunFuture
from asyncflow.naming import RunName, check_template
from asyncflow.states import State, StateType

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

RetryCondition = Callable[["Task[Any, Any]", Any, State[Any]], bool]


class TaskOptions(TypedDict, total=False):
    """The options of `@task(...)`, `Task(fn, ...)` and `Task.with_options(...)`, written once."""

    name: str | None
    description: str | None
    tags: Iterable[str] | None
    version: str | None
    retries: int | None
    retry_delay_seconds: float | list[float] | Callable[[int], Any] | None
    retry_jitter_factor: float | None
    retry_condition_fn: RetryCondition | None
    timeout_seconds: float | None
    task_run_name: RunName
    log_prints: bool | None
    on_completion: list[StateHook] | None
    on_failure: list[StateHook] | None


class Task(Spec, Generic[P, R]):
    """A function turned into a task: each call is a recorded task run.

    Called inside a flow it runs inline and returns the result; `.submit()` runs it on the
    flow's task runner (sync) or in the flow's task group (async) and returns a future.
    """

    decorator = "@task"
    option_names = TaskOptions.__optional_keys__

    def with_options(self, **changes: Unpack[TaskOptions]) -> Task[P, R]:
        """A copy with some options changed; the original is untouched."""
        return self._with_options(changes)

    def __init__(self, fn: Callable[P, R], **options: Unpack[TaskOptions]) -> None:
        check_option_names(options, type(self))
        self._wrap(fn, dict(options))
        name = options.get("name")
        description = options.get("description")
        tags = options.get("tags")
        version = options.get("version")
        retries = options.get("retries")
        retry_delay_seconds = options.get("retry_delay_seconds")
        retry_jitter_factor = options.get("retry_jitter_factor")
        retry_condition_fn = options.get("retry_condition_fn")
        timeout_seconds = options.get("timeout_seconds")
        task_run_name = options.get("task_run_name")
        log_prints = options.get("log_prints")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidDefinitionError(f"@task: name must be a non-empty string, got {name!r}.")
        self.name: str = name or self.__name__
        self.description = description if description is not None else inspect.getdoc(fn)
        self.tags = frozenset(tags or ())
        self.version = version
        owner = f"@task {self.name!r}"
        self.retries = check_retries(retries, retry_delay_seconds, owner)
        self.retry_delay_seconds = retry_delay_seconds or 0
        if retry_jitter_factor is not None and (
            not isinstance(retry_jitter_factor, (int, float)) or retry_jitter_factor < 0
        ):
            raise InvalidDefinitionError(
                f"{owner}: retry_jitter_factor must be a number >= 0, got {retry_jitter_factor!r}."
            )
        self.retry_jitter_factor = retry_jitter_factor
        if retry_condition_fn is not None and not callable(retry_condition_fn):
            raise InvalidDefinitionError(f"{owner}: retry_condition_fn must be callable.")
        self.retry_condition_fn = retry_condition_fn
        self.timeout_seconds = check_timeout(timeout_seconds, owner)
        self.task_run_name = task_run_name
        check_template(
            task_run_name, self.signature.names, self.signature.has_var_keyword, "task_run_name"
        )
        self.log_prints = log_prints
        if log_prints:
            from asyncflow.logging import enable_log_prints

            enable_log_prints()  # patched once, at decoration, so no run pays for it
        self._set_hooks(
            {"on_completion": options.get("on_completion"), "on_failure": options.get("on_failure")}
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by reference (module + name), so process pools can ship it."""
        return (load_by_name, (self.__module__, self.__qualname__))

    # -- inline calls ---------------------------------------------------------------------------
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...
    @overload
    def __call__(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def __call__(  # type: ignore[valid-type]
        self: Task[P, T], *args: P.args, return_state: Literal[True], **kwargs: P.kwargs
    ) -> State[T]: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return_state = kwargs.pop("return_state", False)
            wait_for = kwargs.pop("wait_for", None)
        else:
            return_state = wait_for = None
        args = self._args(args)
        parent = flow_run_var.get()
        if parent is not None and parent.deadline is not None:
            parent.check_deadline()
        if self.isasync:
            # The run is registered when the coroutine starts, as in Prefect: a coroutine that
            # is never awaited (or cancelled before it starts) is no run, not one Pending for ever.
            coro = run_task_async(self, parent, args, kwargs, wait_for, return_state)
            if _blocking_context(parent):
                return kernel.run(coro)
            return coro
        engine = TaskRunEngine(self, parent, args, kwargs)
        try:
            args, kwargs = _inputs(args, kwargs, wait_for)
        except UpstreamTaskError as exc:
            state = engine.finish(_not_ready(exc))
        else:
            if self.kind == "generator":
                return drivers.drive_sync_generator(engine, self.fn(*args, **kwargs))
            state = drivers.drive_sync(engine, self.fn, args, kwargs)
        return state if return_state else state.result()

    # -- submission -----------------------------------------------------------------------------
    def submit(self, *args: Any, **kwargs: Any) -> TaskRunFuture[Any]:
        """Start a task run concurrently and return its future.

        Futures and states among the arguments (and in ``wait_for=[...]``) are waited for
        without holding a worker, then replaced by their results.
        """
        wait_for = kwargs.pop("wait_for", None)
        kwargs.pop("return_state", None)
        args = self._args(args)
        parent = flow_run_var.get()
        if parent is not None and parent.deadline is not None:
            parent.check_deadline()
        engine = TaskRunEngine(self, parent, args, kwargs)
        if self.isasync:
            return _submit_async(engine, parent, args, kwargs, wait_for)
        return _submit_sync(engine, parent, args, kwargs, wait_for)

    def map(self, *args: Any, **kwargs: Any) -> FutureList[Any]:
        """Submit one task run per element of the iterable arguments.

        Wrap constant arguments in `unmapped(...)`; strings and bytes are never iterated.
        All iterables must have the same length.
        """
        wait_for = kwargs.pop("wait_for", None)
        kwargs.pop("return_state", None)
        parameters, _ = self.signature.bind(self._args(args), kwargs)
        mapped: dict[str, list[Any]] = {}
        static: dict[str, Any] = {}
        for key, value in parameters.items():
            if isinstance(value, (unmapped, quote)):
                static[key] = value.value if isinstance(value, unmapped) else value
            elif isinstance(value, TaskRunFuture) and _iterable(value.result()):
                mapped[key] = list(value.result())
            elif _iterable(value):
                mapped[key] = list(value)
            else:
                static[key] = value
        if not mapped:
            raise MappingMissingIterable(
                f"Task {self.name!r}.map() needs at least one iterable argument to map over; "
                f"got {', '.join(f'{k}={v!r}' for k, v in parameters.items()) or 'none'}."
            )
        lengths = {key: len(values) for key, values in mapped.items()}
        if len(set(lengths.values())) > 1:
            raise MappingLengthMismatch(
                f"Task {self.name!r}.map() got iterables of different lengths: "
                + ", ".join(f"{k}={n}" for k, n in lengths.items())
                + ". Wrap arguments that should not be mapped in unmapped(...)."
            )
        n = next(iter(lengths.values()))
        self_unbound = self if self._bound is UNBOUND else self._unbound()
        futures: FutureList[Any] = FutureList()
        for i in range(n):
            call_args, call_kwargs = self.signature.to_call(
                {**static, **{k: v[i] for k, v in mapped.items()}}
            )
            futures.append(self_unbound.submit(*call_args, wait_for=wait_for, **call_kwargs))
        return futures

    def _unbound(self) -> Task[P, R]:
        clone = copy.copy(self)
        clone._bound = UNBOUND
        return clone


def _iterable(value: Any) -> bool:
    if isinstance(value, (str, bytes, bytearray)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _blocking_context(parent: FlowRunEngine | None) -> bool:
    """Whether an async task called here should run to completion rather than return a coroutine.

    Inside a sync flow (or a sync task it runs in a worker thread) there is no loop to
    await on; the task runs on the kernel loop and the call blocks.
    """
    if parent is not None and not parent.is_async:
        return parent.thread_id == threading.get_ident() or task_run_var.get() is not None
    return False


def _inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if wait_for:
        check_wait_for(wait_for)
    if needs_resolving(args, kwargs):
        return resolve(args), resolve(kwargs)
    return args, kwargs


def _not_ready(exc: UpstreamTaskError) -> State[Any]:
    return State(StateType.FAILED, "NotReady", str(exc), data=exc)


async def run_task_async(
    task: Task[Any, Any],
    parent: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
    return_state: bool = False,
    engine: TaskRunEngine | None = None,
) -> Any:
    """An async task run: `engine` when it is registered already (a submission), else one
    registered now."""
    if engine is None:
        engine = TaskRunEngine(task, parent, args, kwargs)
    try:
        if wait_for or needs_resolving(args, kwargs):
            for future in _dependencies(args, kwargs, wait_for):
                await future.wait_async()
            args, kwargs = _inputs(args, kwargs, wait_for)
    except UpstreamTaskError as exc:
        state = engine.finish(_not_ready(exc))
    else:
        fn = engine.spec.fn
        if engine.spec.kind == "async_generator":
            return drivers.drive_async_generator(engine, fn(*args, **kwargs))
        state = await drivers.drive_async(engine, fn, args, kwargs)
    return state if return_state else state.result()


def _dependencies(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> list[TaskRunFuture[Any]]:
    if not wait_for and not needs_resolving(args, kwargs):
        return []
    return [f for f in upstreams((args, kwargs, list(wait_for or ()))) if not f.done()]


class _SyncWork:
    """One submitted sync task run, handed to a runner once its dependencies are final."""

    __slots__ = (
        "args",
        "context",
        "engine",
        "future",
        "kwargs",
        "pending",
        "runner",
        "started",
        "wait_for",
    )

    def __init__(
        self,
        engine: TaskRunEngine,
        future: TaskRunFuture[Any],
        runner: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait_for: Any,
        pending: set[TaskRunFuture[Any]] | None,
    ) -> None:
        self.engine = engine
        self.future = future
        self.runner = runner
        self.args = args
        self.kwargs = kwargs
        self.wait_for = wait_for
        self.pending = pending
        self.context = contextvars.copy_context()  # the flow run (and the user's context vars)
        self.started = False
        future._canceller = self.request_cancel

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
                engine.interrupt_target = target
                if engine.cancel_requested:
                    raise engine.interrupt_error(timeout=False)
                args, kwargs = _inputs(self.args, self.kwargs, self.wait_for)
                fn = engine.spec.fn
                if not self.runner.in_thread:
                    fn, args, kwargs = self.runner.body(engine.spec, fn, args, kwargs), (), {}
                state = self.context.run(drivers.drive_sync, engine, fn, args, kwargs)
        except UpstreamTaskError as exc:
            state = engine.finish(_not_ready(exc))
        except BaseException as exc:  # recorded by the driver, or not started: record it here
            state = engine.state or engine.finish(engine.outcome_of_error(exc))
        self._resolve(state)

    def request_cancel(self) -> None:
        """Cancel from any thread: drop the work if queued, interrupt it if running."""
        engine = self.engine
        with self.future._lock:
            engine.cancel_requested = True
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
        self.future._canceller = None  # a final run cannot be cancelled; breaks the cycle
        self.future._set_state(state)
        cancellation.untrack(self.engine.registry, self.engine.row)
        if self.pending is not None:
            self.pending.discard(self.future)


def _submit_sync(
    engine: TaskRunEngine,
    parent: FlowRunEngine | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
) -> TaskRunFuture[Any]:
    runner = _runner_for(parent)
    future: TaskRunFuture[Any] = TaskRunFuture(engine.registry, engine.row)
    pending = parent.pending if parent is not None else None
    work = _SyncWork(engine, future, runner, args, kwargs, wait_for, pending)
    cancellation.track(engine.registry, engine.row, work.request_cancel)
    if pending is not None:
        pending.add(future)
    deps = _dependencies(args, kwargs, wait_for)
    if deps:
        _when_ready(deps, lambda: runner.submit(work))
    else:
        runner.submit(work)
    return future


def _when_ready(deps: list[TaskRunFuture[Any]], start: Callable[[], None]) -> None:
    """Call `start` once every dependency is final, without blocking any thread meanwhile."""
    if not deps:
        start()
        return
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
    engine: TaskRunEngine,
    parent: FlowRunEngine | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
) -> TaskRunFuture[Any]:
    group = parent.task_group if parent is not None else None
    on_flow_loop = (
        group is not None and parent is not None and parent.thread_id == threading.get_ident()
    )
    future: TaskRunFuture[Any] = TaskRunFuture(
        engine.registry, engine.row, threading.get_ident() if on_flow_loop else None
    )
    # On the flow's loop a real task group keeps the task inside the flow; a hosted group
    # (nested flows) and the kernel loop need the flow to wait for it explicitly.
    hosted = group is not None and getattr(group, "host", None) is not None
    pending = parent.pending if parent is not None and (hosted or not on_flow_loop) else None

    # On the kernel loop the scope can only be made once `work` runs there; until then a
    # cancel request is a flag that `work` checks when it starts.
    scope: Any = parent.scope_type() if on_flow_loop and parent is not None else None
    call_soon = parent.call_soon if on_flow_loop and parent is not None else None
    loop_thread: list[int | None] = [future._loop_thread]

    def cancel() -> None:
        engine.cancel_requested = True
        if scope is None:
            return
        if call_soon is None or threading.get_ident() == loop_thread[0]:
            scope.cancel()
        else:
            call_soon(scope.cancel)

    future._canceller = cancel
    cancellation.track(engine.registry, engine.row, cancel)

    async def work() -> None:
        nonlocal scope, call_soon
        state = None
        if scope is None:
            call_soon = threadsafe_caller()
            loop_thread[0] = threading.get_ident()
            scope = anyio.CancelScope()  # set last: `cancel` reads it first
            if engine.cancel_requested:
                scope.cancel()
        try:
            with scope:
                state = await run_task_async(
                    engine.spec, engine.parent, args, kwargs, wait_for, True, engine
                )
        except BaseException as exc:
            state = engine.state or engine.finish(engine.outcome_of_error(exc))
            future._set_state(state)
            raise
        finally:
            cancellation.untrack(engine.registry, engine.row)
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


_default_runner: Any = None


def _runner_for(parent: FlowRunEngine | None) -> Any:
    """The flow run's own task runner (created on first submit), or a process-wide one."""
    global _default_runner
    if parent is None:
        if _default_runner is None:
            from asyncflow.task_runners import ThreadPoolTaskRunner

            _default_runner = ThreadPoolTaskRunner()
        return _default_runner
    runner = parent.task_runner
    if runner is None:
        from asyncflow.task_runners import ThreadPoolTaskRunner

        template = parent.spec.task_runner
        runner = template.duplicate() if template is not None else ThreadPoolTaskRunner()
        runner.start()
        parent.task_runner = runner
    return runner


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...
@overload
def task(**options: Unpack[TaskOptions]) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(__fn: Any = None, **options: Any) -> Any:
    """Turn a function into a task: ``@task`` or ``@task(name=..., retries=..., ...)``."""
    check_option_names(options, Task)
    if __fn is None:
        return lambda fn: Task(fn, **options)
    return Task(__fn, **options)


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """A `retry_delay_seconds` value: delays of factor * 2**n for each retry n."""

    def delays(retries: int) -> list[float]:
        return [backoff_factor * 2**n for n in range(retries)]

    return delays


__all__ = [
    "RetryCondition",
    "Task",
    "TaskOptions",
    "exponential_backoff",
    "task",
]
