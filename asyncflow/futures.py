"""Futures of submitted task runs: sync `.result()`/`.wait()`, `await fut`, `wait`, `as_completed`.

A future is set exactly once, with the task run's final State, by whichever thread or loop
finished the run. Waiters in other threads block on an Event; waiters on an event loop are
woken through that loop's thread-safe call (asyncio or trio).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar
from uuid import UUID

import anyio

from asyncflow.backend import threadsafe_caller
from asyncflow.engine.interrupts import interruptible
from asyncflow.exceptions import FutureUsageError
from asyncflow.states import State, StateType
from asyncflow.task_runners.base import waiting

R = TypeVar("R")


class TaskRunFuture(Generic[R]):
    """The eventual final state and result of a submitted task run."""

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_canceller",
        "_lock",
        "_loop_thread",
        "_registry",
        "_remote",  # runs on a remote runner: its `prepare` of the run (unset otherwise)
        "_row",
        "_state",
    )

    _remote: Any

    def __init__(self, registry: Any, row: int, loop_thread: int | None = None) -> None:
        self._registry = registry
        self._row = row
        # Guards the state/callback hand-over. One per future, not one for all: under the
        # GIL, a lock that worker threads contend for turns into a convoy.
        self._lock = threading.Lock()
        self._state: State[R] | None = None
        self._callbacks: list[Callable[[TaskRunFuture[R]], None]] | None = None
        # Set for futures whose run lives on an event loop: blocking that loop's thread on
        # them would deadlock, so `.result()` there raises instead.
        self._loop_thread = loop_thread
        self._canceller: Callable[[], None] | None = None  # set by whoever runs the task

    def cancel(self) -> bool:
        """Ask the task run to stop; it ends Cancelled. False if it is already final.

        A run that has not started never starts; a running async task is cancelled at its
        next checkpoint; a running sync task is interrupted in its thread.
        """
        canceller = self._canceller
        if self._state is not None or canceller is None:
            return False
        canceller()
        return True

    @property
    def task_run_id(self) -> UUID:
        return self._registry.uuid(self._row)  # type: ignore[no-any-return]

    @property
    def state(self) -> State[R]:
        """The final state when done, else the latest recorded state."""
        state = self._state
        if state is not None:
            return state
        history = self._registry.history(self._row)
        return history[-1] if history else State(StateType.PENDING)

    def done(self) -> bool:
        return self._state is not None

    # -- completion ---------------------------------------------------------------------------
    def _set_state(self, state: State[R]) -> None:
        with self._lock:
            if self._state is not None:
                return
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for callback in callbacks:
                callback(self)

    def add_done_callback(self, fn: Callable[[TaskRunFuture[R]], None]) -> None:
        """Call `fn(future)` once the run is final (at once if it already is)."""
        with self._lock:
            if self._state is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    # -- sync waiting -------------------------------------------------------------------------
    @interruptible  # a run's timeout or cancellation may stop it while it waits here
    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is final or `timeout` seconds passed."""
        if self._state is not None:
            return
        if self._loop_thread == threading.get_ident():
            raise FutureUsageError(
                "This future's task runs on the event loop of this thread; blocking on it "
                "would deadlock. Use `await future` instead."
            )
        event = threading.Event()
        self.add_done_callback(lambda _: event.set())
        with waiting():  # a pool worker's slot goes to others meanwhile
            event.wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task's result; raises its exception if it failed (unless told not to).

        Raises TimeoutError when `timeout` passes first.
        """
        self.wait(timeout)
        state = self._state
        if state is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout} s.")
        return state._result(raise_on_failure)  # type: ignore[no-any-return]

    # -- async waiting ------------------------------------------------------------------------
    async def wait_async(self, timeout: float | None = None) -> None:
        """Wait without blocking the event loop."""
        if self._state is not None:
            return
        event = anyio.Event()
        if self._loop_thread == threading.get_ident():
            self.add_done_callback(lambda _: event.set())
        else:
            call_soon = threadsafe_caller()

            def wake(_: TaskRunFuture[R]) -> None:
                call_soon(event.set)

            self.add_done_callback(wake)
        with anyio.move_on_after(timeout):
            await event.wait()

    async def result_async(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        await self.wait_async(timeout)
        state = self._state
        if state is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout} s.")
        return state._result(raise_on_failure)  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, R]:
        return self.result_async().__await__()

    def _final_state_for_return(self) -> State[R]:
        """Used by the final-state rules when a flow returns this future."""
        self.wait()
        assert self._state is not None
        return self._state

    def __repr__(self) -> str:
        state = self._state
        return f"TaskRunFuture(task_run_id={self.task_run_id}, state={state or 'pending'})"


class FutureList(list[TaskRunFuture[R]]):
    """What `Task.map` returns: a list of futures with list-wide `wait` and `result`."""

    def wait(self, timeout: float | None = None) -> None:
        wait(self, timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            f.result(
                None if deadline is None else max(0.0, deadline - time.monotonic()),
                raise_on_failure,
            )
            for f in self
        ]


class DoneAndNotDone(NamedTuple):
    done: set[TaskRunFuture[Any]]
    not_done: set[TaskRunFuture[Any]]


def wait(futures: Iterable[TaskRunFuture[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Block until every future is final or `timeout` passed; return (done, not_done)."""
    futures = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for f in futures:
        f.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, set(futures) - done)


async def wait_async(
    futures: Iterable[TaskRunFuture[Any]], timeout: float | None = None
) -> DoneAndNotDone:
    """The async form of `wait`."""
    futures = list(futures)
    with anyio.move_on_after(timeout):
        for f in futures:
            await f.wait_async()
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, set(futures) - done)


@interruptible
def as_completed(
    futures: Iterable[TaskRunFuture[R]], timeout: float | None = None
) -> Iterator[TaskRunFuture[R]]:
    """Yield futures as they finish; TimeoutError if `timeout` passes first."""
    import queue

    pending = set(futures)
    finished: queue.SimpleQueue[TaskRunFuture[R]] = queue.SimpleQueue()
    for f in pending:
        f.add_done_callback(finished.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            with waiting():
                f = finished.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError(f"{len(pending)} futures unfinished after {timeout} s.") from None
        pending.discard(f)
        yield f


async def as_completed_async(
    futures: Iterable[TaskRunFuture[R]], timeout: float | None = None
) -> AsyncIterator[TaskRunFuture[R]]:
    """The async form of `as_completed`."""
    pending = set(futures)
    send, receive = anyio.create_memory_object_stream[TaskRunFuture[R]](len(pending) or 1)
    call_soon = threadsafe_caller()
    loop_thread = threading.get_ident()

    def on_done(f: TaskRunFuture[R]) -> None:
        if threading.get_ident() == loop_thread:
            send.send_nowait(f)
        else:
            call_soon(lambda: send.send_nowait(f))

    for f in pending:
        f.add_done_callback(on_done)
    with anyio.fail_after(timeout):
        async with receive:
            while pending:
                f = await receive.receive()
                pending.discard(f)
                yield f
    send.close()


# Prefect's names, for code moving over with a changed import.
PrefectFuture = TaskRunFuture
PrefectFutureList = FutureList


__all__ = [
    "DoneAndNotDone",
    "FutureList",
    "PrefectFuture",
    "PrefectFutureList",
    "TaskRunFuture",
    "as_completed",
    "as_completed_async",
    "wait",
    "wait_async",
]
