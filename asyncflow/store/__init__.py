"""Run history: the in-memory registry runs record to, and the persistent stores fed from it.

`ASYNCFLOW_STORE` picks the persistent store: `sqlite` (the default: `$ASYNCFLOW_HOME/runs.db`),
`memory` (no persistence), `sqlite:///path/to/runs.db` (or a plain path), or
`postgresql://user:password@host/db` (the `[postgres]` extra). `open_store()` opens it for
reading; the engine's background writer (`asyncflow.store.writer`) records to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncflow.exceptions import MissingResult, StoreError

if TYPE_CHECKING:
    from uuid import UUID

    from asyncflow.store.base import RecordingStore, StoredResult, StoredRun

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def store_url(value: str | None = None) -> str | None:
    """The canonical URL for a store setting (`ASYNCFLOW_STORE` when None); None for memory.

    SQLite URLs become `sqlite://` + an absolute path, so two spellings of one file compare
    equal. StoreError for a value that names no store.
    """
    from asyncflow.settings import get_settings

    settings = get_settings()
    raw = settings.store if value is None else value
    text = raw.strip()
    lowered = text.lower()
    if lowered == "memory":
        return None
    if lowered in {"", "sqlite", "sqlite:", "sqlite://"}:
        return f"sqlite://{_canonical(settings.home / 'runs.db')}"
    if lowered.startswith(_POSTGRES_SCHEMES):
        return text
    if lowered.startswith("sqlite:"):
        path = text[len("sqlite://") :] if lowered.startswith("sqlite://") else text[7:]
        return f"sqlite://{_canonical(Path(path))}"
    if "://" not in text and (
        os.sep in text or "/" in text or text.endswith((".db", ".sqlite", ".sqlite3"))
    ):
        return f"sqlite://{_canonical(Path(text))}"
    raise StoreError(
        f"Unknown run store {raw!r} (ASYNCFLOW_STORE): use 'sqlite', 'memory', "
        "'sqlite:///path/to/runs.db' or 'postgresql://user:password@host/database'."
    )


def _canonical(path: Path) -> Path:
    """An absolute path with its directories resolved, but not the file itself: a symbolic
    link named as the database stays visible (a dangling one is refused, not followed)."""
    path = path.expanduser()
    return path.parent.resolve() / path.name


def recording_url() -> str | None:
    """The store the writer records to from the settings, None for memory (or a bad setting,
    which is logged: a mistyped setting must not break the user's flows)."""
    try:
        return store_url()
    except StoreError as exc:
        import logging

        logging.getLogger("asyncflow.store").error("Run history is not recorded: %s", exc)
        return None


def open_store(url: str | None = None) -> RecordingStore:
    """Open a run store: `url` as for `ASYNCFLOW_STORE`, None for the configured one.

    Opening creates the database or migrates it to the current schema, and marks Crashed the
    open runs of processes that died. Raises StoreError, naming the file or URL, when it
    cannot be opened (unreadable, corrupt, not asyncflow's, newer schema, server down...).
    """
    canonical = store_url(url)
    if canonical is None:
        raise StoreError(
            "The run store is 'memory' (ASYNCFLOW_STORE=memory): no run history is kept "
            "between processes. Set ASYNCFLOW_STORE=sqlite (the default) to record it."
        )
    return connect(canonical)


def connect(canonical: str) -> RecordingStore:
    """Open the store at a canonical URL (from `store_url`), without flushing the writer."""
    if canonical.startswith("sqlite://"):
        from asyncflow.store.sqlite import SQLiteStore

        return SQLiteStore(canonical[len("sqlite://") :])
    from asyncflow.store.postgres import PostgresStore

    return PostgresStore(canonical)


def load_result(run_id: UUID | str, url: str | None = None) -> Any:
    """The persisted result of a recorded run (a full id or a unique prefix), from any
    process: read from where the run's store says it is.

    KeyError for an unknown run; MissingResult when the run did not complete or its result
    was not persisted (the message names the option that persists it) or is gone.
    """
    return stored_result(run_id, url)[1].load()


def stored_result(run_id: UUID | str, url: str | None = None) -> tuple[StoredRun, StoredResult]:
    """A recorded run and where its persisted result is; errors as `load_result`."""
    store = open_store(url)
    try:
        run = store.read_run_sync(run_id)
        stored = store.result_of_sync(run.id)
    finally:
        store.close()
    if stored is None:
        raise MissingResult(missing_result_message(run))
    return run, stored


def missing_result_message(run: StoredRun) -> str:
    """Why a recorded run has no persisted result, and what would have persisted it."""
    from asyncflow.states import StateType

    what = f"{run.kind.capitalize()} run {run.name!r} ({run.id})"
    if run.state_type is not StateType.COMPLETED:
        return f"{what} is {run.state_name}: only a completed run has a result."
    if run.kind == "task":
        how = (
            f"persist_result=True on task {run.spec_name!r} (or a cache_policy, or "
            "ASYNCFLOW_TASKS_PERSIST_RESULT=true for every task)"
        )
    else:
        how = (
            f"persist_result=True on flow {run.spec_name!r} (or "
            "ASYNCFLOW_RESULTS_PERSIST_BY_DEFAULT=true for every flow)"
        )
    return (
        f"{what} has no persisted result: it was not persisted (set {how}), or it was "
        "cleared (`asyncflow cache clear`)."
    )


__all__ = [
    "connect",
    "load_result",
    "missing_result_message",
    "open_store",
    "recording_url",
    "store_url",
    "stored_result",
]
