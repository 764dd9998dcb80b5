"""Restart from failure: a flow run's new attempt takes what its earlier attempts finished.

A task run that completed with a persisted result, in an earlier attempt of the same flow
run, is not run again: its result is loaded and the new task run ends Completed, named
`Restored`. A call is matched to an earlier run by its *restore key*: for a task, its name,
a digest of its source code and its inputs, and its place among the flow attempt's calls of
that task with those inputs (the n-th); for a nested flow, its name, its parameters and its
place. A nested flow that completed with a persisted result is restored whole; one that did
not is run again, and its own task runs restore the same way from its earlier run. Changed
code or changed inputs change the key: those calls run again.

Two sources, one rule: the run store, for `Flow.retry(run_id)` and `asyncflow runs retry`
(a new attempt of the same run id, in any process), and the in-memory registry, for a flow's
own `retries=` (each retry attempt takes from the attempts before it).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from asyncflow.results.cache_policies import TASK_SOURCE, Unhashable, hash_objects, inputs_policy

if TYPE_CHECKING:
    from asyncflow.store.base import EarlierRun

logger = logging.getLogger("asyncflow.results")

RESTORED = "Restored"  # the state name of a restored run (type COMPLETED)


class Entry(NamedTuple):
    """An earlier run a new call can take from."""

    record: Any  # its persisted result (a ResultRecord), when it completed with one
    nested: Callable[[], dict[str, Entry]] | None  # a subflow run: what its own runs left


class Restore:
    """What one flow run's current attempt can take from earlier ones: entries by restore
    key, and how many calls of each key this attempt made so far."""

    __slots__ = ("attempt", "counts", "earlier", "own")

    def __init__(self, earlier: dict[str, Entry], attempt: int, own: Any = None) -> None:
        self.earlier = earlier
        self.attempt = attempt
        self.counts: dict[str, int] = {}
        self.own = own  # this run's own earlier result (a subflow that completed before)

    def key(self, base: str) -> str:
        """The restore key of the next call with this base key (the n-th such call)."""
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return f"{base}/{n}"


def for_attempt(flow_run: Any) -> Restore:
    """The flow run's Restore for its current attempt: made when first needed, and again
    for each retry attempt (which adds what the attempts before it finished)."""
    restore: Restore | None = flow_run.restore
    attempt = max(flow_run.run_count, 1)
    if restore is not None and restore.attempt == attempt:
        return restore
    earlier = dict(restore.earlier) if restore is not None else {}
    if attempt > 1:  # a retry: what the earlier attempts of this very run recorded
        earlier.update(_from_registry(flow_run.registry, flow_run.row))
    restore = flow_run.restore = Restore(earlier, attempt, restore.own if restore else None)
    return restore


def task_base(run: Any, parameters: dict[str, Any], policy: Any = None) -> str | None:
    """A task run's restore key without its count: name, source, inputs (those its cache
    policy hashes: `INPUTS - "arg"` leaves `arg` out here too); None when its inputs cannot
    be hashed: such a call always runs."""
    try:
        inputs = inputs_policy(policy).compute_key(run, parameters)
    except Unhashable:
        return None
    return f"task/{run.spec.name}/{TASK_SOURCE.compute_key(run, {})}/{inputs}"


def flow_base(name: str, parameters_json: str | None) -> str:
    """A nested flow run's restore key without its count: its name and parameters."""
    canonical = json.dumps(json.loads(parameters_json or "{}"), sort_keys=True)
    return f"flow/{name}/{hash_objects(canonical)}"


def subflow_restore(parent: Any, name: str, parameters: dict[str, Any]) -> Restore | None:
    """For a nested flow run starting in `parent`: what its earlier run left (None when
    nothing); its `own` is that run's result when it completed with one."""
    from asyncflow.store.base import params_json

    key = for_attempt(parent).key(flow_base(name, params_json(parameters)))
    entry = parent.restore.earlier.get(key)
    if entry is None:
        return None
    nested = entry.nested() if entry.nested is not None else {}
    return Restore(nested, 1, entry.record)


# -- building the entries -------------------------------------------------------------------------
def build(
    runs: list[EarlierRun], attempts: dict[Any, list[float]], top: Any, record_of: Any
) -> dict[str, Entry]:
    """The entries of flow run `top` from the runs under it (as the store or the registry
    lists them), later attempts' over earlier ones'. `record_of(run)` makes a ResultRecord."""
    children: dict[Any, list[EarlierRun]] = {}
    for run in runs:
        children.setdefault(run.parent_pk, []).append(run)

    def entries(flow: Any) -> dict[str, Entry]:
        starts = attempts.get(flow, [])
        found: dict[str, Entry] = {}
        counts: dict[tuple[int, str], int] = {}
        for run in children.get(flow, ()):
            record = record_of(run) if run.state_type == "COMPLETED" and run.key else None
            if run.kind == "task":
                if record is not None and run.restore_key:
                    found[run.restore_key] = Entry(record, None)
                continue
            attempt = bisect.bisect_right(starts, run.created)
            params = run.parameters
            base = flow_base(run.spec_name, params if isinstance(params, str) or params is None
                             else json.dumps(params))  # fmt: skip
            n = counts[attempt, base] = counts.get((attempt, base), -1) + 1
            found[f"{base}/{n}"] = Entry(record, _later(entries, run.pk))
        return found

    return entries(top)


def _later(entries: Callable[[Any], dict[str, Entry]], pk: Any) -> Callable[[], dict[str, Entry]]:
    return lambda: entries(pk)


def store_record(run: EarlierRun) -> Any:
    from asyncflow.results.record import ResultRecord
    from asyncflow.results.serializers import resolve_serializer
    from asyncflow.results.storage import storage_for

    assert run.storage is not None
    assert run.key is not None
    record = ResultRecord(
        storage_for(run.storage),
        run.key,
        resolve_serializer(run.serializer),
        run.size or 0,
        run.expires,
    )
    if run.result_created is not None:
        record.created = run.result_created
    return record


def _from_registry(registry: Any, row: int) -> dict[str, Entry]:
    """The entries of flow run `row` from this process's registry (its earlier attempts)."""
    from asyncflow.registry import FACT_RESULT, KIND_FLOW
    from asyncflow.store.base import EarlierRun, params_json

    results = {r: v for r, what, v in list(registry._facts) if what == FACT_RESULT and r > row}
    runs: list[EarlierRun] = []
    attempts: dict[int, list[float]] = {}
    flows = {row}
    # the current attempt's own runs are not earlier ones
    current = [s._ts for s in registry.history(row) if s.is_running()][-1]
    for r in range(row + 1, len(registry)):
        parent = registry._parent[r]
        if parent not in flows or r in registry._child_flow:  # (a subflow's stand-in task)
            continue
        history = registry.history(r)
        if parent == row and history[0]._ts >= current:
            continue
        kind = "flow" if registry._kind[r] == KIND_FLOW else "task"
        fact = results.get(r)
        if kind == "flow":
            flows.add(r)
        elif fact is None or fact[7] is None:
            continue
        storage, key, serializer, size, created, expires, _, restore_key = fact or (None,) * 8
        params = registry._params.get(r)
        runs.append(
            EarlierRun(
                r, parent, kind, registry._keys[registry._key[r]],
                None if params is None else params_json(params),
                history[-1].type.value, history[0]._ts,
                storage, key, serializer, size, restore_key, created, expires,
            )
        )  # fmt: skip
    for r in flows:
        attempts[r] = [s._ts for s in registry.history(r) if s.is_running()]
    return build(runs, attempts, row, store_record)


__all__ = ["RESTORED", "Entry", "Restore", "build", "for_attempt", "subflow_restore", "task_base"]


# -- a restart ------------------------------------------------------------------------------------
def prepare_restart(flow: Any, run_id: Any) -> tuple[Any, dict[str, Any]]:
    """Make stored flow run `run_id` ready to run again as `flow`'s next top-level call in
    this process: (the `Restarting` that call takes, the run's stored parameters).

    KeyError for an unknown run; ValueError when it is not a Failed, Crashed or Cancelled
    top-level run of this flow, or its parameters were not stored as they were (too large,
    or not JSON); ParameterBindError when they no longer fit the flow; StoreError when
    there is no run store (ASYNCFLOW_STORE=memory) or it cannot be written.
    """
    from asyncflow.engine.context import Restarting
    from asyncflow.exceptions import StoreError
    from asyncflow.registry import Alias, registry_for_new_tree
    from asyncflow.store import connect, recording_url, writer
    from asyncflow.store.base import lossy_parameters, run_id_prefix

    url = recording_url()
    if url is None:
        raise StoreError(
            "Flow.retry needs the run store, where the run's parameters and results are: "
            "ASYNCFLOW_STORE is 'memory'. Set it to the store the run was recorded in."
        )
    writer.flush()  # (the run may have just failed in this very process)
    store = connect(url)
    try:
        run = store.read_run_sync(run_id)
        what = f"Flow run {run.name!r} ({run.id})"
        if run.kind == "flow" and run.spec_name != flow.name:
            raise ValueError(f"{what} is a run of flow {run.spec_name!r}, not of {flow.name!r}.")
        parameters = dict(run.parameters or {})
        lossy = lossy_parameters(parameters)
        if lossy:
            raise ValueError(
                f"{what} cannot be run again: its parameter(s) {', '.join(map(repr, lossy))} "
                "were not stored as they were (too large for ASYNCFLOW_MAX_PARAMETERS_BYTES, "
                "or not JSON)."
            )
        if run.kind == "flow":
            flow.signature.bind((), parameters)  # (the flow's code may have changed)
        process_id, pid, hostname, started = writer.process_identity()
        restart = store.begin_restart(
            run.id,
            (process_id, pid, hostname, started),
            run_id_prefix(registry_for_new_tree().prefix),
            f"Run again by pid {pid} on {hostname}",
        )
        try:
            runs, attempts = store.earlier_runs(restart.pk)
            restore = Restore(build(runs, attempts, restart.pk, store_record), 1)
            alias = Alias(restart.id, restart.pk, restart.seq_base)
        except BaseException:  # (a storage that cannot be opened here, an interrupt...)
            store.abort_restart(restart)
            raise
    finally:
        store.close()

    def undo() -> None:
        """Put the stored run back; a failure here is logged (the caller's error wins)."""
        try:
            again = connect(url)
            try:
                again.abort_restart(restart)
            finally:
                again.close()
        except Exception as exc:
            logger.error(
                "Flow run %s stays AwaitingRetry: undoing its restart failed: %s", alias.id, exc
            )

    return Restarting(flow, alias, run.name, restore, undo), parameters
