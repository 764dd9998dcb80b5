"""asyncflow: Prefect 3-style flows and tasks on an asyncio/trio structured-concurrency kernel."""

from typing import TYPE_CHECKING, Any

from asyncflow import runtime
from asyncflow.annotations import allow_failure, opaque, quote, unmapped
from asyncflow.cancel import cancel_run
from asyncflow.context import tags
from asyncflow.flows import Flow, flow
from asyncflow.futures import FutureList, PrefectFuture, TaskRunFuture, as_completed, wait
from asyncflow.logging import get_run_logger
from asyncflow.states import State, StateType
from asyncflow.store import writer as _writer
from asyncflow.tasks import Task, task

if TYPE_CHECKING:
    from asyncflow.deployments.serve import aserve, serve

_writer.install()  # run history goes to the configured store (ASYNCFLOW_STORE)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `serve` and `aserve` load the deployments package when first used: `import asyncflow`
    # stays light for programs that never serve
    if name in ("serve", "aserve"):
        from asyncflow.deployments import serve as serving

        return getattr(serving, name)
    raise AttributeError(f"module 'asyncflow' has no attribute {name!r}")


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
    "aserve",
    "cancel_run",
    "flow",
    "get_run_logger",
    "opaque",
    "quote",
    "runtime",
    "serve",
    "tags",
    "task",
    "unmapped",
    "wait",
]
