"""The current task run: ``task_run.id``, ``.name``, ``.task_name``, ``.parameters``, ..."""

from __future__ import annotations

from typing import Any

from asyncflow.engine.context import current_task_run

__all__ = ["flow_run_id", "id", "name", "parameters", "run_count", "tags", "task_name"]


def __getattr__(attr: str) -> Any:
    getter = _GETTERS.get(attr)
    if getter is None:
        raise AttributeError(f"asyncflow.runtime.task_run has no attribute {attr!r}")
    run = current_task_run()
    return getter(run) if run is not None else _EMPTY.get(attr)


def __dir__() -> list[str]:
    return sorted(__all__)


_GETTERS: dict[str, Any] = {
    "id": lambda r: r.id,
    "name": lambda r: r.name,
    "task_name": lambda r: r.spec.name,
    "parameters": lambda r: r.parameters,
    "run_count": lambda r: r.run_count,
    "flow_run_id": lambda r: r.parent.id if r.parent is not None else None,
    "tags": lambda r: sorted(r.tags),
}
_EMPTY: dict[str, Any] = {"parameters": {}, "run_count": 0, "tags": []}
