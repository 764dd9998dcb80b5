"""Drivers: run a `RunEngine`'s lifecycle around the user's code.

Four small loops over the same engine methods: plain calls (sync), awaits inside cancel
scopes (async), and the two generator forms. Everything about *which* state comes next
lives in `asyncflow.engine.run`; here is only *how* to call, wait and sleep.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

import anyio

from asyncflow.backend import cancel_scope_type, threadsafe_caller
from asyncflow.engine import interrupts
from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.engine.run import FlowRunEngine, RunEngine
from asyncflow.exceptions import RunInterrupted, TerminationSignal, WorkerLost
from asyncflow.registry import KIND_FLOW
from asyncflow.states import State, StateType

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

_CRASHED = StateType.CRASHED
_ENDING = (KeyboardInterrupt, SystemExit, TerminationSignal)
_SLEEP_SLICE = 0.05  # how soon a retry delay in a worker thread notices a cancellation
_NO_KWARGS: dict[str, Any] = {}  # a default for `**kwargs` calls, never mutated


def _var(engine: RunEngine) -> Any:
    return flow_run_var if engine.kind == KIND_FLOW else task_run_var


@interrupts.calls_body
def drive_sync(
    engine: RunEngine,
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] = _NO_KWARGS,
) -> State[Any]:
    """Run `fn(*args, **kwargs)` in this thread under `engine`'s lifecycle; return the final state.

    Re-raises, after recording, BaseExceptions that crash the run (KeyboardInterrupt,
    SystemExit) and interrupts aimed at an ancestor run (its timeout or cancellation must
    reach it). A task without a timeout takes the plain path: one call, no guards.
    """
    var = _var(engine)
    token = var.set(engine)
    plain = engine.kind != KIND_FLOW and engine.spec.timeout_seconds is None
    try:
        while True:
            state = engine.begin_attempt()
            if state is None:
                try:
                    value = (
                        fn(*args, **kwargs) if plain else _call_guarded(engine, fn, args, kwargs)
                    )
                    state = engine.outcome_of_value(value)
                except BaseException as exc:
                    state = engine.outcome_of_error(exc)
                    if state.type is _CRASHED or _passes_through(engine, exc):
                        engine.finish(state)
                        raise
            if engine.deadline is not None or engine.hooks:
                state = engine.conclude(state)
            delay = engine.retry_delay(state)
            if delay is None:
                return engine.finish(state)
            if delay > 0:
                stopped = _sleep_sync(engine, delay)
                if stopped is not None:
                    return stopped
    finally:
        var.reset(token)
        if isinstance(engine, FlowRunEngine):
            close_runners(engine)


def _passes_through(engine: RunEngine, exc: BaseException) -> bool:
    target = getattr(exc, "run", None)
    return target is not None and target is not engine


def _ungrouped(engine: RunEngine, exc: BaseException, timed_out: bool) -> BaseException:
    """What an exception group from the user's own task group means for this run.

    When the run is stopped (its timeout, `cancel_run`, an outer cancel scope) while its
    body waits in a task group, the stop signal reaches the body wrapped in a group, maybe
    beside cancellations. A group made only of such signals is that stop: return its first
    cancellation (an outer cancel must reach its scope), or the signal aimed at this run
    when there is none or the run's own deadline fired (`timed_out`). Any other group is the
    user's and stays as it is.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    cancelled = anyio.get_cancelled_exc_class()
    own: BaseException | None = None
    cancellation: BaseException | None = None
    stack: list[BaseException] = [exc]
    while stack:
        leaf = stack.pop()
        if isinstance(leaf, BaseExceptionGroup):
            stack.extend(reversed(leaf.exceptions))
        elif getattr(leaf, "run", None) is engine:
            own = own or leaf
        elif isinstance(leaf, cancelled):
            cancellation = cancellation or leaf
        else:
            return exc
    if own is not None and (timed_out or cancellation is None):
        return own
    return cancellation if cancellation is not None else exc


@interrupts.interruptible
def _sleep_sync(engine: RunEngine, delay: float) -> State[Any] | None:
    """A retry delay that `cancel_run` can cut short.

    Returns the run's final state when it was stopped for its own sake (cancelled); what is
    aimed at an ancestor, or crashes the run, is re-raised after recording.
    """
    outer = engine.interrupt_target  # a submitted run's own guard, restored after
    with interrupts.guard() as target:
        engine.interrupt_target = target
        try:
            # In slices: outside the main thread the interrupt lands only between C calls.
            end = time.monotonic() + delay
            while True:
                if engine.cancel_requested:
                    raise engine.interrupt_error(timeout=False)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(remaining, _SLEEP_SLICE))
        except BaseException as exc:
            state = engine.finish(engine.outcome_of_error(exc))
            if state.type is _CRASHED or _passes_through(engine, exc):
                raise
            return state
        finally:
            engine.interrupt_target = outer
    return None


def _call_guarded(
    engine: RunEngine, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A flow body, or a task with a timeout: interruptible, and children are waited for.

    When the body raises (or is stopped), what it submitted is cancelled: structured
    concurrency, as in the async flow's task group.
    """
    flow_engine = engine if isinstance(engine, FlowRunEngine) else None
    if flow_engine is None:
        return _guarded(engine, fn, args, kwargs)
    try:
        value = _guarded(engine, fn, args, kwargs)
    except BaseException as exc:
        flow_engine.cancel_children()
        if not isinstance(exc, _ENDING):  # the program is ending: do not wait for them
            wait_for_children(flow_engine)
        raise
    wait_for_children(flow_engine)
    return value


@interrupts.calls_body
def _guarded(
    engine: RunEngine, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`fn(*args, **kwargs)` in this thread, interruptible for the run's deadline and
    cancellation (a sync body, or one step of a sync generator)."""
    outer = engine.interrupt_target  # a submitted run's own guard, restored after
    with interrupts.guard() as target:
        engine.interrupt_target = target
        try:
            if engine.cancel_requested:
                raise engine.interrupt_error(timeout=False)
            if engine.deadline is not None:
                if time.monotonic() > engine.deadline:
                    raise engine.interrupt_error(timeout=True)
                # A partial, not a lambda: a lambda would make a cell on every call.
                make_exc = functools.partial(engine.interrupt_error, True)
                interrupts.at_deadline(engine.deadline, target, make_exc)
            return fn(*args, **kwargs)
        finally:
            engine.interrupt_target = outer


def wait_for_children(engine: FlowRunEngine) -> None:
    """Structured concurrency for sync flows: wait for every task run the flow submitted."""
    while engine.pending:
        for future in list(engine.pending):
            future.wait()
            engine.pending.discard(future)


def close_runners(engine: FlowRunEngine) -> None:
    """Shut the flow run's task runner down. A crashed run (KeyboardInterrupt, SIGTERM)
    cancels the task runs it left and does not wait for them: the program is ending."""
    runner = engine.task_runner
    state = engine.state
    crashed = state is not None and state.type is _CRASHED
    if crashed:
        for future in list(engine.pending):
            future.cancel()
    if runner is not None:
        engine.task_runner = None
        runner.shutdown(wait=not crashed)


async def drive_async(
    engine: RunEngine,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] = _NO_KWARGS,
) -> State[Any]:
    """Await `fn(*args, **kwargs)` under `engine`'s lifecycle on the running loop.

    The timeout is a cancel scope around each attempt; cancellation from outside records
    Cancelled and propagates as the backend's native cancellation.
    """
    var = _var(engine)
    token = var.set(engine)
    if engine.spec.has_hooks:
        engine.awaiting_hooks = []
    try:
        while True:
            state = engine.begin_attempt()
            if engine.awaiting_hooks:  # async on_running hooks
                await _await_hooks(engine)
            scope: anyio.CancelScope | None = None
            if state is None:
                try:
                    if engine.deadline is not None:
                        timeout = engine.spec.timeout_seconds or 0.0
                        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                            value = await fn(*args, **kwargs)
                    else:
                        value = await fn(*args, **kwargs)
                except BaseException as raised:
                    exc = _ungrouped(engine, raised, scope is not None and scope.cancel_called)
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        engine.finish(engine.cancelled())
                        if exc is raised:
                            raise
                        raise exc from None
                    state = engine.outcome_of_error(exc)
                    lost = isinstance(exc, WorkerLost)  # (a crash that retries may follow)
                    if (state.type is _CRASHED and not lost) or _passes_through(engine, exc):
                        engine.finish(state)
                        raise
                else:
                    if scope is not None and scope.cancelled_caught:
                        state = engine.timed_out()
                    else:
                        state = engine.outcome_of_value(value)
            if engine.deadline is not None or engine.hooks:
                state = engine.conclude(state)
            delay = engine.retry_delay(state)
            if delay is None:
                state = engine.finish(state)
                if engine.awaiting_hooks:
                    await _await_hooks(engine)
                return state
            try:
                await anyio.sleep(delay)
            except BaseException:
                engine.finish(engine.cancelled("Cancelled while waiting to retry."))
                raise
    finally:
        var.reset(token)
        if isinstance(engine, FlowRunEngine):
            close_runners(engine)


async def _await_hooks(engine: RunEngine) -> None:
    hooks, engine.awaiting_hooks = engine.awaiting_hooks, []
    for hook, awaitable in hooks or ():
        try:
            await awaitable
        except Exception as exc:
            engine.hook_failed(hook, exc)


async def in_task_group(
    engine: FlowRunEngine, body: Callable[[FlowRunEngine], Awaitable[Any]]
) -> Any:
    """Run an async flow body, `body(engine)`, inside the flow's own task group.

    Submitted async tasks and concurrently awaited children live in the group, so the flow
    cannot finish while they run. A failing or cancelled body cancels them; its exception is
    re-raised as itself, not wrapped in an ExceptionGroup. `cancel_run` cancels the group.

    A nested flow on its parent's loop borrows the root flow's group (`HostedGroup`)
    instead of opening one: on trio a group per run cost more than the rest of the run.
    """
    parent = engine.parent
    host = parent.task_group if parent is not None else None
    if host is not None and parent is not None and parent.thread_id == engine.thread_id:
        engine.call_soon, engine.scope_type = parent.call_soon, parent.scope_type  # same loop
        group = HostedGroup(getattr(host, "host", host), engine.scope_type)
        value, error = await _run_body(engine, body, group)
    else:
        engine.call_soon, engine.scope_type = threadsafe_caller(), cancel_scope_type()
        value, error = None, None  # stay so when cancel_run's cancellation ends the group
        async with anyio.create_task_group() as tg:
            value, error = await _run_body(engine, body, tg)
    # Raised here, outside the group, so the exception is not wrapped in an ExceptionGroup.
    if error is not None:
        raise error
    if engine.cancel_requested:
        raise engine.interrupt_error(timeout=False)
    return value


class HostedGroup:
    """A nested flow's task group, borrowed from the root flow run's real one.

    Each task started here runs in the host group inside a cancel scope this group owns;
    the flow waits for them (they are in its `pending` set) and cancels them when its body
    fails or is cancelled, so the structured-concurrency rules are those of a real group.
    """

    __slots__ = ("body_scope", "cancelled", "host", "scope_type", "scopes")

    def __init__(self, host: Any, scope_type: Callable[[], Any]) -> None:
        self.host = host
        self.scope_type = scope_type
        self.scopes: set[Any] | None = None  # cancel scopes, made on first use: most have none
        self.cancelled = False
        self.body_scope: Any = None

    @property
    def cancel_scope(self) -> HostedGroup:
        return self  # `.cancel_scope.cancel()`, as on a real task group

    def start_soon(self, fn: Callable[[], Awaitable[Any]]) -> None:
        scope = self.scope_type()
        if self.cancelled:
            scope.cancel()
        scopes = self.scopes
        if scopes is None:
            scopes = self.scopes = set()
        scopes.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn()
            finally:
                scopes.discard(scope)

        self.host.start_soon(run)

    def cancel(self) -> None:
        self.cancelled = True
        if self.body_scope is not None:
            self.body_scope.cancel()
        for scope in list(self.scopes or ()):
            scope.cancel()


async def _run_body(
    engine: FlowRunEngine, body: Callable[[FlowRunEngine], Awaitable[Any]], group: Any
) -> tuple[Any, BaseException | None]:
    """(value, exception) of the body; native cancellation propagates as it is."""
    error: BaseException | None = None
    value: Any = None
    hosted = isinstance(group, HostedGroup)
    engine.task_group = group
    with group.scope_type() if hosted else _NO_SCOPE as scope:
        if hosted:
            group.body_scope = scope
        if engine.cancel_requested:
            group.cancel_scope.cancel()
        try:
            value = await body(engine)
            while engine.pending:  # task runs in a thread/process pool, or in a host group
                for future in list(engine.pending):
                    await future.wait_async()
                    engine.pending.discard(future)
        except BaseException as exc:
            engine.cancel_children()
            group.cancel_scope.cancel()
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                await _settle_children(engine)
                raise
            error = exc
            if hosted:
                await _settle_children(engine)
    engine.task_group = None
    return value, error


_NO_SCOPE = contextlib.nullcontext()


async def _settle_children(engine: FlowRunEngine) -> None:
    """Give interrupted thread-pool children a moment to record Cancelled (shielded)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        for future in list(engine.pending):
            await future.wait_async()


def drive_sync_generator(
    open_run: Callable[[], tuple[RunEngine, Generator[Any, Any, Any]]],
) -> Generator[Any, Any, Any]:
    """Running while the generator yields, Completed when exhausted or closed early.

    `open_run()` registers the run and makes its generator when iteration starts (a
    generator never iterated is no run). Then the lifecycle of a plain run, step by step:
    each step (the body up to its next yield) is interruptible like a sync flow body, the
    run's deadline and `cancel_run` stop it, and a flow's submitted task runs are waited for
    (cancelled, on failure) and its task runner shut down when it ends. The time the
    consumer takes between steps counts toward the deadline: it is the run's. Generators
    are not retried.
    """
    engine, gen = open_run()
    var = _var(engine)
    flow_engine = engine if isinstance(engine, FlowRunEngine) else None
    replaced = engine.begin_attempt()
    to_send: Any = None
    try:
        if replaced is not None:
            _end_sync(engine, flow_engine, gen, None, _REPLACED, replaced)._result()
            return None
        while True:
            token = var.set(engine)
            if flow_engine is not None:  # its task calls check "the flow's own thread"
                flow_engine.thread_id = threading.get_ident()
            try:
                value = _guarded(engine, gen.send, (to_send,), _NO_KWARGS)
            except StopIteration as stop:
                state = _end_sync(engine, flow_engine, gen, None, stop.value)
                if state.type is not StateType.COMPLETED:
                    state.result()  # past its deadline, or cancelled: the consumer is told
                return stop.value
            except BaseException as exc:
                state = _end_sync(engine, flow_engine, gen, exc, None)
                _raise_cancelled(engine, exc, state)
                raise
            finally:
                var.reset(token)
            try:
                to_send = yield value
            except GeneratorExit:
                _end_sync(engine, flow_engine, gen, None, _CLOSED)
                raise
    finally:
        if flow_engine is not None:
            close_runners(flow_engine)


_CLOSED = object()  # the consumer closed the generator before it was exhausted
_REPLACED = object()  # a `before_body` hook supplied the outcome: no step ran


def _end_state(
    engine: RunEngine,
    exc: BaseException | None,
    result: Any,
    replaced: State[Any] | None,
    native_cancel: bool = False,
) -> State[Any]:
    """A generator run's final state: its error's, or Cancelled when it was cancelled, else
    Completed (TimedOut past its deadline: `conclude`)."""
    if replaced is not None:
        state = replaced
    elif exc is not None:
        return engine.cancelled() if native_cancel else engine.outcome_of_error(exc)
    elif engine.cancel_requested:
        return engine.cancelled()
    elif result is _CLOSED:
        state = State(StateType.COMPLETED, message="Generator closed before it was exhausted.")
    else:
        state = State(StateType.COMPLETED, data=result)
    return engine.conclude(state)


def _end_sync(
    engine: RunEngine,
    flow_engine: FlowRunEngine | None,
    gen: Generator[Any, Any, Any],
    exc: BaseException | None,
    result: Any,
    replaced: State[Any] | None = None,
) -> State[Any]:
    """Close the generator and settle a flow's children, then finish the run, exactly once
    (a Ctrl-C or an error while settling ends it too)."""
    try:
        gen.close()
        if flow_engine is not None:
            if exc is not None:
                flow_engine.cancel_children()
            wait_for_children(flow_engine)
    except BaseException as cleanup:
        engine.finish(engine.outcome_of_error(cleanup))
        raise
    return engine.finish(_end_state(engine, exc, result, replaced))


def _raise_cancelled(engine: RunEngine, exc: BaseException, state: State[Any]) -> None:
    """A generator run stopped by its own cancellation: its consumer gets CancelledRun (as
    the caller of a cancelled flow does), not the internal interrupt."""
    if isinstance(exc, RunInterrupted) and getattr(exc, "run", None) is engine:
        state.result()  # raises CancelledRun
        raise AssertionError("unreachable")  # pragma: no cover


async def drive_async_generator(
    open_run: Callable[[], Awaitable[tuple[RunEngine, AsyncGenerator[Any, Any]]]],
) -> AsyncGenerator[Any, Any]:
    """The async form of `drive_sync_generator`.

    Each step runs in a cancel scope with the run's deadline. A flow's step also runs in a
    task group of its own on the caller's loop, so the async task runs it submits run there
    (on trio too) and finish before the step yields: a yield cannot sit inside a task group.
    """
    engine, agen = await open_run()
    var = _var(engine)
    flow_engine = engine if isinstance(engine, FlowRunEngine) else None
    replaced = engine.begin_attempt()
    to_send: Any = None
    try:
        if replaced is not None:
            (await _end_async(engine, flow_engine, agen, None, _REPLACED, replaced))._result()
            return
        while True:
            token = var.set(engine)
            scope = anyio.CancelScope()
            try:
                _check_step(engine)
                if engine.deadline is not None:
                    scope.deadline = anyio.current_time() + (engine.deadline - time.monotonic())
                with scope:
                    if flow_engine is None:
                        value = await agen.asend(to_send)
                    else:
                        value = await _flow_step(flow_engine, agen, to_send, scope)
                if scope.cancelled_caught:
                    raise engine.interrupt_error(timeout=not engine.cancel_requested)
                _check_step(engine)  # a step that never awaited passed its deadline
            except StopAsyncIteration:
                state = await _end_async(engine, flow_engine, agen, None, None)
                if state.type is not StateType.COMPLETED:
                    state._result()
                return
            except BaseException as exc:
                state = await _end_async(engine, flow_engine, agen, exc, None)
                _raise_cancelled(engine, exc, state)
                raise
            finally:
                var.reset(token)
            try:
                to_send = yield value
            except GeneratorExit:
                await _end_async(engine, flow_engine, agen, None, _CLOSED)
                raise
    finally:
        if flow_engine is not None:
            close_runners(flow_engine)


def _check_step(engine: RunEngine) -> None:
    if engine.cancel_requested:
        raise engine.interrupt_error(timeout=False)
    if engine.deadline is not None and time.monotonic() > engine.deadline:
        raise engine.interrupt_error(timeout=True)


async def _end_async(
    engine: RunEngine,
    flow_engine: FlowRunEngine | None,
    agen: AsyncGenerator[Any, Any],
    exc: BaseException | None,
    result: Any,
    replaced: State[Any] | None = None,
) -> State[Any]:
    """`_end_sync` for async generators, shielded: a cancelled consumer still ends the run."""
    with anyio.CancelScope(shield=True):
        try:
            await agen.aclose()
            if flow_engine is not None:
                if exc is not None:
                    flow_engine.cancel_children()
                    with anyio.move_on_after(1.0):  # as `_settle_children`
                        await _settle_async(flow_engine)
                else:
                    await _settle_async(flow_engine)
        except BaseException as cleanup:
            engine.finish(engine.outcome_of_error(cleanup))
            raise
        native = exc is not None and isinstance(exc, anyio.get_cancelled_exc_class())
        state = engine.finish(_end_state(engine, exc, result, replaced, native))
    return state


async def _flow_step(
    engine: FlowRunEngine, agen: AsyncGenerator[Any, Any], to_send: Any, scope: Any
) -> Any:
    """One step of an async generator flow, with a task group for what it submits."""
    engine.call_soon, engine.scope_type = threadsafe_caller(), cancel_scope_type()
    engine.thread_id = threading.get_ident()
    value: Any = None
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            engine.task_group = group
            if engine.cancel_requested:
                group.cancel_scope.cancel()
            try:
                value = await agen.asend(to_send)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # raised after the group: not wrapped in a group
                error = exc
                if not isinstance(exc, StopAsyncIteration):  # (the last step: let them end)
                    group.cancel_scope.cancel()
        if error is not None:
            raise error
        if engine.cancel_requested:  # `cancel_run` cancelled the group around the step
            raise engine.interrupt_error(timeout=False)
        return value
    except BaseExceptionGroup as group_error:
        raise _ungrouped(engine, group_error, scope.cancel_called) from None
    finally:
        engine.task_group = None


async def _settle_async(engine: FlowRunEngine | None) -> None:
    """Thread-pool task runs a generator flow submitted are waited for when it ends."""
    if engine is None:
        return
    while engine.pending:
        for future in list(engine.pending):
            await future.wait_async()
            engine.pending.discard(future)
