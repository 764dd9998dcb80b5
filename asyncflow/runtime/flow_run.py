"""The current flow run: ``flow_run.id``, ``.name``, ``.flow_name``, ``.parameters``, ..."""

from __future__ import annotations

import datetime
from typing import Any

from asyncflow.engine.context import current_flow_run

__all__ = [
    "flow_name",
    "flow_version",
    "id",
    "name",
    "parameters",
    "parent_flow_run_id",
    "parent_task_run_id",
    "root_flow_run_id",
    "run_count",
    "scheduled_start_time",
    "tags",
]


def __getattr__(attr: str) -> Any:
    getter = _GETTERS.get(attr)
    if getter is None:
        raise AttributeError(f"asyncflow.runtime.flow_run has no attribute {attr!r}")
    run = current_flow_run()
    if run is not None:
        return getter(run)
    # outside a flow run, as Prefect: the time now (a run would start now)
    return _now() if attr == "scheduled_start_time" else _EMPTY.get(attr)


def __dir__() -> list[str]:
    return sorted(__all__)


def _start(run: Any) -> datetime.datetime:
    ts = run.start_time
    if ts is None:
        return _now()
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _root(run: Any) -> Any:
    while run.parent is not None:
        run = run.parent
    return run.id


_GETTERS: dict[str, Any] = {
    "id": lambda r: r.id,
    "name": lambda r: r.name,
    "flow_name": lambda r: r.spec.name,
    "flow_version": lambda r: r.spec.version,
    "parameters": lambda r: dict(r.parameters),
    "run_count": lambda r: r.run_count,
    "parent_flow_run_id": lambda r: r.parent.id if r.parent is not None else None,
    "parent_task_run_id": lambda r: (
        r.registry.uuid(r.parent_task_row) if r.parent_task_row >= 0 else None
    ),
    "root_flow_run_id": _root,
    "scheduled_start_time": _start,
    "tags": lambda r: sorted(r.tags),
}
_EMPTY: dict[str, Any] = {"parameters": {}, "run_count": 0, "tags": []}
