"""`ThreadPoolTaskRunner`: the default runner for submitted sync tasks."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

from asyncflow._signals import sigterm_blocked
from asyncflow.task_runners.base import TaskRunner, set_worker_pool

_STOP = None


class ThreadPoolTaskRunner(TaskRunner):
    """Runs submitted sync tasks on a bounded pool of threads.

    `max_workers` bounds the threads (default ``min(32, cpus + 4)``, as the stdlib's pool);
    submissions past that queue up, so 100k submissions never mean 100k threads. A worker
    blocked waiting for other task runs (`future.result()` inside a task) does not count:
    the pool starts another thread in its place, so nested submissions never deadlock.

    Not a `concurrent.futures.ThreadPoolExecutor`: the engine already has a future per task
    run, and the executor's own Future, work item and semaphore per submission doubled the
    cost of `.submit()`. Here a submission is one `SimpleQueue.put`.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}.")
        self.max_workers = max_workers
        self._limit = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._blocked = 0  # workers waiting for other runs: they do not count toward the limit

    def duplicate(self) -> ThreadPoolTaskRunner:
        return type(self)(self.max_workers)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.max_workers == self.max_workers

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))

    def start(self) -> None:
        with self._lock:
            if self._closed:  # entered again after a shutdown: a fresh pool
                self._queue = queue.SimpleQueue()
                self._threads = []
                self._blocked = 0
                self._closed = False
        super().start()

    def submit_work(self, work: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is shut down; no new task runs can be submitted.")
        self._queue.put(work)
        if len(self._threads) < self._limit + self._blocked:
            self._add_thread()

    def worker_blocked(self) -> None:
        with self._lock:
            if threading.current_thread() not in self._threads:
                return  # a worker of the pool before a restart: not counted in this one
            self._blocked += 1
        if not self._queue.empty():  # what it waits for may be queued behind it
            self._add_thread()

    def worker_unblocked(self) -> None:
        with self._lock:
            if threading.current_thread() not in self._threads:
                return
            self._blocked -= 1

    def _add_thread(self) -> None:
        with self._lock:
            if len(self._threads) >= self._limit + self._blocked or self._closed:
                return
            thread = threading.Thread(
                target=self._worker,
                name=f"asyncflow-task-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
        with sigterm_blocked():
            thread.start()

    def _worker(self) -> None:
        set_worker_pool(self)
        get = self._queue.get
        while True:
            work = get()
            if work is _STOP:
                return
            work()
            work = None  # an idle worker must not keep its last run (and registry) alive
            if self._blocked == 0 and len(self._threads) > self._limit and self._retire():
                return  # a stand-in for a worker that waited is no longer needed

    def _retire(self) -> bool:
        """Leave the pool if it has more threads than its limit (and no waiting workers)."""
        with self._lock:
            current = threading.current_thread()
            if len(self._threads) <= self._limit + self._blocked or self._closed:
                return False
            if current not in self._threads:  # (of the pool before a restart)
                return True
            self._threads.remove(current)
            return True

    def shutdown(self, wait: bool = True) -> None:
        self._started = False
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if not wait:
            self._drop_queued()
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    _join(thread)

    def _drop_queued(self) -> None:
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                return
            cancel = getattr(work, "cancel", None)
            if cancel is not None:
                cancel()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers})"


def _join(thread: threading.Thread) -> None:
    """Wait for a worker, also one whose `start()` was interrupted in the submitting thread
    (a cancellation delivered at that moment): it never ran, or it runs but `join` refuses
    it until it has told `start` so ("cannot join thread before it is started")."""
    while thread.ident is not None:
        try:
            thread.join()
            return
        except RuntimeError:
            time.sleep(0.001)


__all__ = [
    "ThreadPoolTaskRunner",
]
