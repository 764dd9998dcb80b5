"""`cancel_run(run_id)`: stop a running flow run (with its subtree) or a submitted task run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

from asyncflow.store.memory import get_registry

if TYPE_CHECKING:
    from asyncflow.engine.run import FlowRunEngine

# (registry id, row) -> how to cancel that run. Flow runs from start to finish; submitted task
# runs until they are final. Inline task calls are cancelled with the flow run they are in.
_cancellers: dict[tuple[int, int], Callable[[], None]] = {}


def track(registry: object, row: int, cancel: Callable[[], None]) -> None:
    _cancellers[(id(registry), row)] = cancel


def untrack(registry: object, row: int) -> None:
    _cancellers.pop((id(registry), row), None)


def cancel_run(run_id: UUID | str) -> bool:
    """Cancel a running flow run or submitted task run by id.

    Everything the run started is cancelled with it and every run in that subtree ends
    Cancelled; an awaited or called flow then raises CancelledRun. Returns False when the
    run is unknown to this process or already final.
    """
    registry = get_registry()
    row = registry.row_of(run_id)
    if row is None:
        return False
    cancel = _cancellers.get((id(registry), row))
    if cancel is None:
        return False
    cancel()
    return True


def flow_canceller(engine: FlowRunEngine) -> Callable[[], None]:
    """How to cancel `engine`'s flow run from any thread."""

    def cancel() -> None:
        from asyncflow.engine import interrupts
        from asyncflow.engine.drivers import cancel_children

        engine.cancel_requested = True
        if engine.is_async:
            group = engine.task_group
            if group is None:
                return  # not in its body yet: the flag stops it on entry
            if engine.thread_id == threading.get_ident() or engine.call_soon is None:
                group.cancel_scope.cancel()
            else:
                engine.call_soon(group.cancel_scope.cancel)
            return
        target = engine.interrupt_target
        if target is not None:
            interrupts.interrupt(target, engine.interrupt_error(timeout=False))
        cancel_children(engine)

    return cancel
