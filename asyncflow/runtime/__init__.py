"""Facts about the current run, readable from anywhere: ``from asyncflow.runtime import flow_run``.

Outside a run every attribute is empty (None, {}, 0 or []), never an error.
"""

from asyncflow.runtime import flow_run, task_run

__all__ = ["flow_run", "task_run"]
