"""The task-runner protocol: where submitted sync task runs execute."""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from typing_extensions import Self


class TaskRunner(abc.ABC):
    """Executes submitted task runs away from the flow body.

    The engine hands a runner zero-argument *work* callables, each of which drives one task
    run from start to final state (dependencies are already complete when it is handed
    over, so no worker ever waits on another task). `body` decides how the task function
    itself is invoked — in the worker (threads) or somewhere else (processes).

    Each flow run uses its own copy (`duplicate`), entered when the first task is submitted
    and shut down when the flow run ends.
    """

    #: True when task functions run in the worker itself (`body` is not consulted).
    in_thread: bool = True

    @abc.abstractmethod
    def duplicate(self) -> Self:
        """A fresh, unstarted runner with the same configuration."""

    @abc.abstractmethod
    def submit(self, work: Callable[[], None]) -> None:
        """Run `work()` eventually, on some worker."""

    def body(
        self, task: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Any]:
        """The call that runs the task function, for runners with `in_thread = False`."""
        return lambda: fn(*args, **kwargs)

    def start(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Acquire resources (optional; `submit` may start lazily)."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Release workers; with `wait`, after the work already submitted finished."""

    def cancel_all(self) -> None:
        """Drop work that has not started yet (running work finishes)."""
        self.shutdown(wait=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import anyio

        await anyio.to_thread.run_sync(self.shutdown)




_worker = threading.local()  # `.pool`: the pool whose worker this thread is, if any


def set_worker_pool(pool: Any) -> None:
    """Mark this thread as a worker of `pool` (which has `worker_blocked` / `_unblocked`)."""
    _worker.pool = pool


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking wait for other runs: a pool worker that waits tells its pool, which
    may start another thread in its place (a parent waiting for its children must not hold
    the slot they need)."""
    pool = getattr(_worker, "pool", None)
    if pool is None:
        yield
        return
    pool.worker_blocked()
    try:
        yield
    finally:
        pool.worker_unblocked()


__all__ = [
    "TaskRunner",
    "set_worker_pool",
    "waiting",
]
