"""How every run starts: one preparation for the eight kinds of run.

A direct call of a flow or a task (`call`) and a task submission (`asyncflow.engine.
submission`) go through the same three steps, then hand the run to the driver of its kind:

1. `open_run`: bind the arguments, register the run (Pending, named, its registry row) and,
   for a flow, validate its parameters. A flow's inputs become data first, since its
   parameters are recorded and validated; a task run is registered at once, so a run
   waiting for its upstreams shows Pending.
2. `ready`: make the task run's inputs data (futures and states among the arguments, and
   `wait_for`); an upstream that did not complete ends the run NotReady.
3. drive: `drivers.drive_sync` / `drive_async` around the body, or the generator drivers,
   which take the same two steps when iteration starts.

Waiting for futures blocks in steps 1 and 2: async callers first await `dependencies(...)`.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asyncflow.engine import drivers, interrupts, kernel
from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.engine.resolve import check_wait_for, needs_resolving, resolve, upstreams
from asyncflow.engine.run import FlowRunEngine, RunEngine, TaskRunEngine
from asyncflow.exceptions import UpstreamTaskError
from asyncflow.registry import KIND_FLOW
from asyncflow.states import State, StateType

if TYPE_CHECKING:
    from asyncflow.futures import TaskRunFuture

Body = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def call(spec: Any, /, *args: Any, **kwargs: Any) -> Any:
    """A flow or task called directly (this is `Flow.__call__` and `Task.__call__`): its
    result, or its final State with `return_state=True`; a coroutine for async ones, a
    generator for generator ones."""
    return_state = wait_for = None
    if kwargs:
        return_state = kwargs.pop("return_state", False)
        wait_for = kwargs.pop("wait_for", None)
    args = spec._args(args)
    parent = flow_run_var.get()
    if parent is not None and (parent.deadline is not None or parent.cancel_requested):
        parent.check_deadline()
    kind = spec.kind
    if kind == "sync":
        if spec.run_kind == KIND_FLOW:
            engine = open_run(spec, parent, args, kwargs, wait_for, False)
            state = engine.early or drivers.drive_sync(engine, _sync_body, (engine,))
        else:  # the hot path: `open_run`, `ready` and `body` without their calls
            engine = TaskRunEngine(spec, parent, args, kwargs)
            state = ready(engine, wait_for) if wait_for or needs_resolving(args, kwargs) else None
            if state is None:
                state = drivers.drive_sync(engine, spec.fn, engine.args, engine.kwargs)
        if return_state:
            return state
        return state._result() if engine.returned is None else engine.call_result(state)
    if kind == "async":
        coro = run_async(spec, parent, args, kwargs, wait_for, bool(return_state))
        return kernel.run(coro) if blocking_context(parent) else coro
    if kind == "generator":

        def open_sync() -> tuple[RunEngine, Any]:
            return _opened(open_run(spec, parent, args, kwargs, wait_for, False), wait_for)

        return drivers.drive_sync_generator(open_sync)

    async def open_async() -> tuple[RunEngine, Any]:
        await wait_dependencies(args, kwargs, wait_for)
        return _opened(open_run(spec, parent, args, kwargs, wait_for, True), wait_for)

    return drivers.drive_async_generator(open_async)


def _opened(engine: RunEngine, wait_for: Any) -> tuple[RunEngine, Any]:
    """A generator run, ready to step: (engine, the generator); raises when it cannot start."""
    early = ready(engine, wait_for)
    if early is not None:
        early._result()
    fn, args, kwargs = body(engine)
    return engine, fn(*args, **kwargs)


async def run_async(
    spec: Any,
    parent: FlowRunEngine | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
    return_state: bool,
    engine: TaskRunEngine | None = None,
    remote: Any = None,
    prepared: Any = None,
) -> Any:
    """An async run, from the start of the coroutine (a coroutine never awaited is no run);
    `engine` when a submission registered it already; `remote`: the remote task runner
    whose `run_remote` runs a sync task's body (with `prepared`, what its `prepare` gave
    at the submission)."""
    if wait_for or needs_resolving(args, kwargs):
        await wait_dependencies(args, kwargs, wait_for)
    if engine is None:
        engine = open_run(spec, parent, args, kwargs, wait_for, True)
    state = ready(engine, wait_for)
    if state is None:
        fn, fn_args, fn_kwargs = body(engine)
        if remote is not None:
            fn, fn_args = _remote_attempt, (engine, remote, fn, fn_args, fn_kwargs, prepared)
            fn_kwargs = {}
        state = await drivers.drive_async(engine, fn, fn_args, fn_kwargs)
    if return_state:
        return state
    return state._result() if engine.returned is None else engine.call_result(state)


async def _remote_attempt(
    engine: Any,
    remote: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    prepared: Any,
) -> Any:
    """One attempt of a sync task's body on a `remote` runner."""
    try:
        return await remote.run_remote(engine.spec, fn, args, kwargs, prepared)
    except BaseException as exc:
        if remote.abandons_running and not isinstance(exc, Exception):  # (stopped)
            engine.abandoned = (
                f"{type(remote).__name__} cannot stop a task body that has started: if "
                "this one had, it runs on to its end on its worker."
            )
        raise


def open_run(
    spec: Any,
    parent: FlowRunEngine | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
    is_async: bool,
) -> Any:
    """Step 1: the registered run (a `FlowRunEngine` or `TaskRunEngine`)."""
    if spec.run_kind != KIND_FLOW:
        return TaskRunEngine(spec, parent, args, kwargs)
    not_ready: Exception | None = None
    if parent is not None or wait_for:
        try:
            args, kwargs = inputs(args, kwargs, wait_for)
        except UpstreamTaskError as exc:
            not_ready = exc
    parameters, explicit = spec.signature.bind(args, kwargs)
    engine = FlowRunEngine(spec, parameters, explicit, parent, is_async)
    engine.early = engine.start(not_ready)
    return engine


def ready(engine: RunEngine, wait_for: Any) -> State[Any] | None:
    """Step 2: None when the run may start, else its final state (it cannot)."""
    if not isinstance(engine, TaskRunEngine):
        return engine.early if isinstance(engine, FlowRunEngine) else None
    if engine.cancel_requested:
        return engine.finish(engine.cancelled("Cancelled before it started."))
    if wait_for or needs_resolving(engine.args, engine.kwargs):
        try:
            engine.args, engine.kwargs = inputs(engine.args, engine.kwargs, wait_for)
        except UpstreamTaskError as exc:
            return engine.finish(State(StateType.FAILED, "NotReady", str(exc), data=exc))
    return None


def inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with futures and states made data; UpstreamTaskError when one (or a
    `wait_for` dependency) did not complete."""
    if wait_for:
        check_wait_for(wait_for)
    if needs_resolving(args, kwargs):
        return resolve(args), resolve(kwargs)
    return args, kwargs


def dependencies(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> list[TaskRunFuture[Any]]:
    """The futures among the arguments and `wait_for` that are not final yet."""
    if not wait_for and not needs_resolving(args, kwargs):
        return []
    return [f for f in upstreams((args, kwargs, list(wait_for or ()))) if not f.done()]


async def wait_dependencies(args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any) -> None:
    for future in dependencies(args, kwargs, wait_for):
        await future.wait_async()


def body(engine: RunEngine) -> Body:
    """What the driver calls for this run: (function, args, kwargs)."""
    if isinstance(engine, TaskRunEngine):
        return engine.spec.fn, engine.args, engine.kwargs
    assert isinstance(engine, FlowRunEngine)
    if engine.spec.kind == "sync":
        return _sync_body, (engine,), {}
    if engine.spec.kind == "async":
        return drivers.in_task_group, (engine, _async_body), {}
    return _call_fn, (engine,), {}  # generators: the call makes the generator


def _call_fn(engine: FlowRunEngine) -> Any:
    """The flow's function called with the run's (validated) parameters."""
    args, kwargs = _arguments(engine)
    return engine.spec.fn(*args, **kwargs)


def _arguments(engine: FlowRunEngine) -> tuple[tuple[Any, ...], dict[str, Any]]:
    signature = engine.spec.signature
    if signature.plain is not None:  # every parameter can be passed by keyword
        return (), engine.parameters
    return signature.to_call(engine.parameters)


# The bodies call the function themselves, not through `_call_fn`: a frame less per nesting
# level. A returned generator is consumed into a list inside the run (its errors fail it).
@interrupts.calls_body
def _sync_body(engine: FlowRunEngine) -> Any:
    flow = engine.spec
    if flow.signature.plain is not None:  # (the common case, without `_arguments`' call)
        value = flow.fn(**engine.parameters)
    else:
        args, kwargs = _arguments(engine)
        value = flow.fn(*args, **kwargs)
    return list(value) if isinstance(value, types.GeneratorType) else value


async def _async_body(engine: FlowRunEngine) -> Any:
    flow = engine.spec
    if flow.signature.plain is not None:
        value = await flow.fn(**engine.parameters)
    else:
        args, kwargs = _arguments(engine)
        value = await flow.fn(*args, **kwargs)
    return list(value) if isinstance(value, types.GeneratorType) else value


def blocking_context(parent: FlowRunEngine | None) -> bool:
    """Whether an async flow or task called here runs to completion rather than return a
    coroutine: inside a sync flow (or a sync task it runs in a worker thread) there is no
    loop to await on, so it runs on the kernel loop and the call blocks."""
    if parent is not None and not parent.is_async:
        return parent.thread_id == threading.get_ident() or task_run_var.get() is not None
    return False


__all__ = [
    "blocking_context",
    "body",
    "call",
    "dependencies",
    "inputs",
    "open_run",
    "ready",
    "run_async",
    "wait_dependencies",
]
