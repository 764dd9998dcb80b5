"""The run lifecycle, written once for flows and tasks, sync and async.

A `RunEngine` is one run: its identity, parameters, counters and state. It knows every
transition rule (Pending -> Running -> Completed/Failed/..., retries, timeouts, crashes)
but performs no I/O and never blocks or awaits; the drivers in `asyncflow.engine.drivers`
call it around the user's code, the sync driver with plain calls and `time.sleep`, the async
one inside cancel scopes. The object doubles as the run's context (`asyncflow.runtime`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from asyncflow.engine import cancellation, interrupts, lifecycle, termination
from asyncflow.engine.context import flow_run_var, restart_var, tags_var
from asyncflow.exceptions import (
    FlowRunTimeoutError,
    ParameterSizeError,
    ParameterTypeError,
    RunInterrupted,
    RunTimeoutError,
    TaskRunTimeoutError,
    WorkerLost,
)
from asyncflow.logging import (
    RunLoggerAdapter,
    enable_log_prints,
    engine_logger,
    flow_run_logger,
    run_logger,
    setup_logging,
    task_run_logger,
)
from asyncflow.naming import generate_run_name, render_run_name
from asyncflow.parameters import check_size
from asyncflow.registry import (
    FACT_ENTRYPOINT,
    FACT_TAGS,
    KIND_FLOW,
    KIND_TASK,
    MemoryRegistry,
    add_tree,
    get_registry,
)
from asyncflow.settings import get_settings
from asyncflow.states import (
    DEFAULT_NAMES,
    TERMINAL_TYPES,
    State,
    StateType,
    resolve_futures_to_states,
    state_from_return_value,
)

if TYPE_CHECKING:
    from asyncflow.engine.lifecycle import RunHook
    from asyncflow.flows import Flow
    from asyncflow.futures import TaskRunFuture
    from asyncflow.task_runners import TaskRunner
    from asyncflow.tasks import Task

_FAILED = StateType.FAILED
_COMPLETED = StateType.COMPLETED
_CANCELLING = StateType.CANCELLING
_RUNNING = StateType.RUNNING
_NO_ROW = -1


class RunEngine:
    """State and transition rules of one run (flow run or task run)."""

    __slots__ = (
        "_logger",
        "abandoned",
        "awaiting_hooks",
        "cancel_requested",
        "deadline",
        "end_time",
        "hook_data",
        "hooks",
        "interrupt_target",
        "log_prints",
        "name",
        "parent",
        "registry",
        "returned",
        "row",
        "run_count",
        "spec",
        "start_time",
        "state",
        "stop",
        "tags",
    )
    kind: ClassVar[int]
    label_word: ClassVar[str]  # "Flow" or "Task"
    base_logger: ClassVar[logging.Logger]
    timeout_error: ClassVar[type[RunTimeoutError]]

    spec: Flow[Any, Any] | Task[Any, Any]
    abandoned: str  # (set only when a remote runner abandoned the attempt's body)
    parent: FlowRunEngine | None
    registry: MemoryRegistry
    row: int
    name: str

    def _init_common(self, spec: Any, parent: FlowRunEngine | None) -> None:
        self.spec = spec
        self.hooks: tuple[RunHook, ...] = spec.lifecycle
        self.hook_data: Any = None  # what a lifecycle hook keeps per run (a cache key)
        self.parent = parent
        self.registry = parent.registry if parent is not None else get_registry()
        self.run_count = 0
        self.state: State[Any] | None = None
        # (state, value) when the body returned states: the call gives back the value
        self.returned: tuple[State[Any], Any] | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.deadline: float | None = None
        self.interrupt_target: Any = None  # set while sync code of this run can be interrupted
        self.cancel_requested = False
        self.stop: Callable[[], None] | None = None  # how a cancel request stops the body
        self.awaiting_hooks: list[tuple[Any, Any]] | None = None  # set by the async driver
        self.tags: frozenset[str] | set[str] = tags_var.get()
        self.log_prints: bool = (
            spec.log_prints
            if spec.log_prints is not None
            else (parent.log_prints if parent is not None else False)
        )
        if self.log_prints:
            enable_log_prints()  # (again, if another library put its own print in since)
        self._logger: RunLoggerAdapter | None = None

    # -- identity and logging -----------------------------------------------------------------
    @property
    def id(self) -> UUID:
        return self.registry.uuid(self.row)

    @property
    def label(self) -> str:
        return f"{self.label_word} run '{self.name}'"

    @property
    def logger(self) -> RunLoggerAdapter:
        if self._logger is None:
            self._logger = run_logger(self.label, self.id, self.base_logger)
        return self._logger

    def _lifecycle_level(self, level: int) -> int:
        """The level for routine lifecycle lines (overridden by tasks past the threshold)."""
        return level

    def _log(self, level: int, msg: str, exc_info: BaseException | None = None) -> None:
        if self.base_logger.isEnabledFor(level):
            self.logger.log(level, msg, exc_info=exc_info)

    # -- transitions ----------------------------------------------------------------------------
    def _record(
        self, type_: StateType, name: str | None = None, message: str | None = None
    ) -> None:
        self.registry.add_transition(self.row, type_, time.time(), name, message)

    def begin_attempt(self) -> State[Any] | None:
        """Enter Running (first attempt) or Retrying (later ones).

        Lifecycle point `before_body`: returns the state that stands for this attempt's
        outcome when a hook supplies one (the body is then not called), else None.
        """
        self.run_count += 1
        if self.run_count == 1:
            self.start_time = now = time.time()
            self.registry.add_transition(self.row, _RUNNING, now)
        else:
            self._record(_RUNNING, "Retrying")
        timeout = self.spec.timeout_seconds
        if timeout is not None:
            self.deadline = time.monotonic() + timeout
        if self.spec.has_hooks:  # on_running
            running: State[Any] = State(_RUNNING, None if self.run_count == 1 else "Retrying")
            if self.spec.hooks_for(running):
                self._run_hooks(running)
        if self.hooks:
            for hook in self.hooks:
                replaced = hook.before_body(self)
                if replaced is not None:
                    return replaced
        return None

    def conclude(self, state: State[Any]) -> State[Any]:
        """An attempt's outcome as the run keeps it (lifecycle point `after_outcome`).

        A Completed outcome past the deadline is TimedOut: its result came late (sync code
        that no interrupt reached, an async body that blocked the loop). Drivers may skip
        the call for a run with neither a deadline nor hooks: it would change nothing.
        """
        if (
            self.deadline is not None
            and state.type is _COMPLETED
            and time.monotonic() > self.deadline
        ):
            state = self.timed_out()
        for hook in self.hooks:
            state = hook.after_outcome(self, state)
        return state

    def outcome_of_value(self, value: Any) -> State[Any]:
        state = state_from_return_value(value)
        if state.type is _CANCELLING:  # the run ends: Cancelled, its hooks run
            state = State(StateType.CANCELLED, message=state.message, data=state.data)
        elif state.type not in TERMINAL_TYPES:
            return State(
                _FAILED,
                message=f"{self.label_word} run returned the non-final state {state}; "
                "a run must end Completed, Failed, Cancelled or Crashed.",
                data=state,
            )
        if state.data is not value or state.type is not _COMPLETED:
            self.returned = (state, value)  # a state, or states: see `call_result`
        return state

    def call_result(self, state: State[Any]) -> Any:
        """What calling the flow or task gives back, once it ended in `state`: its
        result, or (Prefect's rules) what the body returned when that was states. A task
        gives back what it returned; a flow gives back a returned list, tuple or set of
        states as it is (even when one failed), and a returned state's result."""
        returned = self.returned
        if returned is not None and returned[0] is state:
            value = returned[1]
            if self.kind != KIND_FLOW or not isinstance(value, State):
                return value
        return state._result()

    def outcome_of_error(self, exc: BaseException) -> State[Any]:
        """Failed for the user's exceptions, Crashed for interpreter/kernel ones.

        Timeouts and cancellations aimed at this run give TimedOut / Cancelled; those aimed
        at an ancestor pass through this run, which ends Cancelled.
        """
        target = getattr(exc, "run", None)
        if target is not None and target is not self:
            why = "timed out" if isinstance(exc, RunTimeoutError) else "was cancelled"
            return self.cancelled(f"Cancelled because {target.label} {why}.")
        if isinstance(exc, RunInterrupted):
            return self.cancelled()
        if isinstance(exc, self.timeout_error) and (target is self or self.deadline is not None):
            return self.timed_out()  # (Cancelled instead, when it was cancelled first)
        if isinstance(exc, WorkerLost):  # (a crash of that attempt only: retries apply)
            return State(StateType.CRASHED, message=f"Crashed: {exc}", data=exc)
        if isinstance(exc, Exception):
            self._log_error(exc)
            return State(
                _FAILED,
                message=f"{self.label_word} run encountered an exception "
                f"{type(exc).__name__}: {exc}",
                data=exc,
            )
        return State(
            StateType.CRASHED,
            message=f"Execution was interrupted by {type(exc).__name__}: {exc}".rstrip(": "),
            data=exc,
        )

    def _log_error(self, exc: Exception) -> None:
        """The user's exception, with its traceback. A RecursionError climbs through every
        level of a deep nesting with a traceback as deep: only the first level logs that."""
        if isinstance(exc, RecursionError):
            first = getattr(exc, "_asyncflow_logged_by", None)
            if first is not None:
                self._log(
                    logging.ERROR,
                    f"Encountered exception during execution: RecursionError: {exc} "
                    f"(traceback logged by {first})",
                )
                return
            try:
                exc._asyncflow_logged_by = self.label  # type: ignore[attr-defined]
            except AttributeError:
                pass
        self._log(logging.ERROR, "Encountered exception during execution:", exc_info=exc)

    def interrupt_error(self, timeout: bool) -> BaseException:
        """The exception raised in this run's sync code to stop it (`.run` names the run)."""
        exc: BaseException
        if timeout:
            exc = self.timeout_error(
                f"{self.label_word} run exceeded timeout of {self.spec.timeout_seconds} second(s)"
            )
        else:
            exc = RunInterrupted(f"{self.label} was cancelled.")
        exc.run = self  # type: ignore[union-attr]
        return exc

    def timed_out(self) -> State[Any]:
        if self.cancel_requested:  # the deadline passed while it was being cancelled:
            return self.cancelled()  # cancellation is final (and never retried)
        limit = self.spec.timeout_seconds
        message = self._noted(f"{self.label_word} run exceeded timeout of {limit} second(s)")
        self._log(logging.ERROR, message)
        return State(_FAILED, "TimedOut", message, data=self.timeout_error(message))

    def cancelled(self, message: str = "Run was cancelled.") -> State[Any]:
        return State(StateType.CANCELLED, message=self._noted(message))

    def _noted(self, message: str) -> str:
        """`message`, and why the body may still be running when a remote runner had to
        abandon it (`abandoned`: set for that attempt only; unset otherwise)."""
        note = getattr(self, "abandoned", None)
        if note is None:
            return message
        del self.abandoned
        return f"{message}. {note}" if message[-1:] not in ".!?" else f"{message} {note}"

    def retry_delay(self, outcome: State[Any]) -> float | None:
        """Seconds to wait before the next attempt, or None when `outcome` is final.

        Records the failed attempt and AwaitingRetry when a retry is due.
        """
        spec = self.spec
        if self.cancel_requested or not (
            outcome.type is _FAILED or isinstance(outcome.data, WorkerLost)
        ):
            return None
        if self.run_count > spec.retries:
            if spec.retries and self.kind != KIND_FLOW:
                self._log(logging.ERROR, f"{_failure(outcome)} - Retries are exhausted")
            return None
        condition = getattr(spec, "retry_condition_fn", None)
        if condition is not None:
            try:
                if not condition(spec, self, outcome):
                    return None
            except Exception as exc:  # a broken condition must not hide the real failure
                self._log(logging.ERROR, f"retry_condition_fn raised {exc!r}; not retrying.")
                return None
        try:
            delay = retry_delay_for(
                spec.retry_delay_seconds,
                self.run_count,
                spec.retries,
                getattr(spec, "retry_jitter_factor", None),
            )
        except Exception as exc:  # a broken delay setting ends the run, saying why
            why = f"retry_delay_seconds failed ({type(exc).__name__}: {exc}); not retrying"
            self._log(logging.ERROR, f"{why}.")
            outcome.message = f"{outcome.message} ({why})" if outcome.message else why
            return None
        self._record(outcome.type, _custom_name(outcome), outcome.message)
        self._record(
            StateType.SCHEDULED,
            "AwaitingRetry",
            f"Retry {self.run_count} of {spec.retries} in {delay:g}s",
        )
        self._log(logging.INFO, self._retry_line(outcome, delay))
        return delay

    def _retry_line(self, outcome: State[Any], delay: float) -> str:
        """The log line of a retry, in Prefect's words."""
        if self.kind == KIND_FLOW:
            return (
                "Received non-final state 'AwaitingRetry' when proposing final state "
                f"'{outcome.name}' and will attempt to run again..."
            )
        when = f"{delay:g} second(s) from now" if delay else "immediately"
        return f"{_failure(outcome)} - Retry {self.run_count}/{self.spec.retries} will start {when}"

    def finish(self, state: State[Any]) -> State[Any]:
        """Record the terminal state and log it (lifecycle point `before_terminal` first).
        Called exactly once per run."""
        if self.hooks:
            for hook in self.hooks:
                state = hook.before_terminal(self, state)
        state._details = (self.registry, self.row)
        self.state = state
        self.end_time = ts = state._ts
        name = state.name
        has_hooks = self.spec.has_hooks
        registry = self.registry
        # A top-level run ends its tree in the registry with its final state (one lock round),
        # or after its hooks, which may still record.
        record = (
            registry.end_tree if self.parent is None and not has_hooks else registry.add_transition
        )
        record(
            self.row,
            state.type,
            ts,
            None if name == DEFAULT_NAMES[state.type] else name,
            state.message,
        )
        if state.type is _COMPLETED:
            level = self._lifecycle_level(logging.INFO)
        elif state.type is StateType.CANCELLED:
            level = logging.WARNING
        else:
            level = logging.ERROR
        if self.base_logger.isEnabledFor(level):
            self.logger.log(level, f"Finished in state {state}")
        if has_hooks:
            self._run_hooks(state)
            if self.parent is None:
                registry.tree_finished()
        return state

    def _run_hooks(self, state: State[Any]) -> None:
        """State hooks: called with (flow or task, run, state); failures are only logged.

        An async hook is awaited by the async driver right after; elsewhere it runs to
        completion on the kernel loop.
        """
        for hook in self.spec.hooks_for(state):
            try:
                result = hook(self.spec, self, state)
                if inspect.isawaitable(result):
                    if self.awaiting_hooks is not None:
                        self.awaiting_hooks.append((hook, result))
                        continue
                    from asyncflow.engine import kernel

                    kernel.run(result)
            except Exception as exc:
                self.hook_failed(hook, exc)

    def request_cancel(self) -> None:
        """Cancel this run, from any thread: what `cancel_run` and `future.cancel()` call.

        The flag stops the run at its next check; `stop`, set by whoever runs the body,
        stops a body already running (a thread interrupt, a cancel scope).
        """
        self.cancel_requested = True
        stop = self.stop
        if stop is not None:
            stop()

    def hook_failed(self, hook: Any, exc: Exception) -> None:
        name = getattr(hook, "__name__", repr(hook))
        self._log(
            logging.ERROR, f"State hook {name!r} raised {exc!r}; the state is unchanged.", exc
        )


def _custom_name(state: State[Any]) -> str | None:
    return None if state.name == DEFAULT_NAMES[state.type] else state.name


def retry_delay_for(setting: Any, attempt: int, retries: int, jitter: float | None) -> float:
    """The delay before retry number `attempt` (1-based) from a number, list or callable.

    ValueError when a callable's answer is not a number >= 0 or a list of them.
    """
    if callable(setting):
        produced = setting(retries)
        if not (
            produced is None
            or _delay_ok(produced)
            or (isinstance(produced, (list, tuple)) and all(_delay_ok(d) for d in produced))
        ):
            raise ValueError(
                f"the callable returned {produced!r}, not a number of seconds >= 0 or a list "
                "of them"
            )
        setting = produced
    if isinstance(setting, (list, tuple)):
        delay = float(setting[min(attempt - 1, len(setting) - 1)]) if setting else 0.0
    else:
        delay = float(setting or 0)
    if jitter:
        delay = max(0.0, random.uniform(delay * (1 - jitter), delay * (1 + jitter)))
    return delay


#: Nesting from which a subflow checks how close the stack is to Python's recursion limit
#: (a level costs 6 frames, sync or async), and the frames it keeps free for the engine's own
#: work and for logging the failure: past that the subflow fails at once, cleanly, instead
#: of a RecursionError somewhere inside the engine leaving runs open.
_DEEP = 32
_FRAMES_RESERVED = 250


def _near_recursion_limit() -> bool:
    frame: Any = sys._getframe()
    frames = 0
    while frame is not None:
        frames += 1
        frame = frame.f_back
    return frames + _FRAMES_RESERVED > sys.getrecursionlimit()


def _delay_ok(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= threading.TIMEOUT_MAX
    )


def _failure(outcome: State[Any]) -> str:
    """'Task run failed with exception: ValueError(...)' (or 'with state: ...')."""
    data = outcome.data
    if isinstance(data, BaseException):
        return f"Task run failed with exception: {data!r}"
    return f"Task run failed with state: {outcome!r}"


class FlowRunEngine(RunEngine):
    """A flow run: parameters, its task-run bookkeeping, its task runner and task group."""

    __slots__ = (
        "async_runner",
        "call_soon",
        "counts",
        "depth",
        "early",
        "explicit",
        "is_async",
        "last_progress",
        "log_threshold",
        "parameters",
        "parent_task_row",
        "pending",
        "restore",
        "scope_type",
        "task_counters",
        "task_group",
        "task_runner",
        "tasks_started",
        "thread_id",
    )
    kind = KIND_FLOW
    label_word = "Flow"
    base_logger = flow_run_logger
    timeout_error = FlowRunTimeoutError

    spec: Flow[Any, Any]

    def __init__(
        self,
        flow: Flow[Any, Any],
        parameters: dict[str, Any],
        explicit: frozenset[str],
        parent: FlowRunEngine | None,
        is_async: bool,
    ) -> None:
        self._init_common(flow, parent)
        if parent is not None and parent.hooks and flow.lifecycle_inherit:
            inherited = tuple(h for h in parent.hooks if h.inherited and h not in self.hooks)
            if inherited:  # (result persistence: a nested flow does as its parent does)
                self.hooks = self.hooks + inherited
        self.parameters = parameters
        self.explicit = explicit
        self.is_async = is_async
        self.thread_id = threading.get_ident()
        self.task_counters: dict[str, itertools.count[int]] = {}
        self.pending: set[TaskRunFuture[Any]] = set()
        self.task_runner: TaskRunner | None = None
        self.async_runner: Any = None
        self.call_soon: Any = None  # thread-safe scheduling onto an async flow's loop
        self.scope_type: Any = None  # the cancel scope class for that loop
        self.task_group: Any = None
        self.early: State[Any] | None = None  # its final state when it could not start
        self.parent_task_row = _NO_ROW  # the task run standing for this one in its parent
        self.restore: Any = None  # what earlier attempts left (asyncflow.results.restore)
        self.depth: int = 0 if parent is None else parent.depth + 1  # nesting levels above
        self.tasks_started = 0
        self.log_threshold = get_settings().task_log_threshold
        # Finished task runs by state, one dict per thread that finished some: a shared
        # counter would need a lock, and a contended lock under the GIL makes a convoy.
        self.counts: dict[int, dict[StateType, int]] = {}
        self.last_progress = 0.0
        self.name = ""
        self.row = _NO_ROW

    def outcome_of_value(self, value: Any) -> State[Any]:
        # Futures in what a flow returns stand for their final states (Prefect's rules). A
        # run that started no task run made no future: its value is not walked.
        if self.tasks_started:
            value = resolve_futures_to_states(value)
        return RunEngine.outcome_of_value(self, value)

    def start(self, not_ready: Exception | None = None) -> State[Any] | None:
        """Register the run and enter Pending; validate parameters.

        Returns None when the run may proceed, or its Failed state when the parameters are
        invalid (or `not_ready`, an upstream that did not complete): such a run never
        enters Running.
        """
        setup_logging()
        flow = self.spec
        error: Exception | None = not_ready
        if error is None and flow.validate_parameters and self.explicit:
            try:
                self.parameters = flow.signature.validate(
                    self.parameters, self.explicit, "Flow run"
                )
            except ParameterTypeError as exc:
                error = exc
        if error is None:
            try:
                check_size(self.parameters, get_settings().max_parameters_bytes, "Flow run")
            except ParameterSizeError as exc:
                error = exc
        if error is None and self.depth >= _DEEP and _near_recursion_limit():
            error = RecursionError(
                f"Flow run nesting is too deep: this flow run would be {self.depth} levels "
                f"below its top-level flow run, within {_FRAMES_RESERVED} frames of Python's "
                f"recursion limit ({sys.getrecursionlimit()}). Raise the "
                "limit with sys.setrecursionlimit(), or recurse with a loop."
            )
        self.name = self._render_name(error is None)
        parent = self.parent
        alias = None
        if parent is None:
            if not termination.installed:  # once per process: SIGTERM ends runs recorded
                termination.install()
            restart = restart_var.get()
            if restart is not None and restart.flow is flow and not restart.used:
                restart.used = True  # (a new attempt of a stored run: its id, its name)
                alias, self.name, self.restore = restart.alias, restart.name, restart.restore
            self.registry, self.row = add_tree(
                KIND_FLOW, flow.name, name=self.name, parameters=self.parameters, alias=alias
            )
            entrypoint = flow.entrypoint
            if entrypoint is not None and alias is None:  # where `runs retry` finds the flow
                self.registry.add_fact(self.row, FACT_ENTRYPOINT, entrypoint)
            if engine_logger.isEnabledFor(logging.INFO):
                engine_logger.info(f"Created flow run '{self.name}' for flow '{flow.name}'")
                if error is None:  # Prefect 3's line (it starts right after)
                    self._log(
                        logging.INFO, f"Beginning flow run '{self.name}' for flow '{flow.name}'"
                    )
        else:
            # The stand-in task run lives and ends with this run: a registry row, no engine.
            index = parent.next_task_index(flow.name)
            parent.tasks_started += 1
            self.parent_task_row, self.row = self.registry.add_subflow(
                flow.name, parent.row, index, self.name, self.parameters
            )
            restore = parent.restore  # (earlier attempts to take from: a retry, a restart)
            find = lifecycle.subflow_restore
            if (parent.run_count > 1 or (restore is not None and restore.earlier)) and find:
                self.restore = find(parent, flow.name, self.parameters)
            if flow_run_logger.isEnabledFor(logging.INFO):
                parent._log(
                    logging.INFO, f"Created subflow run '{self.name}' for flow '{flow.name}'"
                )
                if error is None:
                    self._log(
                        logging.INFO, f"Beginning subflow run '{self.name}' for flow '{flow.name}'"
                    )
        if self.tags and alias is None:
            self.registry.add_fact(self.row, FACT_TAGS, self.tags)
        cancellation.track(self.registry, self.row, self.request_cancel)
        if error is not None:
            name = "NotReady" if error is not_ready else None
            return self.finish(State(_FAILED, name, message=str(error), data=error))
        return None

    def _render_name(self, parameters_valid: bool) -> str:
        template = self.spec.flow_run_name
        # A template over invalid values would only add noise.
        if template is None or not parameters_valid:
            return generate_run_name()
        token = flow_run_var.set(self)  # a callable may read asyncflow.runtime.flow_run
        try:
            fields = self.spec.signature.name_fields(self.parameters)
            return render_run_name(template, fields, "flow_run_name")  # type: ignore[return-value]
        finally:
            flow_run_var.reset(token)

    def begin_attempt(self) -> State[Any] | None:
        if self.run_count == 0 and self.parent_task_row != _NO_ROW:
            # Its stand-in task run enters Running with it, before any hook runs.
            self.start_time = now = time.time()
            self.registry.add_transition(self.parent_task_row, _RUNNING, now)
        return super().begin_attempt()

    def finish(self, state: State[Any]) -> State[Any]:
        if self.tasks_started > self.log_threshold:
            self._maybe_progress(force=True)  # the summary's last word, before the final line
        state = super().finish(state)
        cancellation.untrack(self.registry, self.row)
        parent = self.parent
        if parent is not None:
            self.registry.add_transition(
                self.parent_task_row, state.type, state._ts, _custom_name(state), state.message
            )
            parent.task_finished(state.type)
        return state

    def request_cancel(self) -> None:
        """Cancel this run and its subtree, from any thread (what `cancel_run` calls)."""
        self.cancel_requested = True
        if self.is_async:
            group = self.task_group
            if group is None:
                return  # not in its body yet: the flag stops it on entry
            if self.thread_id == threading.get_ident() or self.call_soon is None:
                group.cancel_scope.cancel()
            else:
                self.call_soon(group.cancel_scope.cancel)
            return
        target = self.interrupt_target
        if target is not None:
            interrupts.interrupt(target, self.interrupt_error(timeout=False))
        self.cancel_children()

    def cancel_children(self) -> None:
        """Cancel every task run this flow run submitted that is not final yet."""
        for future in list(self.pending):
            future.cancel()

    # -- task-run bookkeeping -----------------------------------------------------------------
    def next_task_index(self, task_name: str) -> int:
        counter = self.task_counters.get(task_name)
        if counter is None:
            counter = self.task_counters.setdefault(task_name, itertools.count())
        return next(counter)

    def task_finished(self, type_: StateType) -> None:
        ident = threading.get_ident()
        counts = self.counts.get(ident)
        if counts is None:
            counts = self.counts.setdefault(ident, {})
        counts[type_] = counts.get(type_, 0) + 1
        if self.tasks_started > self.log_threshold:
            self._maybe_progress()

    def _maybe_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < get_settings().progress_interval_seconds:
            return
        self.last_progress = now
        elapsed = max(time.time() - (self.start_time or time.time()), 1e-9)
        totals: dict[StateType, int] = {}
        for counts in list(self.counts.values()):
            for type_, n in list(counts.items()):
                totals[type_] = totals.get(type_, 0) + n
        done = sum(totals.values())
        by_state = ", ".join(f"{n:,} {t.value.lower()}" for t, n in sorted(totals.items()))
        self._log(
            logging.INFO,
            f"Progress: {self.tasks_started:,} task runs started, {done:,} finished "
            f"({by_state or 'none yet'}); {done / elapsed:,.0f} task runs/s",
        )

    def check_deadline(self) -> None:
        """Stop the body at its next task or subflow call once past its deadline or cancelled.

        The backstop for sync code that an interrupt could not reach.
        """
        if self.cancel_requested:
            raise self.interrupt_error(timeout=False)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise self.interrupt_error(timeout=True)


class TaskRunEngine(RunEngine):
    """A task run: the call's arguments and a link to its flow run."""

    __slots__ = ("args", "kwargs", "quiet")
    kind = KIND_TASK
    label_word = "Task"
    base_logger = task_run_logger
    timeout_error = TaskRunTimeoutError

    spec: Task[Any, Any]

    def __init__(
        self,
        task: Task[Any, Any],
        parent: FlowRunEngine | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._init_common(task, parent)
        if task.tags:
            self.tags = task.tags.union(self.tags) if self.tags else task.tags
        self.args = args
        self.kwargs = kwargs
        if parent is not None:
            index = parent.next_task_index(task.name)
            parent.tasks_started += 1
            self.quiet = parent.tasks_started > parent.log_threshold
            parent_row = parent.row
        else:
            index = next(_orphan_counters.setdefault(task.name, itertools.count()))
            self.quiet = False
            parent_row = _NO_ROW
        name = None
        if task.task_run_name is not None:
            fields = task.signature.name_fields(self.parameters)
            name = render_run_name(task.task_run_name, fields, "task_run_name")
        self.name = name or f"{task.name}-{index}"
        if parent is None:
            self.registry, self.row = add_tree(KIND_TASK, task.name, index, name)
        else:
            self.row = self.registry.add_run(KIND_TASK, task.name, parent_row, index, name)
        if self.tags:
            self.registry.add_fact(self.row, FACT_TAGS, self.tags)
        if task_run_logger.isEnabledFor(self._lifecycle_level(logging.INFO)):
            self._log(
                self._lifecycle_level(logging.INFO),
                f"Created task run '{self.name}' for task '{task.name}'",
            )

    @property
    def parameters(self) -> dict[str, Any]:
        sig = self.spec.signature
        try:
            return sig.bind(self.args, self.kwargs)[0]
        except Exception:
            return {"args": self.args, "kwargs": self.kwargs}

    def _lifecycle_level(self, level: int) -> int:
        return logging.DEBUG if self.quiet else level

    def finish(self, state: State[Any]) -> State[Any]:
        state = super().finish(state)
        if self.parent is not None:
            self.parent.task_finished(state.type)
        return state


#: Task runs outside any flow run are numbered per task, as a flow run numbers its own.
_orphan_counters: dict[str, itertools.count[int]] = {}
