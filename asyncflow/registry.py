"""The in-memory run registry: every run and every state transition, compactly.

Columnar on purpose: a finished task run costs a few dozen bytes here (a row in a handful of
`array`s, three transitions of 17 bytes), not a graph of Python objects, so a million task
runs fit in tens of megabytes. Run ids are `prefix | sequence number`, so finding a run's
row is arithmetic, not a dictionary lookup. Appends are O(1).

Writers never wait for each other. Under the GIL, a thread that blocks on a contended lock
hands the GIL over and then holds the lock while it waits for the GIL back, so a worker
pool writing transitions fell into a lock convoy: a context switch per write, 2-3x the
wall time of `.submit()`. A transition whose writer finds the lock taken goes to an inbox
instead, and whoever holds the lock next (a writer, or any reader) moves it into place.

Generations keep a long-lived process flat. New top-level runs (a flow or task run with no
parent) open their tree in the *current* registry; once it holds `ROTATE_ROWS` rows, the
next tree opens a new one, and the old one is *closed*: it only takes the rows of the trees
already in it. A closed registry whose trees have all finished is *retired* (dropped from
the process's live set) at once, or, when a store writer keeps it, once everything in it is
written. Futures and states of its runs hold it by reference, so it lives exactly as long as
the user keeps one of them.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from asyncflow.states import State, StateDetails, StateType

KIND_FLOW = 0
KIND_TASK = 1

_TYPES = list(StateType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_NO_ROW = -1
_PENDING = _TYPE_CODE[StateType.PENDING]


class ExportedRun(NamedTuple):
    row: int
    id: UUID
    kind: str
    spec_name: str
    name: str
    parent_row: int  # -1 for none
    parent_task_row: int  # -1 for none
    parameters: dict[str, Any] | None


class ExportedTransition(NamedTuple):
    seq: int  # position in the registry's transition log
    row: int
    type: StateType
    ts: float
    name: str | None
    message: str | None


class Export(NamedTuple):
    runs: list[ExportedRun]
    transitions: list[ExportedTransition]
    run_end: int
    transition_end: int


class Alias(NamedTuple):
    """A row that records a new attempt of a run already in the store (a restarted flow
    run): it has that run's id, its states go to that run's key with sequence numbers from
    `seq_base` on, and its child runs are linked to that key."""

    id: UUID
    pk: int  # the run's key in the recording store
    seq_base: int


class ColumnExport(NamedTuple):
    """Runs `[run_start, run_end)` and transitions `[transition_start, transition_end)` as
    columns: array slices plus the sparse per-row extras, keyed by row / transition index.

    `t_type` holds codes into `types`, `key` indexes into `keys` (flow/task names); a task run
    without an entry in `names` is named `f"{keys[key[i]]}-{counter[i]}"`.
    """

    prefix: int  # the registry's id prefix: run ids are UUID(int=prefix | row)
    types: list[StateType]
    run_start: int
    run_end: int
    kind: array[int]
    key: array[int]
    keys: list[str]
    counter: array[int]
    parent: array[int]
    names: dict[int, str]
    parameters: dict[int, dict[str, Any]]
    parent_task: dict[int, int]
    last: array[int]  # each run's latest transition (as of this export)
    transition_start: int
    transition_end: int
    t_run: array[int]
    t_type: array[int]
    t_ts: array[float]
    t_prev: array[int]  # the run's transition before this one, or -1
    t_text: dict[int, tuple[str | None, str | None]]
    fact_start: int
    fact_end: int
    facts: list[tuple[int, str, Any]]  # (row, FACT_*, value), from fact_start on
    aliases: dict[int, Alias]  # rows that are another run of the store (see `Alias`)


#: What a fact says about its run (see `MemoryRegistry.add_fact`).
FACT_TAGS = "tags"  # the run's tags (a set)
FACT_ENTRYPOINT = "entrypoint"  # where its flow is defined: 'path/to/file.py:function'
FACT_RESULT = "result"  # its persisted result: a store.base.RESULT_COLUMNS row without "row"
FACT_CHILD = "child"  # a stand-in task run's child run in the store: (flow row, child's key)

_ROW_BITS = 48  # a run id's last 12 hex digits are its row
_ROW_MASK = (1 << _ROW_BITS) - 1


def new_prefix() -> int:
    """A random run-id prefix: 64 random bits but for the UUID version (8, "custom") and the
    RFC 4122 variant, so every id is a valid UUID (`UUID(...).version == 8`)."""
    high = int.from_bytes(os.urandom(8), "big")
    high = (high & ~(0xF << 12)) | (0x8 << 12)  # version nibble: the 13th hex digit
    return (high << 64) | (0b10 << 62)  # variant bits: the top of the 17th hex digit


def _tail(d: dict[int, Any], start: int) -> dict[int, Any]:
    """Entries of `d` with key >= start; `d`'s keys are inserted in increasing order."""
    out: dict[int, Any] = {}
    for key in reversed(d):
        if key < start:
            break
        out[key] = d[key]
    return out


@dataclass(slots=True)
class RunRecord:
    """A run as recorded: identity, links, parameters and its full state history."""

    id: UUID
    kind: str
    name: str
    spec_name: str
    parent_flow_run_id: UUID | None
    parent_task_run_id: UUID | None
    child_flow_run_id: UUID | None
    parameters: dict[str, Any] | None
    states: list[State[Any]] = field(default_factory=list)

    @property
    def state(self) -> State[Any] | None:
        return self.states[-1] if self.states else None

    @property
    def state_types(self) -> list[StateType]:
        return [s.type for s in self.states]

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.states]

    @property
    def run_count(self) -> int:
        return sum(1 for s in self.states if s.type is StateType.RUNNING)


class MemoryRegistry:
    """Records runs and transitions in memory; the persistent stores read from here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = new_prefix()
        self.open_trees = 0  # top-level runs registered here and not finished yet
        self.closed = False  # no new tree opens here (see the module docstring)
        #: Who persists this registry (the store writer), once decided; None: nobody.
        self.keeper: Any = None
        self.decided = False  # whether the tree listener has seen this registry
        self.marks: dict[str, Any] = {}  # how far each store (by URL) has it, for its keeper
        self._keys: list[str] = []  # distinct flow/task names
        self._key_index: dict[str, int] = {}
        # one row per run
        self._kind = array("B")
        self._key = array("I")
        self._counter = array("I")  # task runs: the N in the default name 'task-N'
        self._parent = array("q")  # row of the parent flow run, or -1
        self._last = array("q")  # row of the run's latest transition, or -1
        self._names: dict[int, str] = {}  # runs whose name is not 'spec-counter'
        self._params: dict[int, dict[str, Any]] = {}
        self._parent_task: dict[int, int] = {}  # child flow row -> row of its parent task run
        self._child_flow: dict[int, int] = {}  # task row -> child flow row
        # one row per transition, linked backwards per run
        self._t_run = array("I")
        self._t_type = array("B")
        self._t_ts = array("d")
        self._t_prev = array("q")
        self._t_text: dict[int, tuple[str | None, str | None]] = {}
        # what is known of a run after it is added, in the order it became known (see add_fact)
        self._facts: list[tuple[int, str, Any]] = []
        self._aliases: dict[int, Alias] = {}
        self.aliases_stored = True  # False once the store they point into was replaced
        # transitions whose writer found the lock taken: (row, type code, ts, name, message)
        self._inbox: deque[tuple[int, int, float, str | None, str | None]] = deque()

    # -- writing (hot path) -----------------------------------------------------------------
    def _key_of(self, spec_name: str) -> int:
        key = self._key_index.get(spec_name)
        if key is None:
            key = self._key_index[spec_name] = len(self._keys)
            self._keys.append(spec_name)
        return key

    def add_run(
        self,
        kind: int,
        spec_name: str,
        parent_row: int,
        counter: int = 0,
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> int:
        """Register a run in Pending (at `ts`, default now) and return its row.

        The run's id is `self.uuid(row)`. The engine registers top-level runs (new trees)
        with `add_tree` instead, which counts them and picks the generation.
        """
        with self._lock:
            if self._inbox:
                self._drain()
            ts = time.time() if ts is None else ts
            return self._append_run(kind, spec_name, parent_row, counter, name, parameters, ts)

    def _add_tree_run(
        self,
        kind: int,
        spec_name: str,
        counter: int,
        name: str | None,
        parameters: dict[str, Any] | None,
        alias: Alias | None = None,
    ) -> int | None:
        """`add_run` of a top-level run, unless this registry closed meanwhile (None): a tree
        must never open in a registry that may already be retired."""
        with self._lock:
            if self.closed:
                return None
            if self._inbox:
                self._drain()
            row = self._append_run(kind, spec_name, _NO_ROW, counter, name, parameters, time.time())
            self.open_trees += 1
            if alias is not None:  # (with the row: the writer must never see it without)
                self._aliases[row] = alias
                with _live_lock:
                    _aliased[alias.id.int] = (self, row)
        if not self.decided and _tree_listener is not None:
            _tree_listener(self)  # outside the lock: the listener may export from here
        return row

    def tree_finished(self) -> None:
        """A top-level run registered here is done (its final state is recorded)."""
        with self._lock:
            self.open_trees -= 1
            if not self.closed or self.open_trees > 0 or self.keeper is not None:
                return
        _retire(self)

    def end_tree(
        self,
        row: int,
        type_: StateType,
        ts: float,
        name: str | None = None,
        message: str | None = None,
    ) -> None:
        """`add_transition` of a top-level run's final state, then `tree_finished`, in one
        lock round (it is on the path of every top-level flow call)."""
        with self._lock:
            if self._inbox:
                self._drain()
            t = len(self._t_type)  # `_record`, inlined as in `add_transition`
            self._t_run.append(row)
            self._t_type.append(_TYPE_CODE[type_])
            self._t_ts.append(ts)
            last = self._last
            self._t_prev.append(last[row])
            last[row] = t
            if name is not None or message is not None:
                self._t_text[t] = (name, message)
            self.open_trees -= 1
            if not self.closed or self.open_trees > 0 or self.keeper is not None:
                return
        _retire(self)

    @property
    def retirable(self) -> bool:
        """Closed, and every tree in it finished: nothing will be recorded here again."""
        return self.closed and self.open_trees <= 0

    @property
    def prefix(self) -> int:
        return self._prefix

    def add_subflow(
        self,
        spec_name: str,
        parent_row: int,
        counter: int,
        name: str,
        parameters: dict[str, Any],
    ) -> tuple[int, int]:
        """Register a nested flow run and the task run standing for it in its parent flow run.

        Returns (task row, flow row), both in Pending and linked to each other.
        """
        ts = time.time()
        with self._lock:
            if self._inbox:
                self._drain()
            task_row = self._append_run(KIND_TASK, spec_name, parent_row, counter, None, None, ts)
            row = self._append_run(KIND_FLOW, spec_name, parent_row, 0, name, parameters, ts)
            self._child_flow[task_row] = row
            self._parent_task[row] = task_row
        return task_row, row

    def _append_run(
        self,
        kind: int,
        spec_name: str,
        parent_row: int,
        counter: int,
        name: str | None,
        parameters: dict[str, Any] | None,
        ts: float,
    ) -> int:
        """Append one run with its Pending transition (lock held)."""
        row = len(self._kind)
        t = len(self._t_type)
        self._kind.append(kind)
        self._key.append(self._key_of(spec_name))
        self._counter.append(counter)
        self._parent.append(parent_row)
        self._last.append(t)
        self._t_run.append(row)
        self._t_type.append(_PENDING)
        self._t_ts.append(ts)
        self._t_prev.append(_NO_ROW)
        if name is not None:
            self._names[row] = name
        if parameters is not None:
            self._params[row] = parameters
        return row

    def add_transition(
        self,
        row: int,
        type_: StateType,
        ts: float,
        name: str | None = None,
        message: str | None = None,
    ) -> None:
        if not self._lock.acquire(False):
            self._inbox.append((row, _TYPE_CODE[type_], ts, name, message))
            return  # the lock's holder, or the next one, records it
        try:
            if self._inbox:
                self._drain()
            # `_record`, inlined: this is the hottest call in the engine.
            t = len(self._t_type)
            self._t_run.append(row)
            self._t_type.append(_TYPE_CODE[type_])
            self._t_ts.append(ts)
            last = self._last
            self._t_prev.append(last[row])
            last[row] = t
            if name is not None or message is not None:
                self._t_text[t] = (name, message)
        finally:
            self._lock.release()

    def _record(
        self, row: int, code: int, ts: float, name: str | None, message: str | None
    ) -> None:
        """Append one transition (lock held)."""
        t = len(self._t_type)
        self._t_run.append(row)
        self._t_type.append(code)
        self._t_ts.append(ts)
        self._t_prev.append(self._last[row])
        self._last[row] = t
        if name is not None or message is not None:
            self._t_text[t] = (name, message)

    def _drain(self) -> None:
        """Record the inbox's transitions, oldest first (lock held)."""
        inbox = self._inbox
        while inbox:
            self._record(*inbox.popleft())

    def set_name(self, row: int, name: str) -> None:
        self._names[row] = name

    def add_fact(self, row: int, what: str, value: Any) -> None:
        """Record something learned about a run after it was added (its tags, its flow's
        entrypoint, its persisted result): the store's writer takes facts in order, with
        their own mark, like transitions. Never waits (a list append is atomic)."""
        self._facts.append((row, what, value))

    def facts_of(self, row: int, what: str) -> list[Any]:
        """The values of one kind of fact recorded for a run, oldest first."""
        return [v for r, w, v in self._facts if r == row and w == what]

    @property
    def fact_count(self) -> int:
        return len(self._facts)

    # -- export (for persistent stores; never on the hot path) ---------------------------------
    def export(self, run_start: int, transition_start: int) -> Export:
        """Runs and transitions recorded since the given watermarks, as plain tuples.

        A persistent store's writer calls this from its own thread and keeps the returned
        `run_end`/`transition_end` as its next watermarks. Every row is complete when
        exported: a run's identity and links are written together with its row.
        """
        with self._lock:
            self._drain()
            run_end = len(self._kind)
            transition_end = len(self._t_type)
            runs = [
                ExportedRun(
                    row=row,
                    id=self.uuid(row),
                    kind="flow" if self._kind[row] == KIND_FLOW else "task",
                    spec_name=self._keys[self._key[row]],
                    name=self.name_of(row),
                    parent_row=self._parent[row],
                    parent_task_row=self._parent_task.get(row, _NO_ROW),
                    parameters=self._params.get(row),
                )
                for row in range(run_start, run_end)
            ]
            transitions = [
                ExportedTransition(
                    seq=t,
                    row=self._t_run[t],
                    type=_TYPES[self._t_type[t]],
                    ts=self._t_ts[t],
                    name=self._t_text.get(t, (None, None))[0],
                    message=self._t_text.get(t, (None, None))[1],
                )
                for t in range(transition_start, transition_end)
            ]
        return Export(runs, transitions, run_end, transition_end)

    def export_columns(
        self, run_start: int, transition_start: int, fact_start: int = 0
    ) -> ColumnExport:
        """Like `export`, as columns: array slices instead of a tuple (and UUID) per row.

        What the persistent store's writer uses: it costs well under a microsecond per run,
        where building tuples costs ~16 µs, and it holds the lock only for the copies.
        """
        with self._lock:
            self._drain()
            run_end = len(self._kind)
            transition_end = len(self._t_type)
            # (after run_end: a fact's run was added before the fact, so every one is in)
            facts = self._facts[fact_start:]
            batch = ColumnExport(
                prefix=self._prefix,
                types=_TYPES,
                run_start=run_start,
                run_end=run_end,
                kind=self._kind[run_start:run_end],
                key=self._key[run_start:run_end],
                keys=self._keys[:],
                counter=self._counter[run_start:run_end],
                parent=self._parent[run_start:run_end],
                names=_tail(self._names, run_start),
                parameters=_tail(self._params, run_start),
                parent_task=_tail(self._parent_task, run_start),
                last=self._last[run_start:run_end],
                transition_start=transition_start,
                transition_end=transition_end,
                t_run=self._t_run[transition_start:transition_end],
                t_type=self._t_type[transition_start:transition_end],
                t_ts=self._t_ts[transition_start:transition_end],
                t_prev=self._t_prev[transition_start:transition_end],
                t_text=_tail(self._t_text, transition_start),
                fact_start=fact_start,
                fact_end=fact_start + len(facts),
                facts=facts,
                aliases=(
                    dict(self._aliases) if self._aliases and self.aliases_stored else _NO_ALIASES
                ),
            )
        return batch

    # -- reading ----------------------------------------------------------------------------
    def uuid(self, row: int) -> UUID:
        if self._aliases:
            alias = self._aliases.get(row)
            if alias is not None:
                return alias.id
        return UUID(int=self._prefix | row)

    def row_of(self, run_id: UUID | str | int) -> int | None:
        """The row of a run id (a UUID, its text, or its int) here, or None. A restarted
        run's id names its newest attempt's row (an alias), not the row of its first."""
        value = run_id if isinstance(run_id, int) else UUID(str(run_id)).int
        for r in sorted(self._aliases, reverse=True) if self._aliases else ():
            if self._aliases[r].id.int == value:
                return r
        row = value ^ self._prefix
        if row >> 64 or row >= len(self._kind):
            return None
        return row

    def __len__(self) -> int:
        return len(self._kind)

    @property
    def transition_count(self) -> int:
        """Transitions recorded, counting those still in the inbox."""
        return len(self._t_type) + len(self._inbox)

    def name_of(self, row: int) -> str:
        name = self._names.get(row)
        if name is None:
            name = f"{self._keys[self._key[row]]}-{self._counter[row]}"
        return name

    def history(self, row: int) -> list[State[Any]]:
        with self._lock:
            self._drain()
            rows: list[int] = []
            t = self._last[row]
            while t != _NO_ROW:
                rows.append(t)
                t = self._t_prev[t]
        states: list[State[Any]] = []
        for t in reversed(rows):
            name, message = self._t_text.get(t, (None, None))
            states.append(State(_TYPES[self._t_type[t]], name, message, timestamp=self._t_ts[t]))
        return states

    def get(self, run_id: UUID | str | int) -> RunRecord:
        row = run_id if isinstance(run_id, int) else self.row_of(run_id)
        if row is None or not 0 <= row < len(self._kind):
            raise KeyError(f"No run with id {run_id} in this registry.")
        parent = self._parent[row]
        parent_task = self._parent_task.get(row)
        child = self._child_flow.get(row)
        record = RunRecord(
            id=self.uuid(row),
            kind="flow" if self._kind[row] == KIND_FLOW else "task",
            name=self.name_of(row),
            spec_name=self._keys[self._key[row]],
            parent_flow_run_id=None if parent == _NO_ROW else self.uuid(parent),
            parent_task_run_id=None if parent_task is None else self.uuid(parent_task),
            child_flow_run_id=None if child is None else self.uuid(child),
            parameters=self._params.get(row),
            states=self.history(row),
        )
        details = self.details(row)
        for state in record.states:
            state._details = details
        return record

    def details(self, row: int) -> StateDetails:
        """The links a state of this run carries (its run ids, parent/child links)."""
        parent = self._parent[row]
        parent_task = self._parent_task.get(row)
        child = self._child_flow.get(row)
        own = self.uuid(row)
        is_flow = self._kind[row] == KIND_FLOW
        return StateDetails(
            flow_run_id=own if is_flow else (None if parent == _NO_ROW else self.uuid(parent)),
            task_run_id=None if is_flow else own,
            child_flow_run_id=None if child is None else self.uuid(child),
            parent_task_run_id=None if parent_task is None else self.uuid(parent_task),
        )

    def runs(self, kind: str | None = None, spec_name: str | None = None) -> Iterator[RunRecord]:
        """Every recorded run, oldest first, optionally filtered by kind and flow/task name."""
        want_kind = None if kind is None else (KIND_FLOW if kind == "flow" else KIND_TASK)
        want_key = None if spec_name is None else self._key_index.get(spec_name, -2)
        for row in range(len(self._kind)):
            if want_kind is not None and self._kind[row] != want_kind:
                continue
            if want_key is not None and self._key[row] != want_key:
                continue
            yield self.get(row)

    def children(self, run_id: UUID | str) -> list[RunRecord]:
        """Runs whose parent flow run is `run_id` (task runs and subflow runs)."""
        row = self.row_of(run_id)
        if row is None:
            raise KeyError(f"No run with id {run_id} in this registry.")
        return [self.get(r) for r in range(row + 1, len(self._parent)) if self._parent[r] == row]


#: Rows a registry takes before new trees open in a fresh one (see the module docstring).
#: Small enough that a retired generation is a few hundred KB, large enough that rotating
#: (a new registry, a new session row in the store) is rare.
ROTATE_ROWS = 8192

_registry = MemoryRegistry()
#: Registries not retired yet, by id prefix (a run id's upper 64 bits), oldest first.
_live: dict[int, MemoryRegistry] = {_registry._prefix: _registry}
_live_lock = threading.Lock()
#: Runs restarted in this process (aliased rows), by id: (registry, row).
_aliased: dict[int, tuple[MemoryRegistry, int]] = {}
_NO_ALIASES: dict[int, Alias] = {}
_tree_listener: Any = None  # called with a registry when it gets its first tree


def set_tree_listener(listener: Any) -> None:
    """Subscribe `listener(registry)` to a registry's first top-level run (the store writer
    decides there whether and where to persist it); None unsubscribes."""
    global _tree_listener
    _tree_listener = listener


def get_registry() -> MemoryRegistry:
    """The current registry: where new top-level runs open their tree."""
    return _registry


def registry_for_new_tree() -> MemoryRegistry:
    """The registry a new top-level run goes to: the current one, rotated when full."""
    registry = _registry
    if len(registry._kind) < ROTATE_ROWS:
        return registry
    return _rotate(registry)


def add_tree(
    kind: int,
    spec_name: str,
    counter: int = 0,
    name: str | None = None,
    parameters: dict[str, Any] | None = None,
    alias: Alias | None = None,
) -> tuple[MemoryRegistry, int]:
    """Register a top-level run (a new tree) in Pending: (its registry, its row)."""
    while True:
        registry = registry_for_new_tree()
        row = registry._add_tree_run(kind, spec_name, counter, name, parameters, alias)
        if row is not None:
            return registry, row


def _rotate(expected: MemoryRegistry | None) -> MemoryRegistry:
    global _registry
    with _live_lock:
        old = _registry
        if expected is not None and old is not expected:
            return old  # another thread rotated first
        _registry = new = MemoryRegistry()
        _live[new._prefix] = new
    with old._lock:
        old.closed = True
        retire = old.open_trees <= 0 and old.keeper is None
    if retire:
        _retire(old)
    return new


def reset_registry() -> MemoryRegistry:
    """Start a fresh current registry (tests; apps that want the in-memory history gone).

    The old one is closed: the trees still running there finish there.
    """
    return _rotate(None)


def _retire(registry: MemoryRegistry) -> None:
    with _live_lock:
        if _live.get(registry._prefix) is registry:
            del _live[registry._prefix]
        for alias in registry._aliases.values():
            if _aliased.get(alias.id.int, (None,))[0] is registry:
                del _aliased[alias.id.int]


def retire(registry: MemoryRegistry) -> None:
    """Drop a retirable registry from the live set (its keeper wrote everything in it)."""
    if registry.retirable:
        _retire(registry)


def live_registries() -> list[MemoryRegistry]:
    """The registries not retired yet, oldest first."""
    with _live_lock:
        return list(_live.values())


def locate(run_id: UUID | str) -> tuple[MemoryRegistry, int] | None:
    """The live registry and row of a run id, or None (unknown here, or retired)."""
    try:
        value = UUID(str(run_id)).int
    except ValueError:
        return None
    found = _aliased.get(value)  # a restarted run: its newest attempt, wherever it is
    if found is not None:
        return found
    registry = _live.get(value & ~_ROW_MASK)
    if registry is None:
        return None
    row = registry.row_of(value)
    return None if row is None else (registry, row)


def _after_fork_in_child() -> None:
    # The parent's registries are the parent's to persist: the child starts a fresh one.
    global _registry, _live, _live_lock, _aliased
    _registry = MemoryRegistry()
    _live = {_registry._prefix: _registry}
    _aliased = {}
    _live_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
