"""What `Flow` and `Task` share: wrapping a function, checking options, binding to instances."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from asyncflow.exceptions import InvalidDefinitionError, InvalidNameError, ReservedArgumentError
from asyncflow.naming import check_template
from asyncflow.parameters import Signature, callable_name
from asyncflow.states import State, StateType

Kind = Literal["sync", "async", "generator", "async_generator"]
#: A state hook: called with (flow or task, run, state); may be async.
StateHook = Callable[[Any, Any, "State[Any]"], Any]
S = TypeVar("S", bound="Spec")
H = TypeVar("H", bound=StateHook)
UNBOUND: Any = object()
_HOOK_TYPES = {
    "on_completion": StateType.COMPLETED,
    "on_failure": StateType.FAILED,
    "on_cancellation": StateType.CANCELLED,
    "on_crashed": StateType.CRASHED,
    "on_running": StateType.RUNNING,
}


def function_kind(fn: Callable[..., Any]) -> Kind:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn)):
        call = inspect.getattr_static(type(fn), "__call__", None)  # a callable object
        if call is not None and inspect.isfunction(call):
            fn = call
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "sync"


def load_by_name(module: str, qualname: str) -> Any:
    """The object at `qualname` in `module` (how tasks travel to worker processes)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check_callable(fn: Any, decorator: str) -> None:
    if isinstance(fn, str):
        raise InvalidDefinitionError(
            f"{decorator} got the string {fn!r} where a function was expected; pass options as "
            f"keywords, e.g. {decorator}(name={fn!r})."
        )
    if not callable(fn):
        raise InvalidDefinitionError(
            f"{decorator} can only decorate a function or method, got {type(fn).__name__} {fn!r}."
        )


#: Characters Prefect refuses in flow and task names (they break its URLs and keys).
BANNED_NAME_CHARACTERS = ("/", "%", "&", ">", "<")
#: Keywords a run call takes for itself: a function cannot have parameters by these names.
RESERVED_ARGUMENTS = ("return_state", "wait_for")
MAX_RETRY_DELAYS = 50


def check_name(name: Any, decorator: str) -> None:
    """A given name: a non-empty string without the characters Prefect bans."""
    if name is None:
        return
    if not isinstance(name, str):
        kind = decorator.lstrip("@")
        raise InvalidDefinitionError(
            f"Expected string for {kind} parameter 'name'; got {type(name).__name__} instead."
        )
    if not name.strip():
        raise InvalidDefinitionError(f"{decorator}: name must be a non-empty string, got {name!r}.")
    bad = [c for c in BANNED_NAME_CHARACTERS if c in name]
    if bad:
        raise InvalidNameError(
            f"{decorator}: name {name!r} contains {', '.join(map(repr, bad))}; names must not "
            f"contain any of {', '.join(BANNED_NAME_CHARACTERS)}."
        )


def check_retries(retries: Any, delay: Any, owner: str) -> int:
    if isinstance(delay, (list, tuple)) and len(delay) > MAX_RETRY_DELAYS:
        raise ValueError(
            f"Can not configure more than {MAX_RETRY_DELAYS} retry delays per task "
            f"({owner} has {len(delay)})."
        )
    if retries is None:
        return 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidDefinitionError(f"{owner}: retries must be an int >= 0, got {retries!r}.")
    ok = (
        delay is None
        or callable(delay)
        or _non_negative(delay)
        or (isinstance(delay, (list, tuple)) and all(_non_negative(d) for d in delay))
    )
    if not ok:
        raise InvalidDefinitionError(
            f"{owner}: retry_delay_seconds must be a number >= 0, a list of them, or a "
            f"callable, got {delay!r}."
        )
    return retries


def _non_negative(value: Any) -> bool:
    """A finite real number >= 0 that the clock can wait for (at most threading.TIMEOUT_MAX)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= threading.TIMEOUT_MAX  # also False for NaN and infinity
    )


def check_timeout(timeout: Any, owner: str) -> float | None:
    """Seconds, or None for no timeout; 0 also means none, as in Prefect (so that
    `with_options(timeout_seconds=0)` unsets one)."""
    if timeout is None or (_non_negative(timeout) and timeout == 0):
        return None
    if not _non_negative(timeout):
        raise InvalidDefinitionError(
            f"{owner}: timeout_seconds must be a finite number >= 0 (at most "
            f"{threading.TIMEOUT_MAX:g}; 0 or None for no timeout), got {timeout!r}."
        )
    return float(timeout)


def _flag(
    options: Mapping[str, Any],
    key: str,
    owner: str,
    default: bool | None = None,
    allow_none: bool = False,
) -> bool | None:
    value = options.get(key, default)
    if isinstance(value, bool) or (value is None and allow_none):
        return value
    expected = "True, False or None" if allow_none else "True or False"
    raise InvalidDefinitionError(f"{owner}: {key} must be {expected}, got {value!r}.")


def _serializer_option(value: Any, owner: str) -> Any:
    if value is None:
        return None
    from asyncflow.results.serializers import resolve_serializer

    try:
        return resolve_serializer(value)
    except ValueError as exc:
        raise InvalidDefinitionError(f"{owner}: {exc}") from None


def _storage_option(value: Any, owner: str) -> Any:
    if value is None:
        return None
    from asyncflow.results.storage import ResultStorage, storage_for

    if isinstance(value, ResultStorage):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return storage_for(value)
        except ImportError as exc:
            raise InvalidDefinitionError(f"{owner}: {exc}") from None
    raise InvalidDefinitionError(
        f"{owner}: result_storage must be a directory path or a ResultStorage, got {value!r}."
    )


class Spec:
    """A decorated function plus its options; `Flow` and `Task` build on it."""

    decorator: ClassVar[str]
    run_kind: ClassVar[int]  # KIND_FLOW or KIND_TASK: which engine runs it
    #: features attached to every run of it (`asyncflow.engine.lifecycle.RunHook`)
    lifecycle: tuple[Any, ...] = ()
    lifecycle_inherit = False  # nested flow runs take the inherited hooks of their parent
    fn: Callable[..., Any]
    kind: Kind
    signature: Signature
    _options: dict[str, Any]
    _bound: Any

    def _wrap(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        # Above @classmethod / @staticmethod (Prefect accepts both orders): wrap the function
        # and bind the way the method kind says (`__get__`).
        self._method_kind: type | None = None
        if isinstance(fn, (classmethod, staticmethod)):
            self._method_kind = type(fn)
            fn = fn.__func__
        check_callable(fn, self.decorator)
        self.fn = fn
        self.kind = function_kind(fn)
        self.isasync = self.kind in ("async", "async_generator")
        self.signature = Signature(fn)
        for reserved in RESERVED_ARGUMENTS:
            if reserved in self.signature.names:
                raise ReservedArgumentError(
                    f"{self.decorator} {callable_name(fn)!r}: {reserved!r} is a reserved "
                    "argument name (every run call takes it); rename the parameter."
                )
        self._options = options
        self._bound = UNBOUND
        self.__doc__ = fn.__doc__
        self.__name__ = callable_name(fn)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", None)  # type: ignore[assignment]
        self.__wrapped__ = fn

    def _set_common(self, options: Mapping[str, Any], default_name: str, run_name: str) -> str:
        """The options flows and tasks share: name, description, retries, timeout,
        log_prints, the run-name template (option `run_name`) and the state hooks the class
        takes. Returns the owner label for error messages."""
        name = options.get("name")
        check_name(name, self.decorator)
        self.name = name or default_name
        description = options.get("description")
        self.description = description if description is not None else inspect.getdoc(self.fn)
        owner = f"{self.decorator} {self.name!r}"
        delay = options.get("retry_delay_seconds")
        self.retries = check_retries(options.get("retries"), delay, owner)
        self.retry_delay_seconds = delay or 0
        self.timeout_seconds = check_timeout(options.get("timeout_seconds"), owner)
        self.log_prints = options.get("log_prints")
        if self.log_prints:
            from asyncflow.logging import enable_log_prints

            enable_log_prints()  # patched once, at decoration, so no run pays for it
        # Result options, as Prefect's (`asyncflow.results.persistence` acts on them).
        self.persist_result = _flag(options, "persist_result", owner, allow_none=True)
        self.cache_result_in_memory = _flag(options, "cache_result_in_memory", owner, default=True)
        self.result_serializer = _serializer_option(options.get("result_serializer"), owner)
        self.result_storage = _storage_option(options.get("result_storage"), owner)
        template = options.get(run_name)
        check_template(template, self.signature.names, self.signature.has_var_keyword, run_name)
        setattr(self, run_name, template)  # `flow_run_name` / `task_run_name`
        self._set_hooks({k: options.get(k) for k in _HOOK_TYPES if k in self.option_names})
        return owner

    def _set_hooks(self, hooks: dict[str, Any]) -> None:
        """Store state hooks by the state type that triggers them; check they are callables."""
        by_type: dict[StateType, list[Callable[..., Any]]] = {}
        for option, value in hooks.items():
            example = f"{self.decorator}({option}=[hook1, hook2])"
            if value is not None and (callable(value) or not isinstance(value, Iterable)):
                raise InvalidDefinitionError(
                    f"Expected iterable for '{option}'; got {type(value).__name__} instead. "
                    f"Please provide a list of hooks to '{option}': {example}"
                )
            funcs = list(value or ())
            for fn in funcs:
                if not callable(fn):
                    raise InvalidDefinitionError(
                        f"Expected callables in '{option}'; got {type(fn).__name__} instead. "
                        f"Please provide a list of hooks to '{option}': {example}"
                    )
            if funcs:
                by_type.setdefault(_HOOK_TYPES[option], []).extend(funcs)
        self._hooks = by_type
        self.has_hooks = bool(by_type)

    def hooks_for(self, state: State[Any]) -> list[Callable[..., Any]]:
        return self._hooks.get(state.type, [])

    # -- hook decorators, as in Prefect: `@my_flow.on_failure` (flows add two more) ------------
    def on_completion(self, fn: H) -> H:
        """Add a hook called when a run of this flow or task completes; returns `fn`."""
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: H) -> H:
        """Add a hook called when a run of this flow or task fails; returns `fn`."""
        return self._add_hook("on_failure", fn)

    def on_running(self, fn: H) -> H:
        """Add a hook called when a run of this flow or task enters Running; returns `fn`."""
        return self._add_hook("on_running", fn)

    def _add_hook(self, option: str, fn: H) -> H:
        """`@my_flow.on_completion`-style registration: `fn` joins the option's hooks (and
        copies made with `with_options` keep it); returns `fn` unchanged."""
        if not callable(fn):
            raise InvalidDefinitionError(f"{self.decorator}: {option} hooks must be callables.")
        self._options[option] = [*(self._options.get(option) or ()), fn]
        self._hooks.setdefault(_HOOK_TYPES[option], []).append(fn)
        self.has_hooks = True
        return fn

    #: the option names the decorator takes (its TypedDict's keys)
    option_names: ClassVar[frozenset[str]]

    def _with_options(self: S, changes: Mapping[str, Any]) -> S:
        """A copy with some options changed; the original is untouched."""
        check_option_names(changes, type(self))
        cls: Any = type(self)
        clone: S = cls(self.fn, **{**self._options, **changes})
        clone._method_kind = self._method_kind
        clone._bound = self._bound
        return clone

    def __get__(self: S, instance: Any, owner: type | None = None) -> S:
        """Bind to an instance (instance methods) or class (@classmethod on top or below)."""
        kind = self._method_kind
        if kind is staticmethod:
            return self
        if kind is classmethod:
            instance = owner if owner is not None else type(instance)
        if instance is None:
            return self
        return self._rebound(instance)

    def _rebound(self: S, instance: Any) -> S:
        """A shallow copy bound to `instance`. Not `copy.copy`: it would go through
        `__reduce__`, which a task defines to travel by name to worker processes."""
        bound: S = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._bound = instance
        return bound

    def _args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if self._bound is UNBOUND else (self._bound, *args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, fn={self.__qualname__})"

    name: str


def check_option_names(options: Mapping[str, Any], cls: Any) -> None:
    """Reject misspelled decorator options with a suggestion, before anything is wrapped."""
    allowed = sorted(cls.option_names)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidDefinitionError(
            f"@{cls.__name__.lower()} got unknown option(s) {', '.join(hints)}. "
            f"Known options: {', '.join(allowed)}."
        )
