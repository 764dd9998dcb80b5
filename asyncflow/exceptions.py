"""Exception types users catch from asyncflow."""

from __future__ import annotations

from typing import Any


class AsyncflowException(Exception):
    """Base class for every error asyncflow raises on its own account."""


class InvalidDefinitionError(AsyncflowException, TypeError, ValueError):
    """A decorator was used on something it cannot wrap, or with bad options. Both a
    TypeError and a ValueError: Prefect raises one or the other for the same mistakes."""


class InvalidNameError(AsyncflowException, ValueError):
    """A flow or task name with a character Prefect forbids there (`/ % & > <`)."""


class ReservedArgumentError(AsyncflowException, TypeError):
    """A flow or task function with a parameter named `return_state` or `wait_for`."""


class SignatureMismatchError(AsyncflowException, TypeError):
    """Arguments that do not fit the function's signature (Prefect's name)."""


class MissingResult(AsyncflowException):
    """A result that was not kept (not persisted) is asked for."""


class ObjectNotFound(AsyncflowException, LookupError):
    """No such object in the run store (a deployment `run_deployment` was given)."""


class UnfinishedRun(AsyncflowException):
    """The result of a run that is not final yet is asked for."""


class PausedRun(AsyncflowException):
    """The result of a paused run is asked for."""


class ParameterBindError(SignatureMismatchError):
    """The call's arguments do not fit the function's signature."""


class ParameterTypeError(AsyncflowException, TypeError):
    """Parameters failed pydantic validation; the message lists every error."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class ParameterSizeError(AsyncflowException, ValueError):
    """Serialized parameters exceed the size limit (512 KB by default)."""


class FlowRunNameError(AsyncflowException, ValueError, TypeError):
    """A flow_run_name / task_run_name template or callable could not produce a name (a
    TypeError too, as Prefect's error for a callable that returns no string)."""


class RunTimeoutError(AsyncflowException, TimeoutError):
    """A run exceeded its ``timeout_seconds``."""


class FlowRunTimeoutError(RunTimeoutError):
    """A flow run exceeded its ``timeout_seconds``."""


class TaskRunTimeoutError(RunTimeoutError):
    """A task run exceeded its ``timeout_seconds``."""


class FailedRun(AsyncflowException):
    """Raised by ``State.result()`` for a failed state that holds no exception of its own."""


class TerminationSignal(BaseException):
    """Raised in a sync flow or task run in the main thread when the process gets SIGTERM:
    the run ends Crashed and the exception ends the program, after the run store has
    everything (Prefect's name). Not an Exception: code must not swallow it by accident."""

    def __init__(self, signal: int) -> None:
        super().__init__(f"the process received signal {signal}")
        self.signal = signal


class CrashedRun(AsyncflowException):
    """Raised by ``State.result()`` for a crashed state that holds no exception of its own."""


class CancelledRun(AsyncflowException):
    """Raised by ``State.result()`` for a cancelled state."""


class UpstreamTaskError(AsyncflowException):
    """A task did not run because an upstream future or state it depends on did not complete."""


class MappingLengthMismatch(AsyncflowException, ValueError):
    """``Task.map`` was given iterables of different lengths."""


class MappingMissingIterable(AsyncflowException, ValueError):
    """``Task.map`` was given no iterable argument to map over."""


class SerializationError(AsyncflowException, TypeError):
    """A task, its arguments or its result cannot be serialized where that is required."""


class MissingContextError(AsyncflowException, RuntimeError):
    """An API that needs a running flow or task was used outside of one."""


class FutureUsageError(AsyncflowException, RuntimeError):
    """A future was waited on in a way that would deadlock (e.g. blocking on the loop it needs)."""


class StoreError(AsyncflowException, RuntimeError):
    """The run-history store cannot be opened or used (unreadable, corrupt, newer schema...).

    The message names the database (file path or URL) and what is wrong with it. The
    subclasses below say which; a plain StoreError is anything else (a server that cannot be
    reached, a driver error). `permanent` says whether retrying can help without someone
    fixing something (the writer then stops waiting for it at exit).
    """

    permanent: bool = False


class StoreNotFoundError(StoreError):
    """The database does not exist (reading never creates one)."""


class StoreReadOnlyError(StoreError):
    """The database (or its directory) cannot be written by this user."""

    permanent = True


class StoreFullError(StoreError):
    """The disk (or the database's size limit) is full."""


class StoreCorruptError(StoreError):
    """The file is not an SQLite database, is damaged, or is another program's database."""

    permanent = True


class StoreVersionError(StoreError):
    """The database was made by a newer asyncflow (a higher schema version)."""

    permanent = True


class StoreLockedError(StoreError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StoreReplacedError(StoreError):
    """The database file was deleted or replaced while this process was recording to it."""


class WorkerLost(AsyncflowException):
    """The worker running a task run's body was lost (killed, out of memory, its machine
    gone): that attempt of the run crashed, and the task's retries still apply."""


class ServerUnavailable(AsyncflowException, ConnectionError):
    """The asyncflow server that ASYNCFLOW_API_URL names cannot be reached or failed."""


class RunInterrupted(BaseException):
    """Delivered into a run's code to stop it because the run (or an ancestor) was cancelled.

    A BaseException, like ``asyncio.CancelledError``, so ``except Exception`` in user code does
    not swallow it. The run ends Cancelled; ``state.result()`` then raises CancelledRun.
    """

    run: Any = None


#: Prefect's name for the base class, so `except PrefectException` keeps working.
PrefectException = AsyncflowException

__all__ = [
    "AsyncflowException",
    "CancelledRun",
    "CrashedRun",
    "FailedRun",
    "FlowRunNameError",
    "FlowRunTimeoutError",
    "FutureUsageError",
    "InvalidDefinitionError",
    "InvalidNameError",
    "MappingLengthMismatch",
    "MappingMissingIterable",
    "MissingContextError",
    "MissingResult",
    "ObjectNotFound",
    "ParameterBindError",
    "ParameterSizeError",
    "ParameterTypeError",
    "PausedRun",
    "PrefectException",
    "ReservedArgumentError",
    "RunInterrupted",
    "RunTimeoutError",
    "SerializationError",
    "SignatureMismatchError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreReadOnlyError",
    "StoreReplacedError",
    "StoreVersionError",
    "TaskRunTimeoutError",
    "TerminationSignal",
    "UnfinishedRun",
    "UpstreamTaskError",
]
