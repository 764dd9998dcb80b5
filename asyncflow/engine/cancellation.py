"""`cancel_run(run_id)`: stop a running flow run (with its subtree) or a submitted task run."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from asyncflow.registry import locate

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
    found = locate(run_id)
    if found is None:
        return False
    registry, row = found
    cancel = _cancellers.get((id(registry), row))
    if cancel is None:
        return False
    cancel()
    return True
