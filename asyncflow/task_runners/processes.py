"""`ProcessPoolTaskRunner`: CPU-bound sync tasks in worker processes."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from asyncflow._spec import load_by_name
from asyncflow.exceptions import SerializationError
from asyncflow.task_runners.base import completion
from asyncflow.task_runners.threads import ThreadPoolTaskRunner


def _run_payload(payload: bytes) -> Any:
    target, args, kwargs = pickle.loads(payload)
    fn = getattr(target, "fn", target)  # a Task sent by reference, or a bare function
    return fn(*args, **kwargs)


def _importable(task: Any) -> bool:
    """Whether a worker can import `task` by module and qualified name."""
    try:
        return load_by_name(task.__module__, task.__qualname__) is task
    except (ImportError, AttributeError):
        return False


class ProcessPoolTaskRunner(ThreadPoolTaskRunner):
    """Runs submitted sync task bodies in a pool of ``spawn``-ed worker processes.

    The run lifecycle (states, retries, timeouts, logging) stays in this process; only the
    task and its arguments travel, pickled: a module-level task by reference, a task defined
    inside a function by value (cloudpickle, which also handles lambdas).
    A task or argument that cannot be pickled fails its run with a SerializationError naming
    the task.
    """

    in_thread = False
    remote = True  # (a run in flight awaits its process: no thread of ours waits for it)
    abandons_running = True

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}.")
        self.initializer = initializer  # run in each worker process as it starts
        self.initargs = tuple(initargs)
        self._processes: ProcessPoolExecutor | None = None

    def duplicate(self) -> ProcessPoolTaskRunner:
        return type(self)(self.max_workers, self.initializer, self.initargs)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.max_workers == self.max_workers
            and other.initializer == self.initializer
            and other.initargs == self.initargs
        )

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))

    def start(self) -> None:
        super().start()
        if self._processes is None:
            self._processes = ProcessPoolExecutor(
                self.max_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=self.initializer,
                initargs=self.initargs,
            )

    async def run_remote(
        self,
        task: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prepared: Any = None,
    ) -> Any:
        try:
            # Module-level tasks travel by reference; others (defined in a function)
            # send their function by value, which needs cloudpickle.
            target = task if _importable(task) else fn
            payload = _dumps((target, args, kwargs))
        except Exception as exc:
            raise SerializationError(
                f"Task {task.name!r} cannot be sent to a worker process: its function or "
                f"arguments cannot be pickled ({type(exc).__name__}: {exc}). Define the task "
                "at module level and pass picklable arguments, or use ThreadPoolTaskRunner."
            ) from exc
        if self._processes is None:
            self.start()
        assert self._processes is not None
        # (cancelled, a queued call is dropped; one already running in its process runs on:
        # a process pool cannot stop it)
        return await completion(self._processes.submit(_run_payload, payload))

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        processes, self._processes = self._processes, None
        if processes is not None:
            processes.shutdown(wait=wait, cancel_futures=not wait)


def _dumps(value: Any) -> bytes:
    import cloudpickle  # type: ignore[import-untyped]  # (imported when first needed)

    return cloudpickle.dumps(value)  # type: ignore[no-any-return]


__all__ = [
    "ProcessPoolTaskRunner",
]
