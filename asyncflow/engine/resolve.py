"""Turning futures and states inside call arguments into data before a run starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from asyncflow.annotations import allow_failure, opaque, quote
from asyncflow.exceptions import UpstreamTaskError
from asyncflow.futures import TaskRunFuture
from asyncflow.states import State, StateType

# Values of these types cannot contain futures; the common case costs one type check each.
_ATOMIC = (str, int, float, bool, bytes, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)


def needs_resolving(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for value in args:
        if not isinstance(value, _ATOMIC):
            return True
    return bool(kwargs) and any(not isinstance(value, _ATOMIC) for value in kwargs.values())


def upstreams(value: Any) -> Iterator[TaskRunFuture[Any]]:
    """Every future inside `value` (not inside `quote`)."""
    if isinstance(value, TaskRunFuture):
        yield value
    elif isinstance(value, allow_failure):
        yield from upstreams(value.value)
    elif isinstance(value, opaque):
        if isinstance(value.value, TaskRunFuture):
            yield value.value
    elif isinstance(value, dict):
        for item in value.values():
            yield from upstreams(item)
    elif isinstance(value, _CONTAINERS):
        for item in value:
            yield from upstreams(item)


def resolve(value: Any, allow: bool = False) -> Any:
    """`value` with futures/states replaced by their results (recursing into containers).

    A future or state that did not complete raises UpstreamTaskError unless inside
    `allow_failure`, which passes its result or exception along.
    """
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, TaskRunFuture):
        value.wait()
        return _state_value(value.state, allow)
    if isinstance(value, State):
        return _state_value(value, allow)
    if isinstance(value, quote):
        return value.value
    if isinstance(value, allow_failure):
        return resolve(value.value, True)
    if isinstance(value, opaque):
        inner = value.value
        return resolve(inner, allow) if isinstance(inner, (TaskRunFuture, State)) else inner
    # Containers are rebuilt only when something inside changed, so a caller's list or dict
    # reaches the task as the same object when it holds no futures or states.
    if isinstance(value, dict):
        resolved = {k: resolve(v, allow) for k, v in value.items()}
        same = all(resolved[k] is v for k, v in value.items())
        return value if same else resolved
    if isinstance(value, _CONTAINERS):
        items = [resolve(v, allow) for v in value]
        same = all(new is old for new, old in zip(items, value, strict=True))
        return value if same else type(value)(items)
    return value


def _state_value(state: State[Any], allow: bool) -> Any:
    if state.type is StateType.COMPLETED:
        return state._result()
    if allow and state.type.is_terminal:
        return state._result(False)
    run_id = state.state_details.task_run_id if state._details is not None else None
    run = "Upstream task run" if run_id is None else f"Upstream task run '{run_id}'"
    raise UpstreamTaskError(f"{run} did not reach a 'COMPLETED' state (it is {state}).")


def check_wait_for(wait_for: Any) -> None:
    """Raise UpstreamTaskError when a `wait_for` dependency did not complete."""
    for item in wait_for or ():
        allow = isinstance(item, allow_failure)
        target = item.value if allow else item
        if isinstance(target, TaskRunFuture):
            target.wait()
            target = target.state
        if isinstance(target, State) and target.type is not StateType.COMPLETED and not allow:
            raise UpstreamTaskError(
                f"Upstream task run in wait_for did not reach a 'COMPLETED' state (it is {target})."
            )
