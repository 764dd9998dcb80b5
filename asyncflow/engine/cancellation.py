"""Stop a flow run (with its subtree) or a submitted task run of this process by id (what
`asyncflow.cancel_run` does first, and what the writer does for a cancel request)."""

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


def cancel_local(run_id: UUID | str) -> bool:
    """Cancel a running flow run or submitted task run of this process by id; False when
    the run is unknown to this process or already final."""
    found = locate(run_id)
    if found is None:
        return False
    registry, row = found
    cancel = _cancellers.get((id(registry), row))
    if cancel is None:
        return False
    cancel()
    return True
