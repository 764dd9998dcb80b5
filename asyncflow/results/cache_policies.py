"""Cache policies: what a task run's cache key is made of (Prefect's names and semantics).

`INPUTS` (the task's arguments), `TASK_SOURCE` (its code), `FLOW_PARAMETERS` (its flow
run's parameters), `RUN_ID` (its flow run), combined with `+`; `INPUTS - "arg"` leaves an
argument out; `NO_CACHE` (alias `NONE`) turns caching off; `DEFAULT` is
`INPUTS + TASK_SOURCE + RUN_ID`. A key is a SHA-256 hex digest of its parts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from typing import Any


class Unhashable(Exception):
    """An input the INPUTS policy can neither JSON-encode nor pickle."""


def hash_objects(*objects: Any) -> str:
    """A stable digest: JSON when the values are JSON, else cloudpickle's bytes."""
    try:
        blob = _ENCODER.encode(objects).encode()
    except (TypeError, ValueError):
        import cloudpickle  # type: ignore[import-untyped]

        try:
            blob = cloudpickle.dumps(objects)
        except Exception as exc:
            raise Unhashable(f"{type(exc).__name__}: {exc}") from exc
    return hashlib.sha256(blob).hexdigest()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic models: by value
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(type(obj).__name__)


# made once: `json.dumps` with options builds an encoder per call
_ENCODER = json.JSONEncoder(sort_keys=True, default=_json_default)


class CachePolicy:
    """Makes a task run's cache key; None means "do not cache this run"."""

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(self, _NoCache) or isinstance(other, _NoCache):
            return other if isinstance(self, _NoCache) else self
        return CompoundCachePolicy([*_parts(self), *_parts(other)])

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            return NotImplemented
        return CompoundCachePolicy([p - name if isinstance(p, Inputs) else p for p in _parts(self)])


def inputs_policy(policy: CachePolicy | None) -> Inputs:
    """The INPUTS part of a policy (with its exclusions), else INPUTS itself."""
    if policy is not None:
        for part in _parts(policy):
            if isinstance(part, Inputs):
                return part
    return INPUTS


def _parts(policy: CachePolicy) -> list[CachePolicy]:
    return list(policy.policies) if isinstance(policy, CompoundCachePolicy) else [policy]


class CompoundCachePolicy(CachePolicy):
    """Several policies: the key covers each part (None when any part gives None)."""

    def __init__(self, policies: list[CachePolicy]) -> None:
        self.policies = tuple(policies)

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        keys = [p.compute_key(run, inputs) for p in self.policies]
        if any(k is None for k in keys):
            return None
        return hash_objects(*keys)

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.policies))


class Inputs(CachePolicy):
    """The task's arguments by name (those in `exclude` left out)."""

    def __init__(self, exclude: tuple[str, ...] = ()) -> None:
        self.exclude = tuple(exclude)

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        # the run's digests of these very inputs so far (its cache and restore keys share one)
        data = getattr(run, "hook_data", None)
        made = getattr(data, "inputs_keys", None) if inputs is getattr(data, "inputs", 0) else None
        if made is not None and self.exclude in made:
            return made[self.exclude]  # type: ignore[no-any-return]
        key = hash_objects({k: v for k, v in inputs.items() if k not in self.exclude})
        if made is not None:
            made[self.exclude] = key
        return key

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            return NotImplemented
        return Inputs((*self.exclude, name))

    def __repr__(self) -> str:
        return "INPUTS" + "".join(f" - {name!r}" for name in self.exclude)


_source_keys: dict[Any, str] = {}  # code object -> digest of its function's source


class TaskSource(CachePolicy):
    """The task function's source code (its bytecode when the source is not there)."""

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        fn = run.spec.fn
        code = getattr(fn, "__code__", fn)
        key = _source_keys.get(code)
        if key is None:  # read once per function: the source is not re-read per call
            try:
                source: Any = inspect.getsource(fn)
            except (OSError, TypeError):
                source = code.co_code.hex() if hasattr(code, "co_code") else repr(fn)
            key = _source_keys[code] = hash_objects(source)
        return key

    def __repr__(self) -> str:
        return "TASK_SOURCE"


class FlowParameters(CachePolicy):
    """The parameters of the flow run the task run belongs to."""

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        flow_run = run.parent
        return hash_objects(flow_run.parameters if flow_run is not None else {})

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


class RunId(CachePolicy):
    """The flow run the task run belongs to (or the task run's own id outside a flow)."""

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        flow_run = run.parent
        return str(flow_run.id if flow_run is not None else run.id)

    def __repr__(self) -> str:
        return "RUN_ID"


class _NoCache(CachePolicy):
    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NO_CACHE"


class CacheKeyFnPolicy(CachePolicy):
    """`cache_key_fn(context, parameters) -> str | None`, as Prefect calls it (the context
    has `.task`, `.task_run` and `.flow_run`)."""

    def __init__(self, fn: Callable[[Any, dict[str, Any]], str | None]) -> None:
        self.fn = fn

    def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
        key = self.fn(_Context(run), inputs)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"cache_key_fn must return a string or None, got {key!r}.")
        return key

    def __repr__(self) -> str:
        return f"cache_key_fn({getattr(self.fn, '__name__', self.fn)!r})"


class _Context:
    """What `cache_key_fn` gets as its context."""

    def __init__(self, run: Any) -> None:
        self.task = run.spec
        self.task_run = run
        self.flow_run = run.parent


INPUTS = Inputs()
TASK_SOURCE = TaskSource()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
NO_CACHE = NONE = _NoCache()
DEFAULT = INPUTS + TASK_SOURCE + RUN_ID

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "CompoundCachePolicy",
    "Inputs",
]
