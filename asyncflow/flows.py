"""`@flow` and the `Flow` object."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, overload
from uuid import UUID

from asyncflow._spec import (
    Spec,
    StateHook,
    check_option_names,
)
from asyncflow.engine import entry
from asyncflow.exceptions import InvalidDefinitionError
from asyncflow.naming import RunName, slugify
from asyncflow.registry import KIND_FLOW
from asyncflow.results import persistence
from asyncflow.states import State

if TYPE_CHECKING:
    import os

    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from asyncflow.results import ResultStorage, Serializer
    from asyncflow.task_runners import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
H = TypeVar("H", bound=StateHook)


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
    persist_result: bool | None
    cache_result_in_memory: bool
    result_storage: str | os.PathLike[str] | ResultStorage | None
    result_serializer: str | Serializer | None
    task_runner: TaskRunner | type[TaskRunner] | None
    on_completion: list[StateHook] | None
    on_failure: list[StateHook] | None
    on_cancellation: list[StateHook] | None
    on_crashed: list[StateHook] | None
    on_running: list[StateHook] | None


class Flow(Spec, Generic[P, R]):
    """A function turned into a flow: every call is a recorded flow run.

    Calling it runs the flow and returns the result (or raises its exception); an async
    flow's call returns a coroutine to await. ``return_state=True`` returns the final State.
    """

    decorator = "@flow"
    run_kind = KIND_FLOW
    option_names = FlowOptions.__optional_keys__
    flow_run_name: RunName  # (set by `_set_common`)

    def with_options(self, **changes: Unpack[FlowOptions]) -> Flow[P, R]:
        """A copy with some options changed; the original is untouched."""
        return self._with_options(changes)

    def __init__(self, fn: Callable[P, R], **options: Unpack[FlowOptions]) -> None:
        check_option_names(options, type(self))
        self._wrap(fn, dict(options))
        # A lambda's name is "<lambda>": Prefect names such flows "unknown-lambda".
        default = "unknown-lambda" if self.__name__ == "<lambda>" else slugify(self.__name__)
        owner = self._set_common(options, default, "flow_run_name")
        self._version = options.get("version")
        self.validate_parameters = bool(options.get("validate_parameters", True))
        self.task_runner = _check_runner(options.get("task_runner"), owner)
        self.lifecycle = persistence.lifecycle_for(self, is_flow=True)
        # with persist_result None, a nested run does as its parent flow run does
        self.lifecycle_inherit = self.persist_result is None

    # -- hook decorators beyond `Spec`'s (on_completion, on_failure, on_running) ------------------
    def on_cancellation(self, fn: H) -> H:
        """Add a hook called when a run of this flow is cancelled; returns `fn`."""
        return self._add_hook("on_cancellation", fn)

    def on_crashed(self, fn: H) -> H:
        """Add a hook called when a run of this flow crashes; returns `fn`."""
        return self._add_hook("on_crashed", fn)

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

    @functools.cached_property
    def entrypoint(self) -> str | None:
        """Where the flow is defined, as `path/to/file.py:function` (recorded with each
        top-level run, so `asyncflow runs retry` can load it); None when it cannot be
        imported by that name (defined in a function, or not in a file)."""
        fn = inspect.unwrap(self.fn)
        qualname = getattr(fn, "__qualname__", "")
        if not qualname or "<" in qualname:
            return None
        try:
            path = inspect.getsourcefile(fn)
        except TypeError:
            return None
        if path is None or not os.path.isfile(path):
            return None
        return f"{os.path.abspath(path)}:{qualname}"

    def to_deployment(self, name: str | None = None, **options: Any) -> Any:
        """A deployment of this flow (`RunnerDeployment`): `name` (default: the flow's),
        `cron=`, `interval=`, `rrule=` (one or a list each) or `schedules=[...]`,
        `parameters`, `tags`, `description`, `version`, `paused`, `concurrency_limit`,
        `timezone`, `catchup`, `max_catchup`, `overlap`. `.apply()` registers it."""
        from asyncflow.deployments.deployment import to_deployment

        return to_deployment(self, name, **options)

    def serve(
        self,
        name: str | None = None,
        *,
        limit: int | None = 8,
        grace_period: float = 8.0,
        pause_on_shutdown: bool = False,
        isolation: Literal["inline", "process"] = "inline",
        **options: Any,
    ) -> None:
        """Serve this flow as a deployment (see `to_deployment` for the options) until
        SIGINT/SIGTERM: blocks. Its runs run in this process, at most `limit` at a time;
        stopping gives the running ones `grace_period` seconds, then cancels them;
        `isolation="process"` runs each in a process of its own (see `asyncflow.serve`).
        In a running event loop, `await my_flow.aserve(...)`."""
        from asyncflow.deployments.serve import serve

        deployment = self.to_deployment(name, **options)
        serve(
            deployment, limit=limit, grace_period=grace_period,
            pause_on_shutdown=pause_on_shutdown, isolation=isolation,
        )  # fmt: skip

    async def aserve(
        self,
        name: str | None = None,
        *,
        limit: int | None = 8,
        pause_on_shutdown: bool = False,
        isolation: Literal["inline", "process"] = "inline",
        **options: Any,
    ) -> None:
        """`serve`, in a running event loop (until cancelled)."""
        from asyncflow.deployments.serve import aserve

        deployment = self.to_deployment(name, **options)
        await aserve(
            deployment, limit=limit, pause_on_shutdown=pause_on_shutdown, isolation=isolation
        )

    def retry(self, run_id: UUID | str, return_state: bool = False) -> Any:
        """Run a Failed, Crashed or Cancelled run of this flow again, from the run store:
        the same run id (its run count goes up, its states are appended), its stored
        parameters, and every task run an earlier attempt completed with a persisted result
        restored instead of run again (named Restored). Returns what a call returns (a
        coroutine to await for an async flow).

        KeyError for an unknown run; ValueError when it cannot be retried (not this flow's,
        still running, completed, nested); StoreError without a run store.
        """
        from asyncflow.engine.context import flow_run_var, restart_var
        from asyncflow.results.restore import prepare_restart

        if flow_run_var.get() is not None:
            raise RuntimeError(
                f"{self.name}.retry() runs a top-level flow run: call it outside any flow run."
            )
        call: Any = self
        if self.kind == "async":

            async def again() -> Any:
                import anyio
                import anyio.to_thread

                restarting, parameters = await anyio.to_thread.run_sync(
                    prepare_restart, self, run_id
                )
                token = restart_var.set(restarting)
                try:
                    return await call(**parameters, return_state=return_state)
                except BaseException:
                    if not restarting.used:  # it never started: the stored run is as before
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(restarting.undo)
                    raise
                finally:
                    restart_var.reset(token)

            return again()
        if self.kind != "sync":
            raise TypeError(f"Flow {self.name!r} is a generator flow: its runs cannot be retried.")
        restarting, parameters = prepare_restart(self, run_id)
        token = restart_var.set(restarting)
        try:
            return call(**parameters, return_state=return_state)
        except BaseException:
            if not restarting.used:  # it never started: the stored run is as before
                restarting.undo()
            raise
        finally:
            restart_var.reset(token)

    # -- calling --------------------------------------------------------------------------------
    if TYPE_CHECKING:  # the types of a call; the call itself is `entry.call` (a frame less)

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
            """A run of it (see the class docstring)."""

    else:
        __call__ = entry.call


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
