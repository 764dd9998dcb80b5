"""The run-history store protocol: what persistent stores keep and how it is read back.

The in-memory registry (`asyncflow.store.memory`) is what runs write to on the hot path. A
persistent store is fed from it by one background writer (`write` takes an `Export` batch)
and read by the CLI and by users through the async query methods below.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from uuid import UUID

from asyncflow.states import StateType
from asyncflow.store.memory import Export

TERMINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})


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

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.start_time is None:
            return None
        return (self.end_time or datetime.datetime.now(datetime.timezone.utc)) - self.start_time

    @property
    def is_final(self) -> bool:
        return self.state_type in TERMINAL


class RunStore(Protocol):
    """A persistent run history.

    `write` is called by the single writer thread only; the queries may be called from any
    task or thread. Ids may be given as a full UUID string or a unique prefix of one.
    """

    url: str

    def write(self, batch: Export, process_id: str) -> None:
        """Persist one exported batch in a single transaction (runs before transitions)."""

    def heartbeat(self, process_id: str) -> None:
        """Mark the writing process alive (its open runs are not crashed)."""

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
        """One run with its full state history; KeyError (clear message) when unknown."""
        ...

    async def children(self, run_id: UUID | str) -> list[StoredRun]:
        """Direct children of a flow run: its task runs and subflow runs, oldest first."""
        ...
