"""asyncflow: Prefect 3-style flows and tasks on an asyncio/trio structured-concurrency kernel."""

from asyncflow import runtime
from asyncflow.annotations import allow_failure, opaque, quote, unmapped
from asyncflow.context import tags
from asyncflow.engine.cancellation import cancel_run
from asyncflow.flows import Flow, flow
from asyncflow.futures import FutureList, PrefectFuture, TaskRunFuture, as_completed, wait
from asyncflow.logging import get_run_logger
from asyncflow.states import State, StateType
from asyncflow.store import writer as _writer
from asyncflow.tasks import Task, task

_writer.install()  # run history goes to the configured store (ASYNCFLOW_STORE)

__version__ = "0.1.0"

__all__ = [
    "Flow",
    "FutureList",
    "PrefectFuture",
    "State",
    "StateType",
    "Task",
    "TaskRunFuture",
    "allow_failure",
    "as_completed",
    "cancel_run",
    "flow",
    "get_run_logger",
    "opaque",
    "quote",
    "runtime",
    "tags",
    "task",
    "unmapped",
    "wait",
]
