"""Drivers: run a `RunEngine`'s lifecycle around the user's code.

Four small loops over the same engine methods: plain calls (sync), awaits inside cancel
scopes (async), and the two generator forms. Everything about *which* state comes next
lives in `asyncflow.engine.run`; here is only *how* to call, wait and sleep.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.engine.run import FlowRunEngine, RunEngine
from asyncflow.exceptions import FlowRunTimeoutError
from asyncflow.states import State, StateType
from asyncflow.store.memory import KIND_FLOW

_CRASHED = StateType.CRASHED


def _var(engine: RunEngine) -> Any:
    return flow_run_var if engine.kind == KIND_FLOW else task_run_var


def drive_sync(engine: RunEngine, call: Callable[[], Any]) -> State[Any]:
    """Run `call` in this thread under `engine`'s lifecycle; return the final state.

    Re-raises BaseExceptions that crash the run (KeyboardInterrupt, SystemExit) after
    recording Crashed. A task without a timeout takes the plain path: one call, no context
    managers.
    """
    var = _var(engine)
    token = var.set(engine)
    plain = engine.kind != KIND_FLOW and engine.spec.timeout_seconds is None
    try:
        while True:
            engine.begin_attempt()
            try:
                value = call() if plain else _call_guarded(engine, call)
                state = engine.outcome_of_value(value)
            except BaseException as exc:
                state = engine.outcome_of_error(exc)
                if state.type is _CRASHED:
                    engine.finish(state)
                    raise
            if (
                engine.deadline is not None
                and state.type is StateType.COMPLETED
                and time.monotonic() > engine.deadline
            ):
                state = engine.timed_out()  # never report Completed after the deadline
            delay = engine.retry_delay(state)
            if delay is None:
                return engine.finish(state)
            if delay > 0:
                time.sleep(delay)
    finally:
        var.reset(token)
        if isinstance(engine, FlowRunEngine):
            close_runners(engine)


def _call_guarded(engine: RunEngine, call: Callable[[], Any]) -> Any:
    """A flow body (or a task with a timeout): deadline interrupt, then wait for children."""
    with _sync_deadline(engine):
        try:
            return call()
        finally:
            if isinstance(engine, FlowRunEngine):
                wait_for_children(engine)


def wait_for_children(engine: FlowRunEngine) -> None:
    """Structured concurrency for sync flows: wait for every task run the flow submitted."""
    while engine.pending:
        for future in list(engine.pending):
            future.wait()
            engine.pending.discard(future)


def close_runners(engine: FlowRunEngine) -> None:
    runner = engine.task_runner
    if runner is not None:
        engine.task_runner = None
        runner.shutdown()


@contextmanager
def _sync_deadline(engine: RunEngine) -> Iterator[None]:
    """Interrupt a sync *flow* body at its deadline when that is safe.

    In the main thread with no alarm already pending, SIGALRM raises FlowRunTimeoutError
    in the body. Elsewhere the body is stopped at its next task or subflow call
    (`FlowRunEngine.check_deadline`) and the run is marked TimedOut when it returns.
    """
    timeout = engine.spec.timeout_seconds
    if (
        timeout is None
        or not isinstance(engine, FlowRunEngine)
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
        or signal.getitimer(signal.ITIMER_REAL)[0] > 0
    ):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise FlowRunTimeoutError(f"Flow run exceeded timeout of {timeout} second(s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def drive_async(engine: RunEngine, call: Callable[[], Awaitable[Any]]) -> State[Any]:
    """Await `call` under `engine`'s lifecycle on the running loop (asyncio or trio).

    The timeout is a cancel scope around each attempt; cancellation from outside records
    Cancelled and propagates as the backend's native cancellation.
    """
    var = _var(engine)
    token = var.set(engine)
    try:
        while True:
            engine.begin_attempt()
            scope: anyio.CancelScope | None = None
            try:
                if engine.deadline is not None:
                    timeout = engine.spec.timeout_seconds or 0.0
                    with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                        value = await call()
                else:
                    value = await call()
            except BaseException as exc:
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    engine.finish(engine.cancelled())
                    raise
                state = engine.outcome_of_error(exc)
                if state.type is _CRASHED:
                    engine.finish(state)
                    raise
            else:
                if scope is not None and scope.cancelled_caught:
                    state = engine.timed_out()
                else:
                    state = engine.outcome_of_value(value)
            delay = engine.retry_delay(state)
            if delay is None:
                return engine.finish(state)
            try:
                await anyio.sleep(delay)
            except BaseException:
                engine.finish(engine.cancelled("Cancelled while waiting to retry."))
                raise
    finally:
        var.reset(token)
        if isinstance(engine, FlowRunEngine):
            close_runners(engine)


async def in_task_group(engine: FlowRunEngine, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async flow body inside the flow's own task group.

    Submitted async tasks and concurrently awaited children live in the group, so the flow
    cannot finish while they run. A failing body cancels them; its exception is re-raised
    as itself, not wrapped in an ExceptionGroup.
    """
    error: BaseException | None = None
    value: Any = None
    async with anyio.create_task_group() as tg:
        engine.task_group = tg
        try:
            value = await body()
            while engine.pending:  # task runs handed to a thread or process pool
                for future in list(engine.pending):
                    await future.wait_async()
                    engine.pending.discard(future)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            error = exc
            tg.cancel_scope.cancel()
    engine.task_group = None
    if error is not None:
        raise error
    return value


def drive_sync_generator(
    engine: RunEngine, gen: Generator[Any, Any, Any]
) -> Generator[Any, Any, Any]:
    """Running while the generator yields, Completed when exhausted or closed early."""
    var = _var(engine)
    engine.begin_attempt()
    to_send: Any = None
    while True:
        token = var.set(engine)
        try:
            value = gen.send(to_send)
        except StopIteration as stop:
            engine.finish(State(StateType.COMPLETED, data=stop.value))
            return stop.value
        except BaseException as exc:
            engine.finish(engine.outcome_of_error(exc))
            raise
        finally:
            var.reset(token)
        try:
            to_send = yield value
        except GeneratorExit:
            gen.close()
            engine.finish(
                State(StateType.COMPLETED, message="Generator closed before it was exhausted.")
            )
            raise


async def drive_async_generator(
    engine: RunEngine, agen: AsyncGenerator[Any, Any]
) -> AsyncGenerator[Any, Any]:
    """The async form of `drive_sync_generator`."""
    var = _var(engine)
    engine.begin_attempt()
    to_send: Any = None
    while True:
        token = var.set(engine)
        try:
            value = await agen.asend(to_send)
        except StopAsyncIteration:
            engine.finish(State(StateType.COMPLETED))
            return
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                engine.finish(engine.cancelled())
            else:
                engine.finish(engine.outcome_of_error(exc))
            raise
        finally:
            var.reset(token)
        try:
            to_send = yield value
        except GeneratorExit:
            await agen.aclose()
            engine.finish(
                State(StateType.COMPLETED, message="Generator closed before it was exhausted.")
            )
            raise
