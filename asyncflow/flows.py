"""`@flow` and the `Flow` object."""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, overload

from asyncflow._spec import Spec, StateHook, check_option_names, check_retries, check_timeout
from asyncflow.engine import drivers, kernel
from asyncflow.engine.context import flow_run_var
from asyncflow.engine.resolve import needs_resolving, resolve
from asyncflow.engine.run import FlowRunEngine
from asyncflow.exceptions import InvalidDefinitionError
from asyncflow.naming import RunName, check_template, slugify
from asyncflow.states import State

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from asyncflow.task_runners import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class FlowOptions(TypedDict, total=False):
    """The options of `@flow(...)`, `Flow(fn, ...)` and `Flow.with_options(...)`, written once."""

    name: str | None
    description: str | None
    version: str | None
    flow_run_name: RunName
    retries: int | None
    retry_delay_seconds: float | list[float] | Callable[[int], Any] | None
    timeout_seconds: float | None
    validate_parameters: bool
    log_prints: bool | None
    task_runner: TaskRunner | type[TaskRunner] | None
    on_completion: list[StateHook] | None
    on_failure: list[StateHook] | None
    on_cancellation: list[StateHook] | None
    on_crashed: list[StateHook] | None


class Flow(Spec, Generic[P, R]):
    """A function turned into a flow: every call is a recorded flow run.

    Calling it runs the flow and returns the result (or raises its exception); an async
    flow's call returns a coroutine to await. ``return_state=True`` returns the final State.
    """

    decorator = "@flow"
    option_names = FlowOptions.__optional_keys__

    def with_options(self, **changes: Unpack[FlowOptions]) -> Flow[P, R]:
        """A copy with some options changed; the original is untouched."""
        return self._with_options(changes)

    def __init__(self, fn: Callable[P, R], **options: Unpack[FlowOptions]) -> None:
        check_option_names(options, type(self))
        self._wrap(fn, dict(options))
        name = options.get("name")
        description = options.get("description")
        version = options.get("version")
        flow_run_name = options.get("flow_run_name")
        retries = options.get("retries")
        retry_delay_seconds = options.get("retry_delay_seconds")
        timeout_seconds = options.get("timeout_seconds")
        validate_parameters = options.get("validate_parameters", True)
        log_prints = options.get("log_prints")
        task_runner = options.get("task_runner")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidDefinitionError(f"@flow: name must be a non-empty string, got {name!r}.")
        self.name: str = name or slugify(self.__name__)
        self.description = description if description is not None else inspect.getdoc(fn)
        self._version = version
        owner = f"@flow {self.name!r}"
        self.retries = check_retries(retries, retry_delay_seconds, owner)
        self.retry_delay_seconds = retry_delay_seconds or 0
        self.timeout_seconds = check_timeout(timeout_seconds, owner)
        self.validate_parameters = bool(validate_parameters)
        self.log_prints = log_prints
        if log_prints:
            from asyncflow.logging import enable_log_prints

            enable_log_prints()  # patched once, at decoration, so no run pays for it
        self.flow_run_name = flow_run_name
        check_template(
            flow_run_name, self.signature.names, self.signature.has_var_keyword, "flow_run_name"
        )
        self.task_runner = _check_runner(task_runner, owner)
        self._set_hooks(
            {
                "on_completion": options.get("on_completion"),
                "on_failure": options.get("on_failure"),
                "on_cancellation": options.get("on_cancellation"),
                "on_crashed": options.get("on_crashed"),
            }
        )

    @functools.cached_property
    def version(self) -> str | None:
        """The given version, else a hash of the file defining the function (None if unknown)."""
        if self._version is not None:
            return self._version
        try:
            path = inspect.getsourcefile(self.fn)
            if path is None:
                return None
            import hashlib  # here, not at import: only asked for on demand

            with open(path, "rb") as f:
                return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
        except (OSError, TypeError):
            return None

    # -- calling --------------------------------------------------------------------------------
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Flow[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...
    @overload
    def __call__(self: Flow[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def __call__(  # type: ignore[valid-type]
        self: Flow[P, Coroutine[Any, Any, T]],
        *args: P.args,
        return_state: Literal[True],
        **kwargs: P.kwargs,
    ) -> Coroutine[Any, Any, State[T]]: ...
    @overload
    def __call__(  # type: ignore[valid-type]
        self: Flow[P, T], *args: P.args, return_state: Literal[True], **kwargs: P.kwargs
    ) -> State[T]: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return_state = kwargs.pop("return_state", False)
        args = self._args(args)
        parent = flow_run_var.get()
        kind = self.kind
        if kind == "sync":
            return run_flow_sync(self, args, kwargs, parent, return_state)
        if kind == "async":
            coro = run_flow_async(self, args, kwargs, parent, return_state)
            if _in_sync_flow_thread(parent):
                return kernel.run(coro)  # an async child of a sync flow: run it to completion
            return coro
        if kind == "generator":
            return run_flow_generator(self, args, kwargs, parent)
        return run_flow_async_generator(self, args, kwargs, parent)


def _in_sync_flow_thread(parent: FlowRunEngine | None) -> bool:
    return parent is not None and not parent.is_async and parent.thread_id == threading.get_ident()


def _check_runner(runner: Any, owner: str) -> Any:
    if runner is None:
        return None
    from asyncflow.task_runners import TaskRunner

    if isinstance(runner, type) and issubclass(runner, TaskRunner):
        return runner()
    if not isinstance(runner, TaskRunner):
        raise InvalidDefinitionError(
            f"{owner}: task_runner must be a TaskRunner instance or class, got {runner!r}."
        )
    return runner


def _prepare(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parent: FlowRunEngine | None,
    is_async: bool,
) -> tuple[FlowRunEngine, State[Any] | None]:
    """Bind arguments, create the run, validate parameters (shared by every call path)."""
    if parent is not None:
        parent.check_deadline()
        if needs_resolving(args, kwargs):  # futures and states become data on subflow entry
            args, kwargs = resolve(args), resolve(kwargs)
    parameters, explicit = flow.signature.bind(args, kwargs)
    engine = FlowRunEngine(flow, parameters, explicit, parent, is_async)
    return engine, engine.start()


def _call_fn(engine: FlowRunEngine) -> Any:
    """The flow's function called with the run's (validated) parameters."""
    flow = engine.spec
    if flow.signature.plain is not None:  # every parameter can be passed by keyword
        return flow.fn(**engine.parameters)
    args, kwargs = flow.signature.to_call(engine.parameters)
    return flow.fn(*args, **kwargs)


# A returned generator is consumed into a list inside the run (so its errors fail the run).
def _sync_body(engine: FlowRunEngine) -> Any:
    value = _call_fn(engine)
    return list(value) if isinstance(value, types.GeneratorType) else value


async def _async_body(engine: FlowRunEngine) -> Any:
    value = await _call_fn(engine)
    return list(value) if isinstance(value, types.GeneratorType) else value


def _finish(state: State[Any], return_state: bool) -> Any:
    return state if return_state else state.result()


def run_flow_sync(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parent: FlowRunEngine | None,
    return_state: bool = False,
) -> Any:
    engine, failed = _prepare(flow, args, kwargs, parent, is_async=False)
    if failed is not None:
        return _finish(failed, return_state)
    return _finish(drivers.drive_sync(engine, _sync_body, (engine,)), return_state)


async def run_flow_async(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parent: FlowRunEngine | None,
    return_state: bool = False,
) -> Any:
    engine, failed = _prepare(flow, args, kwargs, parent, is_async=True)
    if failed is not None:
        return _finish(failed, return_state)
    state = await drivers.drive_async(engine, drivers.in_task_group, (engine, _async_body))
    return _finish(state, return_state)


def run_flow_generator(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parent: FlowRunEngine | None,
) -> Any:
    engine, failed = _prepare(flow, args, kwargs, parent, is_async=False)
    if failed is not None:
        return failed.result()
    return drivers.drive_sync_generator(engine, _call_fn(engine))


def run_flow_async_generator(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parent: FlowRunEngine | None,
) -> Any:
    engine, failed = _prepare(flow, args, kwargs, parent, is_async=True)
    if failed is not None:
        return failed.result()
    return drivers.drive_async_generator(engine, _call_fn(engine))


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...
@overload
def flow(**options: Unpack[FlowOptions]) -> Callable[[Callable[P, R]], Flow[P, R]]: ...
def flow(__fn: Any = None, **options: Any) -> Any:
    """Turn a function into a flow: ``@flow`` or ``@flow(name=..., retries=..., ...)``
    (the options: `FlowOptions`)."""
    check_option_names(options, Flow)
    if __fn is None:
        return lambda fn: Flow(fn, **options)
    return Flow(__fn, **options)


__all__ = [
    "Flow",
    "FlowOptions",
    "flow",
]
