"""Result persistence: a completed run's result written to storage as it completes.

A `RunHook` at the lifecycle point `after_outcome`. Which runs persist (Prefect's option
names; our inheritance rule):

- a task run: its task's `persist_result`; None means `ASYNCFLOW_TASKS_PERSIST_RESULT`
  (off by default). A flow's setting never reaches its tasks: a flow persisting its result
  must not silently write every task's too.
- a flow run: its flow's `persist_result`; None means its parent flow run's choice, and
  `ASYNCFLOW_RESULTS_PERSIST_BY_DEFAULT` (off) for a top-level run.

A result that cannot be written (a serializer that refuses it, storage that cannot be
written to) never fails the run: the run completes, its state's message says the result was
not persisted and why, and a warning is logged (once per storage location for storage
errors, so a full disk does not flood the log).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from asyncflow.engine.lifecycle import RunHook
from asyncflow.states import State, StateType

logger = logging.getLogger("asyncflow.results")
_warned: set[str] = set()
_warned_lock = threading.Lock()


class PersistResult(RunHook):
    """Write a completed run's result to its storage; keep a `ResultRecord` of it."""

    inherited = True  # nested flow runs whose persist_result is None persist too

    def after_outcome(self, run: Any, state: State[Any]) -> State[Any]:
        if state.type is not StateType.COMPLETED or run.spec.kind not in ("sync", "async"):
            return state  # generators have no result to keep
        from asyncflow.results.record import ResultRecord

        spec = run.spec
        serializer = _serializer(run)
        storage = _storage(run)
        try:
            key = _key(run)
        except Exception as exc:
            return _not_persisted(run, state, f"result_storage_key failed: {exc!r}", None)
        try:
            blob = serializer.dumps(state.data)
        except Exception as exc:
            reason = f"the {serializer.type!r} serializer cannot write it: {exc}"
            return _not_persisted(run, state, reason, None)
        try:
            storage.write(key, blob)
        except Exception as exc:
            reason = f"writing to {storage!r} failed: {type(exc).__name__}: {exc}"
            return _not_persisted(run, state, reason, storage.url)
        record = ResultRecord(storage, key, serializer, len(blob))
        if not spec.cache_result_in_memory:
            state = state.copy(data=record)  # the value is let go; `result()` reads it back
        state.result_record = record
        return state


PERSIST = PersistResult()


def lifecycle_for(spec: Any, is_flow: bool) -> tuple[RunHook, ...]:
    """The result hooks every run of `spec` gets (computed when it is defined)."""
    from asyncflow.settings import get_settings

    persist = spec.persist_result
    if persist is None:
        settings = get_settings()
        persist = settings.results_persist_by_default if is_flow else settings.tasks_persist_result
    return (PERSIST,) if persist else ()


def _serializer(run: Any) -> Any:
    from asyncflow.results.serializers import resolve_serializer

    engine = run
    while engine is not None:  # the run's own, else the nearest flow run's that names one
        chosen = engine.spec.result_serializer
        if chosen is not None:
            return resolve_serializer(chosen)
        engine = engine.parent
    return resolve_serializer(None)


def _storage(run: Any) -> Any:
    from asyncflow.results.storage import LocalFileSystem
    from asyncflow.settings import get_settings

    engine = run
    while engine is not None:
        chosen = engine.spec.result_storage
        if chosen is not None:
            return chosen
        engine = engine.parent
    return LocalFileSystem(get_settings().result_storage)


def _key(run: Any) -> str:
    template = getattr(run.spec, "result_storage_key", None)
    if template is None:
        return str(run.id)
    from asyncflow.runtime import flow_run, task_run

    return str(template.format(flow_run=flow_run, task_run=task_run, parameters=run.parameters))


def _not_persisted(run: Any, state: State[Any], reason: str, once_for: str | None) -> State[Any]:
    message = f"The result was not persisted: {reason}"
    first = True
    if once_for is not None:
        with _warned_lock:
            first = once_for not in _warned
            _warned.add(once_for)
    run._log(logging.WARNING if first else logging.DEBUG, message)
    return state.copy(message=f"{state.message} ({message})" if state.message else message)


__all__ = ["PERSIST", "PersistResult", "lifecycle_for"]
