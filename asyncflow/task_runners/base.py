"""The task-runner protocol: where submitted sync task runs execute."""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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

    Used directly, as in Prefect, a runner is a context manager whose `submit(task,
    parameters)` and `map(task, parameters)` start task runs on it and return futures.
    """

    #: True when task functions run in the worker itself (`body` is not consulted).
    in_thread: bool = True
    #: True for runners whose task bodies run elsewhere (other processes, a cluster) and
    #: are awaited: the engine then drives each run on the kernel's event loop (also for
    #: async flows) and awaits `run_remote`, so in-flight runs hold no thread.
    remote: bool = False
    #: For `remote` runners that cannot stop a body once it runs (a stopped run's body
    #: runs on to its end where it is): its TimedOut / Cancelled state says so.
    abandons_running: bool = False
    _started = False

    @property
    def name(self) -> str:
        """The runner's name, as Prefect's: `threadpool`, `processpool`."""
        return type(self).__name__.lower().replace("taskrunner", "")

    @abc.abstractmethod
    def duplicate(self) -> Self:
        """A fresh, unstarted runner with the same configuration."""

    @abc.abstractmethod
    def submit_work(self, work: Callable[[], None]) -> None:
        """Run `work()` eventually, on some worker (the engine's seam)."""

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        dependencies: Any = None,
    ) -> Any:
        """Start a run of `task` with `parameters` on this runner; return its future.

        Prefect's runner API: the runner must be started (`with runner:`). Async tasks run
        in the flow's task group (or on asyncflow's loop), as with `task.submit()`.
        `dependencies` is accepted for Prefect's signature; asyncflow finds a run's
        upstreams in its parameters itself.
        """
        self._check_started()
        args, kwargs = _call_of(task, parameters)
        return task._submit(args, {**kwargs, "wait_for": wait_for}, runner=self)

    def map(
        self, task: Any, parameters: dict[str, Any], wait_for: Iterable[Any] | None = None
    ) -> Any:
        """`task.map(**parameters, wait_for=wait_for)` on this runner: a list of futures."""
        self._check_started()
        args, kwargs = _call_of(task, parameters)
        return task._map(args, {**kwargs, "wait_for": wait_for}, runner=self)

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError(
                f"{self!r} is not started: use it as `with runner:` before submitting to "
                "it (or give it to a flow as `task_runner=`, which starts its own copy)."
            )

    def body(
        self, task: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Any]:
        """The call that runs the task function, for runners with `in_thread = False`."""
        return lambda: fn(*args, **kwargs)

    def prepare(self, places: Sequence[Any] = ()) -> Any:
        """For `remote` runners: called where and when a task run is submitted (the flow's
        thread, its context) with the arguments that hold futures (`handoff.Place`s); what
        it returns is given to each `run_remote` of that run and to `finished` (Dask: the
        `dask.annotate` block around the submission, and which upstream results stay on
        the cluster for it)."""
        return None

    def finished(self, prepared: Any) -> None:
        """For `remote` runners: the run `prepared` was made for is final."""
        return None

    async def run_remote(
        self,
        task: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prepared: Any = None,
    ) -> Any:
        """For `remote` runners: run `fn(*args, **kwargs)` of `task` elsewhere and return
        its value (or raise its exception). Cancelled, it cancels the remote work (or
        abandons what cannot be stopped) and re-raises. Called once per attempt, on the
        loop that drives the run, with what `prepare` gave at its submission."""
        raise NotImplementedError(f"{type(self).__name__} is not a remote runner")

    def start(self) -> None:
        """Acquire resources (`submit_work` may also start lazily). Subclasses call this."""
        self._started = True

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Release workers; with `wait`, after the work already submitted finished.
        Subclasses set `_started = False`."""

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


async def completion(future: Any, cancel: Callable[[], object] | None = None) -> Any:
    """The result of a `concurrent.futures`-like future (anything with `done`,
    `add_done_callback` and `result`), awaited without a thread: its done callback wakes
    this loop. Cancelled meanwhile, it calls `cancel` (default `future.cancel`)."""
    if not future.done():
        import anyio

        from asyncflow.backend import coalescing_caller

        done = anyio.Event()
        call_soon = coalescing_caller()
        future.add_done_callback(lambda _: call_soon(done.set))
        try:
            await done.wait()
        except BaseException:
            (cancel or future.cancel)()
            raise
    return future.result()


def call_body(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *after: Any
) -> Any:
    """What a remote worker runs for one attempt: the task's function on its arguments
    (`after`: what the runner made the attempt depend on besides, unused here)."""
    return fn(*args, **kwargs)


def _call_of(task: Any, parameters: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A task's call arguments from its parameters by name (Prefect's runner API)."""
    if not isinstance(parameters, dict):
        raise TypeError(
            f"parameters must be a dict of the task's parameters by name, got {parameters!r}."
        )
    signature = getattr(task, "signature", None)
    if signature is None:
        raise TypeError(f"Expected an asyncflow task, got {task!r}.")
    return signature.to_call(parameters)  # type: ignore[no-any-return]


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
    "call_body",
    "completion",
    "set_worker_pool",
    "waiting",
]
