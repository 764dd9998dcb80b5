"""States: what a flow or task run is doing or how it ended.

`State` is a plain ``__slots__`` object rather than a pydantic model: the engine creates
one per finished run, and that has to cost well under a microsecond.
"""

from __future__ import annotations

import datetime
import enum
import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar
from uuid import UUID

from asyncflow.exceptions import CancelledRun, CrashedRun, FailedRun

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

    __slots__ = ("_details", "_ts", "data", "message", "name", "type")

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
        `Failed(data=...)` holds (its error, when it holds nothing)."""
        if self.type in _ERROR_TYPES:
            if not raise_on_failure and self.data is not None:
                return self.data
            exc = state_exception(self)
            if raise_on_failure:
                raise exc
            return exc
        return self.data

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

    def copy(self, **changes: Any) -> State[R]:
        new: State[R] = State(
            self.type, self.name, self.message, self.data, self._details, self._ts
        )
        for key, value in changes.items():
            setattr(new, key, value)
        return new


_ERROR_TYPES = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


def state_exception(state: State[Any]) -> BaseException:
    """The exception a failed, crashed or cancelled state stands for."""
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
    cls = {StateType.CRASHED: CrashedRun, StateType.CANCELLED: CancelledRun}.get(
        state.type, FailedRun
    )
    return cls(state.message or f"Run ended in state {state}")


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
    """Apply the final-state rules to what a flow body returned.

    A State the user made is used as is; a run's state or future counts as a group of one;
    a list/tuple/set of states or futures fails when any of
    them did not complete; anything else completes with the value as result.
    """
    if isinstance(value, _PLAIN):
        return State(StateType.COMPLETED, data=value)
    single = _as_state(value)
    if single is not None:
        if not _recorded(single):  # made by the user: used as is
            return single
        # A run's state (a returned future or `return_state=True`): judged like a group of
        # one, keeping that run's result (or exception) as the flow's.
        return _aggregate((single,), [single]).copy(data=single.data)
    if isinstance(value, (list, tuple, set)) and value:
        states = [_as_state(item) for item in value]
        if all(s is not None for s in states):
            return _aggregate(value, [s for s in states if s is not None])
    return State(StateType.COMPLETED, data=value)


def _aggregate(value: Iterable[Any], states: list[State[Any]]) -> State[Any]:
    data = type(value)(states) if isinstance(value, (tuple, set)) else states
    failed = [s for s in states if s.type in (StateType.FAILED, StateType.CRASHED)]
    if failed:
        return State(
            StateType.FAILED, message=f"{len(failed)}/{len(states)} states failed.", data=data
        )
    cancelled = [s for s in states if s.type is StateType.CANCELLED]
    if cancelled:  # cancellations, not failures (as in Prefect): the run ends Cancelled
        return State(
            StateType.CANCELLED,
            message=f"{len(cancelled)}/{len(states)} states cancelled.",
            data=data,
        )
    not_done = [s for s in states if s.type is not StateType.COMPLETED]
    if not_done:
        return State(
            StateType.FAILED,
            message=f"{len(not_done)}/{len(states)} states are not final.",
            data=data,
        )
    return State(StateType.COMPLETED, message="All states completed.", data=data)


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
]
