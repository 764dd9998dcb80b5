"""`@task`, the `Task` object, `.submit()` and `.map()`."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, overload

from asyncflow._spec import (
    UNBOUND,
    Spec,
    StateHook,
    check_option_names,
    load_by_name,
)
from asyncflow.annotations import allow_failure, opaque, quote, unmapped
from asyncflow.engine import entry, submission
from asyncflow.engine.resolve import resolve
from asyncflow.exceptions import (
    InvalidDefinitionError,
    MappingLengthMismatch,
    MappingMissingIterable,
)
from asyncflow.futures import FutureList, TaskRunFuture
from asyncflow.naming import RunName
from asyncflow.registry import KIND_TASK
from asyncflow.results import persistence
from asyncflow.states import State

if TYPE_CHECKING:
    import os

    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from asyncflow.results import ResultStorage, Serializer
    from asyncflow.results.cache_policies import CachePolicy
    from asyncflow.task_runners import TaskRunner

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
    persist_result: bool | None
    cache_result_in_memory: bool
    result_storage: str | os.PathLike[str] | ResultStorage | None
    result_serializer: str | Serializer | None
    result_storage_key: str | None
    cache_policy: CachePolicy | None
    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None
    cache_expiration: datetime.timedelta | None
    refresh_cache: bool | None
    on_completion: list[StateHook] | None
    on_failure: list[StateHook] | None
    on_running: list[StateHook] | None


class Task(Spec, Generic[P, R]):
    """A function turned into a task: each call is a recorded task run.

    Called inside a flow it runs inline and returns the result; `.submit()` runs it on the
    flow's task runner (sync) or in the flow's task group (async) and returns a future.
    """

    decorator = "@task"
    run_kind = KIND_TASK
    option_names = TaskOptions.__optional_keys__
    task_run_name: RunName  # (set by `_set_common`)
    cache: Any = None  # the cache policy in effect (`persistence.lifecycle_for` sets it)

    def with_options(self, **changes: Unpack[TaskOptions]) -> Task[P, R]:
        """A copy with some options changed; the original is untouched."""
        return self._with_options(changes)

    def __init__(self, fn: Callable[P, R], **options: Unpack[TaskOptions]) -> None:
        check_option_names(options, type(self))
        self._wrap(fn, dict(options))
        owner = self._set_common(options, self.__name__, "task_run_name")
        given = options.get("tags") or ()
        tags = given if isinstance(given, str) else list(given)
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"Task tags must be a list of strings, got {tags!r}.")
        self.tags: set[str] = set(tags)  # a set, as Prefect's
        self.version = options.get("version")
        retry_jitter_factor = options.get("retry_jitter_factor")
        if retry_jitter_factor is not None and (
            not isinstance(retry_jitter_factor, (int, float)) or retry_jitter_factor < 0
        ):
            raise InvalidDefinitionError(
                f"`retry_jitter_factor` must be a number >= 0 "
                f"({owner} got {retry_jitter_factor!r})."
            )
        self.retry_jitter_factor = retry_jitter_factor
        retry_condition_fn = options.get("retry_condition_fn")
        if retry_condition_fn is not None and not callable(retry_condition_fn):
            raise InvalidDefinitionError(f"{owner}: retry_condition_fn must be callable.")
        self.retry_condition_fn = retry_condition_fn
        key = options.get("result_storage_key")
        if key is not None and not isinstance(key, str):
            raise InvalidDefinitionError(f"{owner}: result_storage_key must be a string template.")
        self.result_storage_key = key
        self._set_cache_options(options, owner)
        self.lifecycle = persistence.lifecycle_for(self, is_flow=False)

    def _set_cache_options(self, options: Mapping[str, Any], owner: str) -> None:
        from asyncflow.results.cache_policies import CachePolicy

        policy = options.get("cache_policy")
        if policy is not None and not isinstance(policy, CachePolicy):
            raise InvalidDefinitionError(
                f"{owner}: cache_policy must be a cache policy (INPUTS, TASK_SOURCE, ... "
                f"from asyncflow.cache_policies), got {policy!r}."
            )
        key_fn = options.get("cache_key_fn")
        if key_fn is not None and not callable(key_fn):
            raise InvalidDefinitionError(f"{owner}: cache_key_fn must be callable.")
        expiration = options.get("cache_expiration")
        if expiration is not None and (
            not isinstance(expiration, datetime.timedelta) or expiration.total_seconds() <= 0
        ):
            raise InvalidDefinitionError(
                f"{owner}: cache_expiration must be a positive datetime.timedelta, got "
                f"{expiration!r}."
            )
        refresh = options.get("refresh_cache")
        if refresh is not None and not isinstance(refresh, bool):
            raise InvalidDefinitionError(f"{owner}: refresh_cache must be True or False.")
        self.cache_policy = policy
        self.cache_key_fn = key_fn
        self.cache_expiration = expiration
        self.refresh_cache = bool(refresh)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by reference (module + name), so process pools can ship it."""
        return (load_by_name, (self.__module__, self.__qualname__))

    # -- inline calls ---------------------------------------------------------------------------
    if TYPE_CHECKING:  # the types of a call; the call itself is `entry.call` (a frame less)

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
            """A run of it (see the class docstring)."""

    else:
        __call__ = entry.call

    # -- submission -----------------------------------------------------------------------------
    @overload
    def submit(self, /, *args: Any, return_state: Literal[True], **kwargs: Any) -> State[Any]: ...
    @overload
    def submit(self, /, *args: Any, **kwargs: Any) -> TaskRunFuture[Any]: ...
    def submit(self, /, *args: Any, **kwargs: Any) -> Any:
        """Start a task run concurrently and return its future.

        Futures and states among the arguments (and in ``wait_for=[...]``) are waited for
        without holding a worker, then replaced by their results.
        """
        return submission.submit(self, args, kwargs)

    def _submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], runner: TaskRunner | None = None
    ) -> Any:
        return submission.submit(self, args, kwargs, runner)

    def map(self, /, *args: Any, **kwargs: Any) -> Any:
        """Submit one task run per element of the iterable arguments.

        Wrap constant arguments in `unmapped(...)`; strings and bytes are never iterated,
        nor are defaults, `**kwargs` or the instance of a method. All iterables must have
        the same length. With `return_state=True`, waits and returns the final States.
        """
        return self._map(args, kwargs)

    def _map(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], runner: TaskRunner | None = None
    ) -> Any:
        wait_for = kwargs.pop("wait_for", None)
        return_state = kwargs.pop("return_state", False)
        parameters, explicit = self.signature.bind(self._args(args), kwargs)
        fixed = self.signature.not_mapped(explicit, self._bound is not UNBOUND)
        mapped: dict[str, list[Any]] = {}
        static: dict[str, Any] = {}
        for key, value in parameters.items():
            if key in fixed:
                static[key] = value
                continue
            if isinstance(value, unmapped):
                static[key] = value.value
                continue
            # As Prefect: a future or state is mapped over its result; an annotation over a
            # list (`quote([...])`, `allow_failure([...])`) wraps each element.
            wrapper = type(value) if isinstance(value, _WRAPPERS) else None
            inner = value if wrapper is None else value.value
            if wrapper is not quote and isinstance(inner, (TaskRunFuture, State)):
                inner = resolve(inner, wrapper is allow_failure)
            if _iterable(inner):
                mapped[key] = list(inner) if wrapper is None else [wrapper(v) for v in inner]
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
        self_unbound = self if self._bound is UNBOUND else self._rebound(UNBOUND)
        futures: FutureList[Any] = FutureList()
        for i in range(n):
            call_args, call_kwargs = self.signature.to_call(
                {**static, **{k: v[i] for k, v in mapped.items()}}
            )
            call_kwargs["wait_for"] = wait_for
            futures.append(submission.submit(self_unbound, call_args, call_kwargs, runner))
        if return_state:
            futures.wait()
            return [future.state for future in futures]
        return futures


_WRAPPERS = (allow_failure, opaque, quote)


def _iterable(value: Any) -> bool:
    if isinstance(value, (str, bytes, bytearray)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True


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
