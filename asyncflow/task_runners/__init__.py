"""Task runners: where `.submit()`-ed task runs execute."""

from asyncflow.task_runners.base import TaskRunner
from asyncflow.task_runners.processes import ProcessPoolTaskRunner
from asyncflow.task_runners.threads import ThreadPoolTaskRunner

__all__ = ["ProcessPoolTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]
