"""The hook points of every run's lifecycle, where features attach without new driving code.

Every kind of run (flow or task, sync or async, plain or generator) passes the same three
points, in this order, from the same engine methods:

1. `before_body`: the attempt has entered Running; a hook may return a final state that
   stands for the body's outcome, and the body is not called (a cache hit).
2. `after_outcome`: the attempt's outcome is known (its value or error made a state); a
   hook may replace the state (persisting the result). Retries are decided after it.
3. `before_terminal`: the run's terminal state is about to be recorded; a hook may replace
   it one last time.

A `Flow` or `Task` lists its hooks in `lifecycle`; a run whose spec lists none pays one
attribute read per point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncflow.engine.run import RunEngine
    from asyncflow.states import State


class RunHook:
    """One feature's hooks into the run lifecycle; override the points it needs."""

    #: also attached to nested flow runs of a run that has it (when their flow allows)
    inherited = False

    def before_body(self, run: RunEngine) -> State[Any] | None:
        """A final state that replaces calling the body, or None to call it."""
        return None

    def after_outcome(self, run: RunEngine, state: State[Any]) -> State[Any]:
        """The attempt's outcome, possibly replaced."""
        return state

    def before_terminal(self, run: RunEngine, state: State[Any]) -> State[Any]:
        """The terminal state about to be recorded, possibly replaced."""
        return state


#: How a nested flow run finds what an earlier attempt of its parent left of it (set by
#: `asyncflow.results`): (parent flow run, flow name, parameters) -> a Restore, or None.
subflow_restore: Callable[[Any, str, dict[str, Any]], Any] | None = None

__all__ = ["RunHook", "subflow_restore"]
