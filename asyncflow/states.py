"""States: what a flow or task run is doing or how it ended.

`State` is a plain ``__slots__`` object rather than a pydantic model: the engine creates
one per finished run, and that has to cost well under a microsecond.
"""

from __future__ import annotations

import copy
import datetime
import enum
import time
from typing import Any, Generic, TypeVar
from uuid import UUID

from asyncflow._awaiting import awaited_by_caller
from asyncflow.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    PausedRun,
    UnfinishedRun,
)

R = TypeVar("R")


class StateType(str, enum.Enum):
    """The kind of a state; a state's *name* may differ (``Retrying`` is RUNNING)."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_TYPES


TERMINAL_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)
_COMPLETED = StateType.COMPLETED  # (a module global is found faster than an enum member)
# Default display name of each type: "Completed", "Failed", ...
DEFAULT_NAMES = {t: t.value.capitalize() for t in StateType}


class StateDetails:
    """Links and scheduling facts attached to a state."""

    __slots__ = (
        "child_flow_run_id",
        "flow_run_id",
        "parent_task_run_id",
        "scheduled_time",
        "task_run_id",
    )

    def __init__(
        self,
        flow_run_id: UUID | None = None,
        task_run_id: UUID | None = None,
        child_flow_run_id: UUID | None = None,
        parent_task_run_id: UUID | None = None,
        scheduled_time: datetime.datetime | None = None,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.child_flow_run_id = child_flow_run_id
        self.parent_task_run_id = parent_task_run_id
        self.scheduled_time = scheduled_time

    def items(self) -> list[tuple[str, Any]]:
        """The details that are set, in a stable order."""
        return [(k, getattr(self, k)) for k in _DETAIL_ORDER if getattr(self, k) is not None]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"StateDetails({inner})"


_DETAIL_ORDER = (
    "flow_run_id",
    "task_run_id",
    "child_flow_run_id",
    "parent_task_run_id",
    "scheduled_time",
)


class State(Generic[R]):
    """A run's state: type, display name, optional message, timestamp and data.

    ``data`` holds the run's result for COMPLETED states and the exception (or the list
    of upstream states) for FAILED/CRASHED ones.
    """

    __slots__ = ("_details", "_ts", "data", "message", "name", "result_record", "type")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        data: Any = None,
        state_details: StateDetails | None = None,
        timestamp: float | None = None,
    ) -> None:
        self.type = type
        self.name = name or DEFAULT_NAMES[type]
        self.message = message
        self.data = data
        # StateDetails, or (registry, row) to build them from when first asked for
        self._details: Any = state_details
        self._ts = time.time() if timestamp is None else timestamp
        #: the `ResultRecord` of the run's persisted result (None: not persisted)
        self.result_record: Any = None

    @property
    def timestamp(self) -> datetime.datetime:
        """When the state was entered (UTC)."""
        return datetime.datetime.fromtimestamp(self._ts, tz=datetime.timezone.utc)

    @property
    def state_details(self) -> StateDetails:
        details = self._details
        if details is None:
            details = self._details = StateDetails()
        elif type(details) is tuple:  # (registry, row): built on first access, off the hot path
            registry, row = details
            details = self._details = registry.details(row)
        return details  # type: ignore[no-any-return]

    # -- predicates -----------------------------------------------------------------------
    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        return self.type in TERMINAL_TYPES

    # -- result ---------------------------------------------------------------------------
    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's result. A failed, crashed or cancelled state raises its error; with
        `raise_on_failure=False` it returns its data instead, as Prefect does: the exception,
        the states of an aggregate (`'1/3 states failed.'`), or what a manual
        `Failed(data=...)` holds (its error, when it holds nothing). A state that is not
        final raises `UnfinishedRun` (`PausedRun` when paused).

        `await state.result()`, as code written for Prefect says in async functions, works
        too: awaited at the call, it returns an awaitable of the same."""
        if awaited_by_caller():
            return self.aresult(raise_on_failure)
        return self._result(raise_on_failure)

    async def aresult(self, raise_on_failure: bool = True) -> Any:
        """`result()` as a coroutine."""
        return self._result(raise_on_failure)

    def _result(self, raise_on_failure: bool = True) -> Any:
        type_ = self.type
        if type_ is _COMPLETED:
            data = self.data
            if type(data) is _record_type:  # persisted, not kept in memory: read it back
                return data.load()
            return data
        if type_ in _ERROR_TYPES:
            if not raise_on_failure and self.data is not None:
                return self.data
            exc = state_exception(self)
            if raise_on_failure:
                raise exc
            return exc
        if type_ is StateType.PAUSED:
            raise PausedRun("Run is paused, its result is not available.")
        raise UnfinishedRun(f"Run is in {type_.value} state, its result is not available.")

    # -- display --------------------------------------------------------------------------
    def __str__(self) -> str:
        parts = []
        if self.message:
            parts.append(repr(self.message))
        if self.name.lower() != self.type.value.lower():
            parts.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(parts)})"

    def __repr__(self) -> str:
        parts = [f"message={self.message!r}", f"type={self.type.value}", f"result={self.data!r}"]
        if self._details is not None:  # the run's own id, as Prefect shows it
            details = self.state_details
            if details.task_run_id is not None:
                parts.append(f"task_run_id={details.task_run_id}")
            elif details.flow_run_id is not None:
                parts.append(f"flow_run_id={details.flow_run_id}")
        return f"{self.name}({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a recorded state refers to its registry: it travels with its details instead
        details = self.state_details if self._details is not None else None
        args = (self.type, self.name, self.message, self.data, details, self._ts)
        return (_rebuild, (args, self.result_record))

    def copy(self, **changes: Any) -> State[R]:
        new: State[R] = State(
            self.type, self.name, self.message, self.data, self._details, self._ts
        )
        new.result_record = self.result_record
        for key, value in changes.items():
            setattr(new, key, value)
        return new


_ERROR_TYPES = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


def _rebuild(args: tuple[Any, ...], record: Any) -> State[Any]:
    state: State[Any] = State(*args)
    state.result_record = record
    return state


class _NoRecord:  # what `_record_type` is until `asyncflow.results` is imported
    pass


_record_type: Any = _NoRecord


def register_result_record_type(cls: type) -> None:
    """Set by `asyncflow.results.record` (above this floor): the type of a persisted
    result's reference, which `State.result()` reads back."""
    global _record_type
    _record_type = cls


_WRAPPERS = {
    StateType.FAILED: (FailedRun, "Run failed."),
    StateType.CRASHED: (CrashedRun, "Run crashed."),
    StateType.CANCELLED: (CancelledRun, "Run cancelled."),
}


def state_exception(state: State[Any]) -> BaseException:
    """The exception a failed, crashed or cancelled state stands for: the one it holds,
    that of the first failed state it holds, or FailedRun / CrashedRun / CancelledRun with
    its message (or the string it holds)."""
    data = state.data
    if isinstance(data, BaseException):
        return data
    if isinstance(data, State):
        return state_exception(data)
    if isinstance(data, (list, tuple, set)):
        for item in data:
            inner = getattr(item, "state", item)
            if isinstance(inner, State) and inner.type in _ERROR_TYPES:
                return state_exception(inner)
    wrapper, default = _WRAPPERS.get(state.type, _WRAPPERS[StateType.FAILED])
    return wrapper(data if isinstance(data, str) else state.message or default)


def get_state_exception(state: State[Any]) -> Any:
    """`state_exception` by Prefect's name (`await get_state_exception(state)` works too)."""
    exc = state_exception(state)
    if awaited_by_caller():
        return _value(exc)
    return exc


async def _value(value: Any) -> Any:
    return value


def raise_state_exception(state: State[Any]) -> Any:
    """Raise the exception a failed, crashed or cancelled state stands for; do nothing
    for other states. (`await raise_state_exception(state)` works as well.)"""
    if state.type in _ERROR_TYPES:
        raise state_exception(state)
    if awaited_by_caller():
        return _value(None)
    return None


# -- constructors ---------------------------------------------------------------------------
def _make(type_: StateType, default_name: str | None = None) -> Any:
    def constructor(
        message: str | None = None,
        *,
        name: str | None = None,
        data: Any = None,
        state_details: StateDetails | None = None,
    ) -> State[Any]:
        return State(type_, name or default_name, message, data, state_details)

    constructor.__name__ = default_name or DEFAULT_NAMES[type_]
    constructor.__doc__ = f"A new {constructor.__name__} state (type {type_.value})."
    return constructor


Scheduled = _make(StateType.SCHEDULED)
Pending = _make(StateType.PENDING)
Running = _make(StateType.RUNNING)
Completed = _make(StateType.COMPLETED)
Failed = _make(StateType.FAILED)
Crashed = _make(StateType.CRASHED)
Cancelled = _make(StateType.CANCELLED)
Cancelling = _make(StateType.CANCELLING)
Paused = _make(StateType.PAUSED)
AwaitingRetry = _make(StateType.SCHEDULED, "AwaitingRetry")
Retrying = _make(StateType.RUNNING, "Retrying")
TimedOut = _make(StateType.FAILED, "TimedOut")
NotReady = _make(StateType.PENDING, "NotReady")


# -- final state determination --------------------------------------------------------------
_PLAIN = (int, float, str, bytes, bool, type(None), dict)


def _as_state(item: Any) -> State[Any] | None:
    if isinstance(item, State):
        return item
    # A future (any class with `_final_state_for_return`, as TaskRunFuture): the final state
    # it stands for. Duck-typed, so this floor needs no import of (or patch from) futures.
    final = getattr(type(item), "_final_state_for_return", None)
    if final is not None:
        return final(item)  # type: ignore[no-any-return]
    return None


def _recorded(state: State[Any]) -> bool:
    details = state._details
    if details is None or type(details) is tuple:
        return details is not None
    return details.flow_run_id is not None or details.task_run_id is not None


def state_from_return_value(value: Any) -> State[Any]:
    """Apply the final-state rules to what a run's body returned (Prefect's rules).

    A State the user made is used as is. A run's state or future, or a list/tuple/set made
    only of them, is judged as a group: Completed when all completed, else Cancelled when
    any was cancelled, else Failed; the group is the new state's data. Anything else
    completes with the value as result.
    """
    if isinstance(value, _PLAIN):
        return State(_COMPLETED, data=value)
    single = _as_state(value)
    if single is not None:
        if not _recorded(single):  # made by the user: used as is
            return single
        return _aggregate(single, [single])
    if isinstance(value, (list, tuple, set)) and value:
        states = [_as_state(item) for item in value]
        if all(s is not None for s in states):
            return _aggregate(value, [s for s in states if s is not None])
    return State(StateType.COMPLETED, data=value)


def _aggregate(value: Any, states: list[State[Any]]) -> State[Any]:
    if isinstance(value, State) or all(s is v for s, v in zip(states, value, strict=True)):
        data = value
    elif isinstance(value, tuple):
        data = value._make(states) if hasattr(value, "_make") else tuple(states)
    elif isinstance(value, (set, frozenset)):
        data = type(value)(states)
    else:
        data = states
    total = len(states)
    counts: dict[StateType, int] = {}
    for s in states:
        counts[s.type] = counts.get(s.type, 0) + 1
    if counts.get(StateType.COMPLETED) == total:
        return State(StateType.COMPLETED, message="All states completed.", data=data)
    if StateType.CANCELLED in counts:  # cancellations, not failures (as in Prefect)
        message = f"{counts[StateType.CANCELLED]}/{total} states cancelled."
        return State(StateType.CANCELLED, message=message, data=data)
    failed = counts.get(StateType.FAILED, 0) + counts.get(StateType.CRASHED, 0)
    if StateType.PAUSED in counts:
        message = f"{counts[StateType.PAUSED]}/{total} states paused."
    elif failed:
        message = f"{failed}/{total} states failed."
    else:
        not_final = sum(n for t, n in counts.items() if t not in TERMINAL_TYPES)
        message = f"{not_final}/{total} states are not final."
    return State(StateType.FAILED, message=message, data=data)


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})  # (exact types)
_SEQUENCES = frozenset({list, tuple, set, frozenset})


def resolve_futures_to_states(value: Any, _depth: int = 0) -> Any:
    """`value` with each future in it replaced by its final state (waiting for it), in
    lists, tuples, sets and dicts down to 32 levels; the same object when none is in it.
    What a flow returns goes through this, as in Prefect."""
    kind = type(value)
    if kind in _SCALARS or _depth > 32:
        return value
    # A container of scalars only (the usual case) is told by one C-level pass over types.
    if isinstance(value, dict):
        if _SCALARS.issuperset(map(type, value.values())):
            return value
        resolved = {k: resolve_futures_to_states(v, _depth + 1) for k, v in value.items()}
        if all(resolved[k] is v for k, v in value.items()):
            return value
        if kind is dict:
            return resolved
        copied = copy.copy(value)  # OrderedDict, defaultdict...: the same kind, resolved
        copied.update(resolved)
        return copied
    if isinstance(value, (list, tuple, set, frozenset)):
        if _SCALARS.issuperset(map(type, value)):
            return value
        items = [resolve_futures_to_states(v, _depth + 1) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if kind in _SEQUENCES:
            return kind(items)
        if isinstance(value, tuple) and hasattr(value, "_make"):  # a namedtuple
            return value._make(items)
        # other subclasses (FutureList, what .map() returns): the plain kind
        for base in (list, tuple, set, frozenset):
            if isinstance(value, base):
                return base(items)
    final = getattr(kind, "_final_state_for_return", None)
    return value if final is None else final(value)


__all__ = [
    "TERMINAL_TYPES",
    "AwaitingRetry",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "NotReady",
    "Paused",
    "Pending",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateDetails",
    "StateType",
    "TimedOut",
    "get_state_exception",
    "raise_state_exception",
]
