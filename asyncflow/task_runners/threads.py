"""`ThreadPoolTaskRunner`: the default runner for submitted sync tasks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from asyncflow.task_runners.base import TaskRunner


class ThreadPoolTaskRunner(TaskRunner):
    """Runs submitted sync tasks on a bounded thread pool.

    `max_workers` bounds the threads (default: the stdlib's, ``min(32, cpus + 4)``);
    submissions past that queue up, so 100k submissions never mean 100k threads.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}.")
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def duplicate(self) -> ThreadPoolTaskRunner:
        return type(self)(self.max_workers)

    def start(self) -> None:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix="asyncflow-task"
                    )

    def submit(self, work: Callable[[], None]) -> None:
        executor = self._executor
        if executor is None:
            self.start()
            executor = self._executor
            assert executor is not None
        executor.submit(work)

    def shutdown(self, wait: bool = True) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=not wait)

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"
