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
import time
from typing import Any

from asyncflow.engine import lifecycle
from asyncflow.engine.lifecycle import RunHook
from asyncflow.registry import KIND_FLOW
from asyncflow.states import State, StateType

_warned: set[str] = set()
_warned_lock = threading.Lock()


class PersistResult(RunHook):
    """Write a completed run's result to its storage; keep a `ResultRecord` of it. Before
    the body: a run an earlier attempt of its flow run finished is restored (see
    `asyncflow.results.restore`); else, for a task with a cache policy, its cache key is
    looked up: a result stored there (not expired) ends the run Completed, named Cached,
    without running the body."""

    inherited = True  # nested flow runs whose persist_result is None persist too

    def before_body(self, run: Any) -> State[Any] | None:
        data = run.hook_data
        if data is None:  # computed once: the first attempt's keys serve its retries too
            data = run.hook_data = _Keys()
            data.compute(run)
        if data.restore_key is not None or (run.kind == KIND_FLOW and run.restore is not None):
            restored = _restore(run, data)
            if restored is not None:
                return restored
        key = data.cache_key
        if key is None or run.spec.refresh_cache:
            return None
        from asyncflow.results import record as records

        try:
            found = records.read(_storage(run), key, _serializer(run))
        except Exception as exc:  # unreadable (permissions, a corrupt file): a miss
            run._log(logging.DEBUG, f"Cache record {key!r} cannot be read: {exc!r}")
            found = None
        if found is None:
            return None
        record, value = found
        data.taken = True
        state: State[Any] = State(StateType.COMPLETED, "Cached", data=value)
        if not run.spec.cache_result_in_memory:
            state.data = record
        state.result_record = record
        _record_in_store(run, record, data)
        return state

    def after_outcome(self, run: Any, state: State[Any]) -> State[Any]:
        if state.type is not StateType.COMPLETED or run.spec.kind not in ("sync", "async"):
            return state  # generators have no result to keep
        data = run.hook_data
        if data is not None and data.taken:
            return state  # (restored or a cache hit: it is stored already)
        from asyncflow.results.record import ResultRecord, encode

        spec = run.spec
        serializer = _serializer(run)
        storage = _storage(run)
        try:
            key = _key(run)
        except Exception as exc:
            return _not_persisted(run, state, f"result_storage_key failed: {exc!r}", None)
        try:
            payload = serializer.dumps(state.data)
        except Exception as exc:
            reason = f"the {serializer.type!r} serializer cannot write it: {exc}"
            return _not_persisted(run, state, reason, None)
        expiration = getattr(spec, "cache_expiration", None)
        expires = None if expiration is None else time.time() + expiration.total_seconds()
        try:
            storage.write(key, encode(serializer, payload, expires))
        except Exception as exc:
            reason = f"writing to {storage!r} failed: {type(exc).__name__}: {exc}"
            return _not_persisted(run, state, reason, storage.url)
        record = ResultRecord(storage, key, serializer, len(payload), expires)
        _record_in_store(run, record, data)
        if not spec.cache_result_in_memory:
            state = state.copy(data=record)  # the value is let go; `result()` reads it back
        state.result_record = record
        return state


class _Keys:
    """What the hook keeps per run (`run.hook_data`): its cache key (None: not cached),
    its restore key (None: not restorable), whether its result was taken from storage,
    and the digests of its inputs made so far (by excluded names: each is made once)."""

    __slots__ = ("cache_key", "inputs", "inputs_keys", "restore_key", "taken")

    def __init__(self) -> None:
        self.taken = False
        self.restore_key: str | None = None
        self.cache_key: str | None = None
        self.inputs: dict[str, Any] | None = None  # what `inputs_keys` are digests of
        self.inputs_keys: dict[tuple[str, ...], str] = {}

    def compute(self, run: Any) -> None:
        if run.kind == KIND_FLOW:
            return  # (a nested flow run is matched by its parameters: see restore)
        parameters = self.inputs = run.parameters
        policy = run.spec.cache
        if policy is not None:
            self.cache_key = _cache_key(run, policy, parameters)
        parent = run.parent
        if parent is not None:
            from asyncflow.results.restore import for_attempt, task_base

            base = task_base(run, parameters, policy)
            if base is not None:
                self.restore_key = for_attempt(parent).key(base)
        self.inputs = None  # (the digests are not needed past this point)


def _restore(run: Any, data: _Keys) -> State[Any] | None:
    """The Restored state of a run an earlier attempt finished, or None (the body runs)."""
    from asyncflow.results.restore import RESTORED

    if run.kind == KIND_FLOW:
        record = run.restore.own
    else:
        entry = run.parent.restore.earlier.get(data.restore_key)
        record = None if entry is None else entry.record
    if record is None:
        return None
    try:
        value = record.load()
    except Exception as exc:  # gone (cleared) or unreadable here: run it again
        run._log(logging.WARNING, f"Not restored, runs again: its earlier result {exc}")
        return None
    data.taken = True
    state: State[Any] = State(StateType.COMPLETED, RESTORED, data=value)
    if not run.spec.cache_result_in_memory:
        state.data = record
    state.result_record = record
    _record_in_store(run, record, data)
    return state


def _record_in_store(run: Any, record: Any, data: _Keys | None) -> None:
    """Tell the run store where the run's result is (a row of its `results` table)."""
    from asyncflow.registry import FACT_RESULT

    fact = (
        record.storage.url,
        record.key,
        record.serializer.type,
        record.size,
        record.created,
        record.expires,
        int(data is not None and data.cache_key == record.key),
        None if data is None else data.restore_key,
    )
    run.registry.add_fact(run.row, FACT_RESULT, fact)


_unhashable_warned: set[int] = set()


def _cache_key(run: Any, policy: Any, parameters: dict[str, Any]) -> str | None:
    from asyncflow.results.cache_policies import Unhashable

    if getattr(run.spec, "result_storage_key", None) is not None:
        try:  # a storage key of one's own is the cache key too (as in Prefect)
            return _key(run)
        except Exception:
            return None  # (after_outcome says why the result is not persisted)
    try:
        return policy.compute_key(run, parameters)  # type: ignore[no-any-return]
    except Unhashable as exc:
        spec = run.spec
        with _warned_lock:
            first = id(spec) not in _unhashable_warned
            _unhashable_warned.add(id(spec))
        if first:  # once per task, not a traceback per call
            run._log(
                logging.WARNING,
                f"Task {spec.name!r} runs uncached: its inputs cannot be hashed for the "
                f"cache key ({exc}). Leave the argument out (cache_policy=INPUTS - 'name') "
                "or give a cache_key_fn.",
            )
        return None


PERSIST = PersistResult()


def lifecycle_for(spec: Any, is_flow: bool) -> tuple[RunHook, ...]:
    """The result hooks every run of `spec` gets (computed when it is defined), and, for a
    task, its cache policy in effect (`spec.cache`), as Prefect decides them: a cache policy
    or key function turns persistence on; a persisting task caches with DEFAULT unless
    told NO_CACHE; `persist_result=False` means no caching either."""
    from asyncflow.results import cache_policies
    from asyncflow.settings import get_settings

    persist = spec.persist_result
    if is_flow:
        if persist is None:
            persist = get_settings().results_persist_by_default
        return (PERSIST,) if persist else ()
    key_fn, policy = spec.cache_key_fn, spec.cache_policy
    asked = key_fn is not None or (policy is not None and policy is not cache_policies.NO_CACHE)
    if persist is None:
        persist = asked or get_settings().tasks_persist_result
    cache: Any = None
    if persist:
        if key_fn is not None:
            cache = cache_policies.CacheKeyFnPolicy(key_fn)
        elif policy is None:
            cache = cache_policies.DEFAULT
        elif policy is not cache_policies.NO_CACHE:
            cache = policy
    spec.cache = cache
    return (PERSIST,) if persist else ()


def _nearest(run: Any, option: str) -> Any:
    """The run's own option (resolved when defined), else that of the nearest flow run
    above it that sets one; None when none does."""
    engine = run
    while engine is not None:
        chosen = getattr(engine.spec, option)
        if chosen is not None:
            return chosen
        engine = engine.parent
    return None


def _serializer(run: Any) -> Any:
    from asyncflow.results.serializers import resolve_serializer

    return _nearest(run, "result_serializer") or resolve_serializer(None)


_default_storage: tuple[str, Any] | None = None  # (the setting, the storage made from it)


def _storage(run: Any) -> Any:
    global _default_storage
    chosen = _nearest(run, "result_storage")
    if chosen is not None:
        return chosen
    from asyncflow.results.storage import storage_for
    from asyncflow.settings import get_settings

    where = get_settings().result_storage
    if _default_storage is None or _default_storage[0] != where:  # made once per setting
        _default_storage = (where, storage_for(where))
    return _default_storage[1]


def _key(run: Any) -> str:
    template = getattr(run.spec, "result_storage_key", None)
    if template is None:
        data = run.hook_data
        key = None if data is None else data.cache_key
        return str(run.id) if key is None else str(key)
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


def _subflow_restore(parent: Any, name: str, parameters: dict[str, Any]) -> Any:
    from asyncflow.results.restore import subflow_restore

    return subflow_restore(parent, name, parameters)


lifecycle.subflow_restore = _subflow_restore

__all__ = ["PERSIST", "PersistResult", "lifecycle_for"]
