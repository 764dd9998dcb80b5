"""Which flow run and task run the current code belongs to (context variables)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncflow.engine.run import FlowRunEngine, RunEngine, TaskRunEngine

flow_run_var: ContextVar[FlowRunEngine | None] = ContextVar("asyncflow_flow_run", default=None)
task_run_var: ContextVar[TaskRunEngine | None] = ContextVar("asyncflow_task_run", default=None)
# tags that `asyncflow.tags(...)` adds to the runs started inside it
tags_var: ContextVar[frozenset[str]] = ContextVar("asyncflow_tags", default=frozenset())


class Restarting:
    """A flow run about to run again (`Flow.retry`): the next top-level run of `flow` in
    this context takes its id (`alias`, a registry.Alias), its name and what its earlier
    attempts left (`restore`, a results.restore.Restore)."""

    __slots__ = ("alias", "flow", "name", "restore", "undo", "used")

    def __init__(self, flow: Any, alias: Any, name: str, restore: Any, undo: Any) -> None:
        self.flow = flow
        self.alias = alias
        self.name = name
        self.restore = restore
        self.undo = undo  # puts the stored run back as it was, if the call never used this
        self.used = False


restart_var: ContextVar[Restarting | None] = ContextVar("asyncflow_restart", default=None)


def current_flow_run() -> FlowRunEngine | None:
    return flow_run_var.get()


def current_task_run() -> TaskRunEngine | None:
    return task_run_var.get()


def current_run() -> RunEngine | None:
    """The innermost run: the task run if inside one, else the flow run."""
    return task_run_var.get() or flow_run_var.get()
