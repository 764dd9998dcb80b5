"""The run-history store protocol: what persistent stores keep and how it is read back.

The in-memory registry (`asyncflow.registry`) is what runs write to on the hot path. A
persistent store is fed from it by one background writer per process (`asyncflow.store.writer`,
through the `RecordingStore` methods) and read by the CLI and by users through the async
query methods of `RunStore`. This module also holds what the SQLite and PostgreSQL stores
share: the batch encoding, the row decoding and the crash-detection rule.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Literal, NamedTuple, Protocol
from uuid import UUID

from asyncflow.registry import FACT_CHILD, FACT_ENTRYPOINT, FACT_RESULT, FACT_TAGS, ColumnExport
from asyncflow.states import DEFAULT_NAMES, StateType

TERMINAL = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)

#: Version of the tables both stores create; a database with a higher one is refused.
#: 2 added run tags and entrypoints, result metadata, restarts and variables; 3, cancel
#: requests (`cancel_run` of a run another process runs).
SCHEMA_VERSION = 3
#: Sequence number of the Crashed transition that crash detection adds: above any the
#: engine assigns, so it sorts last, and the same for every detector (so it is added once).
CRASH_SEQ = 1 << 62
#: How often the writer marks its process alive, and when a silent one on another host is
#: presumed dead (on this host the pid tells).
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 90.0

#: Called with a store's URL before each of its reads: the writer subscribes its
#: read-your-writes flush here (so the stores do not import the writer that feeds them).
before_read: list[Callable[[str], None]] = []


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


# SQL fragments: state-type codes (as the registry numbers them) to names, and the terminal set
_TYPES = list(StateType)
TERMINAL_SQL = "(" + ", ".join(f"'{t.value}'" for t in _TYPES if t in TERMINAL) + ")"


#: SQL for the runs a recording session answers for (named parameters :lo and :hi, its key
#: range, and :session, its key): its own, except those another process restarted, and
#: those its process restarted (`asyncflow runs retry`), wherever they came from.
SESSION_RUNS = (
    "((pk >= :lo AND pk < :hi AND pk NOT IN (SELECT run_pk FROM restarts)) "
    "OR pk IN (SELECT x.run_pk FROM restarts x JOIN processes p ON p.id = x.process "
    "WHERE p.pk = :session)) "
    # a scheduled run nobody claimed yet is nobody's: another server takes it
    "AND NOT (state_type = 'SCHEDULED' AND state_name = 'Scheduled')"
)


def transitions_view(explicit_latest: str, alias: str = "", version: int = 2) -> str:
    """The `transitions` view: every state of every run, one row each, seq numbered 0, 1,
    ... per run. `explicit_latest` is the store's test for a latest state that is not
    implicit; PostgreSQL names its subquery (`alias`). Since version 2 a first Running that
    is in the log too (a restarted or scheduled run's) is shown once."""
    once = (
        " AND NOT EXISTS (SELECT 1 FROM transition_log l WHERE l.run_pk = runs.pk "
        "AND l.seq = runs.start_seq)"
        if version >= 2
        else ""
    )
    return f"""CREATE VIEW transitions AS
        SELECT run_pk, row_number() OVER (PARTITION BY run_pk ORDER BY seq) - 1 AS seq,
               type, name, message, ts
        FROM (SELECT pk AS run_pk, -1 AS seq, 'PENDING' AS type, 'Pending' AS name,
                     NULL AS message, created AS ts FROM runs
              UNION ALL
              SELECT pk, start_seq, 'RUNNING', 'Running', NULL, start_time FROM runs
              WHERE start_seq IS NOT NULL{once}
              UNION ALL
              SELECT run_pk, seq, type, name, message, ts FROM transition_log
              UNION ALL
              SELECT pk, state_seq, state_type, state_name, state_message, state_ts FROM runs
              WHERE {explicit_latest}){alias}"""


def type_sql(code: str) -> str:
    """SQL for the state type (its value) whose code (position in list(StateType)) is `code`."""
    whens = " ".join(f"WHEN {i} THEN '{t.value}'" for i, t in enumerate(_TYPES))
    return f"CASE {code} {whens} END"


def default_name_sql(type_: str) -> str:
    """SQL for the default state name of the state type in column/expression `type_`."""
    whens = " ".join(f"WHEN '{t.value}' THEN '{DEFAULT_NAMES[t]}'" for t in _TYPES)
    return f"CASE {type_} {whens} END"


@dataclass(frozen=True, slots=True)
class StoredState:
    """One recorded state transition."""

    type: StateType
    name: str
    message: str | None
    timestamp: datetime.datetime


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run as a store has it: identity, links, parameters and its latest state.

    `start_time` is when it first entered Running, `end_time` when it reached a terminal state.
    `states` is filled by `read_run` only (the full history); listings leave it empty.
    """

    id: UUID
    kind: Literal["flow", "task"]
    name: str
    spec_name: str  # the flow's or task's name
    state_type: StateType
    state_name: str
    state_message: str | None
    created: datetime.datetime
    start_time: datetime.datetime | None
    end_time: datetime.datetime | None
    parent_flow_run_id: UUID | None
    parent_task_run_id: UUID | None
    child_flow_run_id: UUID | None
    parameters: dict[str, Any] | None
    run_count: int
    states: tuple[StoredState, ...] = field(default=())
    tags: tuple[str, ...] = ()
    entrypoint: str | None = None  # a top-level flow run's 'path/to/file.py:function'
    deployment: str | None = None  # a deployment's run: 'flow name/deployment name'
    scheduled_time: datetime.datetime | None = None

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.start_time is None:
            return None
        return (self.end_time or datetime.datetime.now(datetime.timezone.utc)) - self.start_time

    @property
    def is_final(self) -> bool:
        return self.state_type in TERMINAL


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A persisted result as the store lists it: the run it belongs to and where it is."""

    run_id: UUID
    run_name: str
    kind: Literal["flow", "task"]
    spec_name: str  # the run's flow or task
    flow_name: str | None  # a task run's flow (None outside any flow), a flow run's own
    storage: str  # a directory, or an fsspec URL
    key: str
    serializer: str
    size: int
    created: datetime.datetime
    expires: datetime.datetime | None
    cache: bool  # the key is a cache key: other runs may take the result
    restore_key: str | None

    @property
    def expired(self) -> bool:
        return self.expires is not None and self.expires <= datetime.datetime.now(
            datetime.timezone.utc
        )

    def load(self) -> Any:
        """The value, read from its storage (MissingResult when the file is gone)."""
        from asyncflow.results.record import ResultRecord
        from asyncflow.results.serializers import resolve_serializer
        from asyncflow.results.storage import storage_for

        record = ResultRecord(
            storage_for(self.storage), self.key, resolve_serializer(self.serializer), self.size
        )
        return record.load()


class Restart(NamedTuple):
    """A flow run made ready for another attempt (see SqlStore.begin_restart)."""

    id: UUID
    pk: int
    attempt: int  # 1 for the first restart
    seq_base: int  # its states' sequence numbers start here
    before: tuple[Any, ...]  # what `abort_restart` puts back


class Claimed(NamedTuple):
    """A scheduled run a serving process claimed (see SqlStore.claim_runs)."""

    id: UUID
    pk: int
    name: str
    flow_name: str
    parameters: dict[str, Any]
    deployment: str
    scheduled_time: float
    seq_base: int


class EarlierRun(NamedTuple):
    """A run under a restarted flow run, as a restart matches it to a new call."""

    pk: int
    parent_pk: int
    kind: str
    spec_name: str
    parameters: Any  # JSON text (SQLite) or its value (PostgreSQL); None for task runs
    state_type: str
    created: float
    storage: str | None  # where its persisted result is (None: it has none)
    key: str | None
    serializer: str | None
    size: int | None
    restore_key: str | None
    result_created: float | None
    expires: float | None


class RunStore(Protocol):
    """A persistent run history, as readers see it.

    The queries may be called from any task or thread. Ids may be given as a full UUID
    (string or UUID) or as a unique prefix of one.
    """

    url: str

    def close(self) -> None: ...

    async def list_runs(
        self,
        *,
        kind: Literal["flow", "task"] | None = "flow",
        spec_name: str | None = None,
        state: StateType | None = None,
        since: datetime.datetime | None = None,
        limit: int = 50,
    ) -> list[StoredRun]:
        """Runs newest first, filtered by kind, flow/task name, latest state type and time."""
        ...

    async def read_run(self, run_id: UUID | str) -> StoredRun:
        """One run with its full state history.

        KeyError (clear message) when unknown, ValueError when a prefix is ambiguous or not
        hexadecimal.
        """
        ...

    async def children(self, run_id: UUID | str) -> list[StoredRun]:
        """Direct children of a flow run: its task runs and subflow runs, oldest first."""
        ...

    async def result_of(self, run_id: UUID | str) -> StoredResult | None:
        """The persisted result of a run, None when it has none; KeyError when unknown."""
        ...

    async def list_results(
        self,
        *,
        task: str | None = None,
        flow: str | None = None,
        key_prefix: str | None = None,
        older_than: datetime.datetime | None = None,
        cache_only: bool = False,
        limit: int | None = None,
    ) -> list[StoredResult]:
        """Persisted results, newest first, filtered (see SqlStore.list_results)."""
        ...

    def forget_results(self, locations: list[tuple[str, str]]) -> int:
        """Delete the result rows at these (storage, key) locations; returns how many."""
        ...

    def get_variable(self, name: str) -> tuple[str, str, float, float] | None: ...

    def set_variable(self, name: str, value: str, tags: str, overwrite: bool) -> bool: ...

    def unset_variable(self, name: str) -> bool: ...

    def list_variables(self) -> list[tuple[str, str, str, float, float]]: ...

    def schedule_runs(self, session: int, runs: list[tuple[Any, ...]]) -> int: ...

    def last_slot(self, deployment: str, slot_prefix: str) -> float | None: ...

    def open_slot_runs(self, deployment: str, slot_prefix: str) -> tuple[int, int]: ...

    def claim_runs(
        self,
        deployments: list[str],
        now: float,
        limit: int,
        process_id: str,
        exclusive: dict[str, list[str]] | None = None,
        caps: dict[str, tuple[int, str]] | None = None,
    ) -> list[Claimed]: ...

    def fail_claimed(
        self, claimed: Claimed, message: str, type_: str = "FAILED", owner: str | None = None
    ) -> bool: ...

    def adopt_claim(
        self, claimed: Claimed, owner: str, process: tuple[str, int, str, float], prefix: str
    ) -> bool: ...

    def next_due(self, deployments: list[str]) -> float | None: ...

    def add_deployment_run(
        self, session: int, row: tuple[Any, ...], slot_key: str | None = None
    ) -> tuple[UUID, int, bool]: ...

    def run_state(self, pk: int) -> tuple[StateType, str] | None: ...

    def key_of(self, run: UUID | str) -> int: ...

    def check_open(self) -> None: ...

    def queue_listener(self) -> Any: ...

    def request_cancel(
        self, run: UUID | str, process_id: str = "", why: str = "cancel_run"
    ) -> tuple[str, StoredRun]: ...

    def save_deployment(self, row: dict[str, Any]) -> None: ...

    def list_deployments(self) -> list[dict[str, Any]]: ...

    def read_deployment(self, name: str) -> dict[str, Any] | None: ...

    def set_deployment_paused(self, name: str, paused: bool, on_shutdown: bool = False) -> bool: ...

    def list_runs_page(
        self,
        *,
        kind: Literal["flow", "task"] | None = "flow",
        spec_name: str | None = None,
        state: StateType | None = None,
        deployment: str | None = None,
        parent: UUID | str | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[StoredRun], str | None]: ...

    def list_flows(self) -> list[dict[str, Any]]: ...

    def children_sync(self, run: UUID | str, limit: int | None = None) -> list[StoredRun]: ...

    def children_summary(
        self, run: UUID | str, limit: int
    ) -> tuple[list[StoredRun], list[StoredRun], list[tuple[str, StateType, str, int]]]: ...

    def delete_deployment(self, name: str) -> bool: ...

    # the same reads without a thread hop, for sync callers
    def read_run_sync(self, run_id: UUID | str) -> StoredRun: ...

    def result_of_sync(self, run_id: UUID | str) -> StoredResult | None: ...


class RecordingStore(RunStore, Protocol):
    """What the background writer needs on top of reading (used from its thread only)."""

    def session_for(
        self,
        process_id: str,
        id_prefix: str,
        pid: int | None = None,
        hostname: str | None = None,
        started: float | None = None,
    ) -> int:
        """The recording session of one process recording one registry (whose run ids start
        with `id_prefix`), added if new. Its key numbers the runs it writes."""
        ...

    def write(self, batch: WriteBatch, session: int) -> None:
        """Persist one batch in a single transaction, and mark the process alive.

        Idempotent: writing a batch again (after a failure whose commit did happen, or from
        a spill file) leaves the store as one write did.
        """
        ...

    def heartbeat(self, process_id: str) -> None:
        """Mark the writing process alive (its open runs are not crashed)."""
        ...

    def begin_restart(
        self,
        run: UUID | str,
        process: tuple[str, int, str, float],
        id_prefix: str,
        message: str,
    ) -> Restart:
        """Make a failed top-level flow run ready to run again in `process` (see
        SqlStore.begin_restart)."""
        ...

    def earlier_runs(self, pk: int) -> tuple[list[EarlierRun], dict[int, list[float]]]:
        """What a restart of flow run `pk` can take (see SqlStore.earlier_runs)."""
        ...

    def abort_restart(self, restart: Restart) -> bool:
        """Undo a restart whose attempt never started (see SqlStore.abort_restart)."""
        ...

    def end_process(self, process_id: str, reason: str, *, force: bool = False) -> int:
        """The process is exiting: mark Crashed (with `reason`) the runs it leaves open."""
        ...

    def cancel_requests(self, process_id: str) -> list[UUID]:
        """Open runs this process answers for that `cancel_run` asked to cancel."""
        ...


# -- writing: a registry export, encoded ------------------------------------------------------
#
# How a run's history is stored. Almost every run goes Pending -> Running -> <final state>,
# and its run row already says when (created, start_time) and how it ended (the state_*
# columns). So those three are *implicit*: the creation Pending is `created`, the first
# Running is `start_time`/`start_seq`, the latest state is the `state_*` columns; only the
# other transitions (failed attempts, AwaitingRetry, Retrying, ...) are rows of
# `transition_log`. A state that stops being the latest moves to `transition_log` in the
# same transaction. The `transitions` view shows every state as a row again. This stores a
# task run in one row instead of four, which is what lets the writer keep up with the engine.


class WriteBatch(NamedTuple):
    """One export of the registry, as rows and columns ready to bind.

    New runs come as `plain_runs`, columns (PLAIN_RUN_COLUMNS, numbers only) for runs of the
    usual shape (Pending, Running, latest state; no name, parameters, parent task run or
    message), and `other_runs`, rows (NEW_RUN_COLUMNS), which the store inserts after them,
    replacing a row of the same run (the plain columns may cover every run: see
    encode_batch). `changed_runs` rows (CHANGED_RUN_COLUMNS) are runs of earlier batches with
    new states; `transitions` rows (TRANSITION_COLUMNS) are the explicit states. Runs are
    numbered by registry row: each store adds its session's key. None is avoided where it is
    common because sqlite3 binds it through an adapter lookup (~0.6 µs per value): `''`
    stands for a default name, -1 for no seq, 0.0 for no time.
    """

    id_prefix: str  # run id = id_prefix + the row as 12 hex digits
    run_start: int
    run_end: int
    transition_start: int
    transition_end: int
    spec_names: list[str]  # flow/task names, by key
    plain_runs: list[Sequence[Any]]
    other_runs: list[tuple[Any, ...]]  # (spill files of version 1: without the last two)
    changed_runs: list[tuple[Any, ...]]
    transitions: list[tuple[Any, ...]]
    # Facts (see MemoryRegistry.add_fact), by kind; defaults: spill files of version 1
    fact_start: int = 0
    fact_end: int = 0
    results: Sequence[tuple[Any, ...]] = ()  # RESULT_COLUMNS rows
    tags: Sequence[tuple[int, str]] = ()  # (row, JSON list)
    entrypoints: Sequence[tuple[int, str]] = ()  # (row, 'file.py:function')
    # Restarted runs (registry.Alias): rows keyed by the run's own key (`pk`), not by row
    alias_changed: Sequence[tuple[Any, ...]] = ()  # CHANGED_RUN_COLUMNS, "row" being the key
    alias_transitions: Sequence[tuple[Any, ...]] = ()  # TRANSITION_COLUMNS, idem
    alias_results: Sequence[tuple[Any, ...]] = ()  # RESULT_COLUMNS, idem
    alias_parents: Sequence[tuple[int, int]] = ()  # (row, key): the row's children link to key
    # Runs of other processes' making that are children here (run_deployment as a subflow):
    # (stand-in task row, its flow run's row, the child run's key)
    links: Sequence[tuple[int, int, int]] = ()


PLAIN_RUN_COLUMNS = (  # all numbers: they bind fastest
    "row",
    "kind",  # registry kind code: 0 flow, 1 task
    "key",  # index into WriteBatch.spec_names; its name is spec_name-counter
    "counter",
    "parent_row",  # -1: none
    "created",
    "start_time",
    "start_index",  # start_seq - transition_start
    "state_code",  # position in list(StateType); default name, no message
    "state_ts",
    "state_index",  # state_seq - transition_start
)  # run_count is 1
NEW_RUN_COLUMNS = (
    "row",
    "kind",
    "spec_name",
    "counter",
    "name",  # None: spec_name-counter
    "parent_row",  # -1: none
    "parent_task_row",  # None: none
    "parameters",  # JSON text or None
    "created",
    "start_time",  # None: not started
    "start_seq",  # None: not started
    "state_type",
    "state_name",  # None: the type's default name
    "state_message",
    "state_ts",
    "state_seq",
    "run_count",
    "tags",  # JSON list or None
    "entrypoint",  # a top-level flow run's 'file.py:function', or None
)
_NO_EXTRAS = (None, None)
CHANGED_RUN_COLUMNS = (
    "row",
    "start_time",  # 0.0: no first Running in this batch
    "start_seq",  # -1: idem
    "state_type",
    "state_name",  # '': the type's default name
    "state_message",
    "state_ts",
    "state_seq",
    "run_count_delta",
)
TRANSITION_COLUMNS = ("row", "seq", "type", "name", "message", "ts")  # name '': default
RESULT_COLUMNS = (
    "row",
    "storage",  # the storage's URL (a directory, or an fsspec URL)
    "key",
    "serializer",  # its type name ('pickle', 'json', ...)
    "size",  # bytes of the serialized value
    "created",
    "expires",  # None: never
    "cache",  # 1 when the key is a cache key (other runs may take the result)
    "restore_key",  # what matches it to a call of a restarted flow run, or None
)

_KINDS = ("flow", "task")  # registry kind codes
TYPE_VALUES = [t.value for t in _TYPES]  # state-type code -> type name
_P = _TYPES.index(StateType.PENDING)
_R = _TYPES.index(StateType.RUNNING)
# bytes.translate tables: state-type code -> 1 where it fits a plain run, else 0
_LATEST_OK = bytes(0 if c in (_P, _R) else 1 for c in range(256))
_IS_R = bytes(1 if c == _R else 0 for c in range(256))
_IS_P = bytes(1 if c == _P else 0 for c in range(256))
_SMALL = 4  # batches with at most this many new runs skip the vectorized pass


@functools.lru_cache(maxsize=64)
def run_id_prefix(prefix: int) -> str:
    """The text every run id of a registry starts with (ids are `UUID(int=prefix | row)`)."""
    return str(UUID(int=prefix))[:-12]  # rows are below 2**48: the last group is the row


def run_id(id_prefix: str, pk: int) -> UUID:
    """A run's UUID from its session's id prefix and its key (`session << 32 | row`)."""
    return UUID(f"{id_prefix}{pk & 0xFFFFFFFF:012x}")


def encode_batch(batch: ColumnExport) -> WriteBatch:
    """Split a registry export into new runs, changed runs and explicit transitions.

    Written for the GIL: the passes over every new run are C-level `map`/`compress` over
    the export's arrays (no tuple, no dict entry per run), so the writer thread holds the
    interpreter for well under a microsecond per run while the flows it records go on.
    Only runs of an unusual shape are looked at one by one.
    """
    if batch.types != _TYPES:  # codes are positions in list(StateType)
        raise RuntimeError("the registry numbers state types differently from the store")
    t0, t1 = batch.transition_start, batch.transition_end
    start, end = batch.run_start, batch.run_end
    n = end - start
    rows = range(start, end)
    t_run, t_type, t_ts, t_prev, t_text = (
        batch.t_run,
        batch.t_type,
        batch.t_ts,
        batch.t_prev,
        batch.t_text,
    )
    off = t0.__rsub__  # transition -> index in this batch

    # New runs. Every state of a run created since the last export is in this batch, so its
    # latest state links back (t_prev) through all of them to its creation Pending. A plain
    # run is Pending -> Running -> latest: find them with byte-string arithmetic, no loop.
    last = batch.last.tolist()
    odd: set[int] = set(range(n))  # a few runs (a small flow's last flush): walk them all
    if n > _SMALL:
        li = list(map(off, last))
        pi = list(map(off, _in_batch(list(map(t_prev.__getitem__, li)), t0)))
        ppi = list(map(off, _in_batch(list(map(t_prev.__getitem__, pi)), t0)))
        codes = bytes(map(t_type.__getitem__, li))
        plain = (
            int.from_bytes(codes.translate(_LATEST_OK), "little")
            & int.from_bytes(bytes(map(t_type.__getitem__, pi)).translate(_IS_R), "little")
            & int.from_bytes(bytes(map(t_type.__getitem__, ppi)).translate(_IS_P), "little")
        ).to_bytes(n, "little")  # 1 for a plain run
        odd.clear()
        i = plain.find(0)
        while i >= 0:
            odd.add(i)
            i = plain.find(0, i + 1)
    # a name, parameters, a parent task run or a named latest state: not plain either
    aliases = batch.aliases
    new_aliases = [r - start for r in aliases if r >= start] if aliases else []
    odd.update(new_aliases)  # (their states go to the runs they stand for: see _alias_rows)
    odd.update(r - start for r in batch.names)
    odd.update(r - start for r in batch.parameters)
    odd.update(r - start for r in batch.parent_task)
    for t in t_text:
        r = t_run[t - t0]
        if r >= start:
            odd.add(r - start)
    # Facts. A new run's tags and entrypoint go into its row (such a run is odd); those of
    # runs of earlier batches are updates. Results are rows of their own.
    extras: dict[int, list[Any]] = {}  # row -> [tags JSON, entrypoint]
    results: list[tuple[Any, ...]] = []
    tags: list[tuple[int, str]] = []
    entrypoints: list[tuple[int, str]] = []
    alias_results: list[tuple[Any, ...]] = []
    links: list[tuple[int, int, int]] = []
    for row, what, value in batch.facts:
        if what == FACT_CHILD:
            links.append((row, *value))
            continue
        if aliases and row in aliases:
            if what == FACT_RESULT:
                alias_results.append((aliases[row].pk, *value))
            continue  # (its tags and entrypoint are the run's already)
        if what == FACT_RESULT:
            results.append((row, *value))
            continue
        text = json.dumps(sorted(value)) if what == FACT_TAGS else value
        if row >= start:
            extras.setdefault(row, [None, None])[what == FACT_ENTRYPOINT] = text
        elif what == FACT_TAGS:
            tags.append((row, text))
        elif what == FACT_ENTRYPOINT:
            entrypoints.append((row, text))
    odd.update(r - start for r in extras)
    columns: list[Sequence[Any]] = []
    if len(odd) < n:
        columns = [
            rows,
            batch.kind,
            batch.key,
            batch.counter,
            batch.parent,
            list(map(t_ts.__getitem__, ppi)),
            list(map(t_ts.__getitem__, pi)),
            pi,
            codes,
            list(map(t_ts.__getitem__, li)),
            li,
        ]
        if len(odd) * 8 > n or new_aliases:  # many odd runs: leave them out of the plain columns
            keep = bytearray(b"\x01") * n
            for i in odd:
                keep[i] = 0
            columns = [list(compress(column, keep)) for column in columns]
        # else the plain insert writes them too, with meaningless values, and the insert of
        # `other_runs` replaces those rows: cheaper than filtering every column
    transitions: list[tuple[Any, ...]] = []
    other_runs = []
    new_states = 3 * (n - len(odd))  # states of runs created in this batch
    for i in sorted(odd):
        if aliases and start + i in aliases:
            continue
        run, states = _odd_run(batch, start + i, last[i], transitions)
        other_runs.append((*run, *extras.get(start + i, _NO_EXTRAS)))
        new_states += states

    # Runs of earlier batches with new states: few, and looked at one by one.
    changed: dict[int, list[Any]] = {}
    old = () if new_states == t1 - t0 else range(t1 - t0)
    for i in compress(old, map(start.__gt__, t_run)):
        r, t, code = t_run[i], t0 + i, t_type[i]
        if aliases and r in aliases:
            continue
        name, message = t_text.get(t, (None, None))
        entry = changed.get(r)
        if entry is None:
            entry = changed[r] = [r, 0.0, -1, "", "", None, 0.0, -1, 0]
        elif entry[7] != entry[2]:  # the previous latest is not the first Running: explicit
            transitions.append((r, entry[7], entry[3], entry[4], entry[5], entry[6]))
        if code == _R:
            entry[8] += 1
            if name is None and message is None:
                entry[1], entry[2] = t_ts[i], t
        entry[3:8] = [TYPE_VALUES[code], name or "", message, t_ts[i], t]
    return WriteBatch(
        id_prefix=run_id_prefix(batch.prefix),
        run_start=start,
        run_end=end,
        transition_start=t0,
        transition_end=t1,
        spec_names=batch.keys,
        plain_runs=columns,
        other_runs=other_runs,
        changed_runs=[tuple(c) for c in changed.values()],
        transitions=transitions,
        fact_start=batch.fact_start,
        fact_end=batch.fact_end,
        results=results,
        tags=tags,
        entrypoints=entrypoints,
        links=links,
        **(_alias_rows(batch, alias_results) if aliases else {}),
    )


def _alias_rows(batch: ColumnExport, alias_results: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The WriteBatch fields for restarted runs: each state a row of the log, the latest one
    the run's new latest state (the store moves the one before to the log), all with
    sequence numbers of the attempt. The creation Pending is left out: the store recorded
    AwaitingRetry when the restart began."""
    t0, t_run = batch.transition_start, batch.t_run
    changed: list[tuple[Any, ...]] = []
    log: list[tuple[Any, ...]] = []
    for row, alias in batch.aliases.items():
        found: list[int] = []
        i = -1
        while True:  # (array.index: a C-level search, the batch may be large)
            try:
                i = t_run.index(row, i + 1)
            except ValueError:
                break
            if batch.t_prev[i] != -1:
                found.append(i)
        if not found:
            continue
        runs = 0
        start: tuple[float, int] = (0.0, -1)  # the attempt's first Running: the start of a
        for i in found:  # run that never started before (the store keeps an older one)
            code = batch.t_type[i]
            if code == _R and not runs:
                start = (batch.t_ts[i], alias.seq_base + t0 + i)
            runs += code == _R
            name, message = batch.t_text.get(t0 + i, (None, None))
            seq = alias.seq_base + t0 + i
            entry = (alias.pk, seq, TYPE_VALUES[code], name or "", message, batch.t_ts[i])
            if i != found[-1]:
                log.append(entry)
            else:
                changed.append((alias.pk, *start, *entry[2:5], entry[5], seq, runs))
    return {
        "alias_changed": changed,
        "alias_transitions": log,
        "alias_results": alias_results,
        "alias_parents": [(row, alias.pk) for row, alias in batch.aliases.items()],
    }


def _in_batch(prev: list[int], t0: int) -> list[int]:
    """Replace links that leave the batch (below t0: -1 for a creation Pending, or a state of
    an older batch, reached from a run still Pending through the t0 stand-in) by t0, a
    harmless index: such runs are not plain anyway. Usually there are none: one C-level
    `min` decides."""
    if prev and min(prev) < t0:
        return [t0 if p < t0 else p for p in prev]
    return prev


def _odd_run(
    batch: ColumnExport, row: int, last: int, transitions: list[tuple[Any, ...]]
) -> tuple[tuple[Any, ...], int]:
    """A new run of an unusual shape: walk its states, the explicit ones go to `transitions`.

    Returns its NEW_RUN_COLUMNS row but for tags and entrypoint, and how many states it has.
    """
    t0 = batch.transition_start
    chain = []
    t = last
    while t >= t0:
        chain.append(t - t0)
        t = batch.t_prev[t - t0]
    chain.reverse()  # chain[0] is the creation Pending
    t_type, t_ts, t_text = batch.t_type, batch.t_ts, batch.t_text
    first_run: int | None = None
    run_count = 0
    for i in chain[1:]:
        if t_type[i] == _R:
            run_count += 1
            if first_run is None and t0 + i not in t_text:
                first_run = i
    for i in chain[1:-1]:
        if i != first_run:
            text = t_text.get(t0 + i, (None, None))
            transitions.append(
                (row, t0 + i, TYPE_VALUES[t_type[i]], text[0] or "", text[1], t_ts[i])
            )
    latest = chain[-1]
    state_name, message = t_text.get(last, (None, None)) if len(chain) > 1 else (None, None)
    params = batch.parameters.get(row)
    k = row - batch.run_start
    return (
        (
            row,
            _KINDS[batch.kind[k]],
            batch.keys[batch.key[k]],
            batch.counter[k],
            batch.names.get(row),
            batch.parent[k],
            batch.parent_task.get(row),
            None if params is None else params_json(params),
            t_ts[chain[0]],
            None if first_run is None else t_ts[first_run],
            None if first_run is None else t0 + first_run,
            TYPE_VALUES[t_type[latest]],
            state_name,
            message,
            t_ts[latest],
            last,
            run_count,
        ),
        len(chain),
    )


#: What stands for a parameter value too large to store (a run refused for its parameter
#: size, ASYNCFLOW_MAX_PARAMETERS_BYTES, is stored with its small values and these markers).
TRUNCATED = "<truncated by asyncflow: {size:,} bytes as JSON>"
#: What stands for a value JSON cannot hold (an object of a class of one's own, NaN...).
NOT_JSON = "<not JSON, stored as its repr: {repr}>"


def params_json(parameters: dict[str, Any] | None) -> str | None:
    """Parameters as JSON text, at most ASYNCFLOW_MAX_PARAMETERS_BYTES: larger values
    become a TRUNCATED marker. Values JSON cannot hold become their pydantic form or repr."""
    if parameters is None:
        return None
    text = _json_text(parameters)
    from asyncflow.settings import get_settings

    limit = get_settings().max_parameters_bytes
    if len(text) <= limit:
        return text
    values = {str(k): _json_text({"v": v}) for k, v in parameters.items()}
    kept: dict[str, Any] = {}
    budget = limit
    for key, value in sorted(values.items(), key=lambda kv: len(kv[1])):  # smallest first
        size = len(value) - 6  # without '{"v":' and '}'
        if size + len(key) + 4 <= budget and size <= 1024:
            kept[key] = json.loads(value)["v"]
            budget -= size + len(key) + 4
        else:
            kept[key] = TRUNCATED.format(size=size)
    return json.dumps({k: kept[k] for k in values}, separators=(",", ":"))


def _json_text(parameters: dict[str, Any]) -> str:
    try:  # plain JSON values (the usual case) need no pydantic
        return json.dumps(parameters, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        pass
    from pydantic_core import to_jsonable_python

    try:
        value = to_jsonable_python(parameters, fallback=_not_json)
    except Exception:  # a value whose serializer itself fails: keep its repr
        value = {str(k): _not_json(v) for k, v in parameters.items()}
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity are not JSON: keep them as strings
        return json.dumps(_finite(value), separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _not_json(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _not_json(value: Any) -> str:
    return NOT_JSON.format(repr=_safe_repr(value))


def lossy_parameters(parameters: dict[str, Any]) -> list[str]:
    """The parameters whose stored values are not what the run got: too large to store
    (TRUNCATED), or not JSON (NOT_JSON), anywhere inside them."""
    marks = (TRUNCATED.split("{", 1)[0], NOT_JSON.split("{", 1)[0])

    def lossy(value: Any) -> bool:
        if isinstance(value, str):
            return value.startswith(marks)
        if isinstance(value, dict):
            return any(lossy(v) for v in value.values())
        if isinstance(value, list):
            return any(lossy(v) for v in value)
        return False

    return [name for name, value in parameters.items() if lossy(value)]


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


# -- reading ------------------------------------------------------------------------------------
#: Columns every run query selects, in this order (`row_to_run` decodes them). Run ids are
#: not stored: a run's key and its session's id prefix make it (see `run_id`).
_OTHER_PREFIX = (
    "CASE WHEN {key} >> 32 <> r.pk >> 32 "
    "THEN (SELECT q.id_prefix FROM processes q WHERE q.pk = {key} >> 32) END"
)
RUN_COLUMNS = (
    "r.pk, p.id_prefix, r.kind, r.name, r.spec_name, r.state_type, r.state_name, "
    "r.state_message, r.created, r.start_time, r.state_ts, r.parent_pk, r.parent_task_pk, "
    "(SELECT c.pk FROM runs c WHERE c.parent_task_pk = r.pk), r.parameters, r.run_count, "
    "r.start_seq, r.state_seq, r.tags, r.entrypoint, r.deployment, r.scheduled_time, "
    # the id prefixes of linked runs of other sessions (a restarted or served run's, or
    # run_deployment's child): NULL, and no lookup, when the session is the run's own
    f"{_OTHER_PREFIX.format(key='r.parent_pk')}, {_OTHER_PREFIX.format(key='r.parent_task_pk')}, "
    f"(SELECT {_OTHER_PREFIX.format(key='c.pk')} FROM runs c WHERE c.parent_task_pk = r.pk)"
)
RUN_FROM = "runs r JOIN processes p ON p.pk = r.pk >> 32"


def _dt(ts: float | None) -> datetime.datetime | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def row_to_run(row: Sequence[Any], log: Sequence[Sequence[Any]] | None = None) -> StoredRun:
    """A run from its RUN_COLUMNS row; with its `transition_log` rows (seq, type, name,
    message, ts), its full history too."""
    (pk, prefix, kind, name, spec, type_, state_name, message, created, start_time, state_ts,
     parent, parent_task, child, params, run_count, start_seq, state_seq, tags,
     entrypoint, deployment, scheduled, parent_prefix, parent_task_prefix,
     child_prefix) = row  # fmt: skip
    state_type = StateType(type_)
    if isinstance(params, str):
        params = json.loads(params)
    if isinstance(tags, str):
        tags = json.loads(tags)
    states: tuple[StoredState, ...] = ()
    if log is not None:
        history = [(-1, StateType.PENDING, "Pending", None, created)]
        if start_seq is not None and all(entry[0] != start_seq for entry in log):
            # (a restarted or scheduled run's first Running may be in the log as well)
            history.append((start_seq, StateType.RUNNING, "Running", None, start_time))
        history.extend((s, StateType(t), n, m, ts) for s, t, n, m, ts in log)
        if not latest_is_implicit(type_, state_name, message, state_seq, start_seq):
            history.append((state_seq, state_type, state_name, message, state_ts))
        history.sort(key=lambda h: h[0])
        states = tuple(StoredState(t, n, m, _utc(ts)) for _, t, n, m, ts in history)
    return StoredRun(
        id=run_id(prefix, pk),
        kind=kind,
        name=name,
        spec_name=spec,
        state_type=state_type,
        state_name=state_name,
        state_message=message,
        created=_utc(created),
        start_time=_dt(start_time),
        end_time=_utc(state_ts) if state_type in TERMINAL else None,
        parent_flow_run_id=None if parent is None else run_id(parent_prefix or prefix, parent),
        parent_task_run_id=(
            None if parent_task is None else run_id(parent_task_prefix or prefix, parent_task)
        ),
        child_flow_run_id=None if child is None else run_id(child_prefix or prefix, child),
        parameters=params,
        run_count=run_count,
        states=states,
        tags=tuple(tags or ()),
        entrypoint=entrypoint,
        deployment=deployment,
        scheduled_time=_dt(scheduled),
    )


def latest_is_implicit(
    type_: str, name: str, message: str | None, state_seq: int, start_seq: int | None
) -> bool:
    """Whether a run's latest state is its creation Pending or first Running (so it is
    already in the history through `created` / `start_time`)."""
    if type_ == "PENDING" and name == "Pending" and message is None:
        return True
    return state_seq == start_seq


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


class IdLookup(NamedTuple):
    """Which runs an id or id prefix can name: sessions whose id prefix is in
    `[prefix_low, prefix_high)`, rows `row_low..row_high` of each."""

    prefix_low: str
    prefix_high: str
    row_low: int
    row_high: int


_ROW_MAX = 0xFFFFFFFF


def id_lookup(run_id: UUID | str) -> IdLookup:
    """Plan the lookup of a full run id or a prefix of one (hyphens optional).

    ValueError for text that cannot start a run id.
    """
    digits = str(run_id).strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{str(run_id)!r} is not a run id or a prefix of one.")
    text = "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))
    text = text.rstrip("-")
    if len(text) <= 24:  # only the session part: every run of the matching sessions
        return IdLookup(text, text + "~", 0, _ROW_MAX)
    session, row = text[:24], text[24:]
    low, high = int(row.ljust(12, "0"), 16), int(row.ljust(12, "f"), 16)
    return IdLookup(session, session + "~", min(low, _ROW_MAX + 1), min(high, _ROW_MAX))


def unknown_run(run_id: UUID | str, url: str) -> KeyError:
    return KeyError(f"No run with id {str(run_id)!r} in {url}.")


def ambiguous_run(run_id: UUID | str, ids: list[str]) -> ValueError:
    return ValueError(
        f"Run id prefix {str(run_id)!r} is ambiguous: it matches {', '.join(ids)} (and maybe "
        "more); give more characters."
    )


# -- crash detection ----------------------------------------------------------------------------
def crash_reason(
    pid: int, hostname: str, started: float, heartbeat: float, here: str, now: float
) -> str | None:
    """Why a recording process is dead, or None while it may be alive.

    On this host the pid decides: no such process (or a zombie, or a process that started
    after the recorded one, i.e. a reused pid) is dead. On another host a heartbeat older than
    STALE_AFTER_SECONDS is.
    """
    if hostname == here:
        if pid == os.getpid():
            return None
        started_at = _process_start(pid)
        if started_at is None:
            return f"The process that ran it (pid {pid} on {hostname}) died before it finished."
        if started_at > started + 2.0:  # /proc times are coarse; reuse needs a full pid cycle
            return (
                f"The process that ran it (pid {pid} on {hostname}) died before it finished "
                "(its pid now belongs to another process)."
            )
        return None
    if now - heartbeat > STALE_AFTER_SECONDS:
        last = datetime.datetime.fromtimestamp(heartbeat, datetime.timezone.utc)
        return (
            f"The process that ran it (pid {pid} on {hostname}) stopped reporting at "
            f"{last:%Y-%m-%d %H:%M:%S} UTC and is presumed dead."
        )
    return None


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process, 0.0 when unknown; None when it is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, owned by someone else
        pass
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return 0.0  # no /proc (macOS...): the pid exists, trust it
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished running
        return None
    try:
        ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            btime = next(
                int(line.split()[1])
                for line in f.read().decode().splitlines()
                if line.startswith("btime")
            )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
