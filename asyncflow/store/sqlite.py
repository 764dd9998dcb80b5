"""The embedded SQLite run store: one file (`$ASYNCFLOW_HOME/runs.db` by default), WAL mode.

Each process writes through one connection owned by its background writer, in short
`BEGIN IMMEDIATE` transactions; readers (the CLI, other processes) never block it and see
every committed batch. Keys are integers: a run's `pk` is `session << 32 | registry row`, so
every process numbers its runs without asking the database, and a run's UUID is its
session's id prefix plus the row (see `asyncflow.store.base` for how states are stored).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import compress
from pathlib import Path
from typing import Any, TypeVar

from asyncflow.exceptions import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreReplacedError,
    StoreVersionError,
)
from asyncflow.states import DEFAULT_NAMES, StateType
from asyncflow.store._sql_store import SqlStore
from asyncflow.store.base import (
    CRASH_SEQ,
    NEW_RUN_COLUMNS,
    SCHEMA_VERSION,
    SESSION_RUNS,
    TERMINAL_SQL,
    TYPE_VALUES,
    WriteBatch,
    default_name_sql,
    transitions_view,
)

T = TypeVar("T")

#: `PRAGMA application_id` of asyncflow databases ("AFLW"): another program's SQLite file
#: is refused rather than written into.
APPLICATION_ID = 0x41464C57
_BUSY_TIMEOUT = 2.0  # with the writer's lock wait, bounds an explicit flush
# Bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER: 999 before SQLite 3.32).
_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999

# A latest state that is not the creation Pending or the first Running (those are implicit).
_EXPLICIT_LATEST = (
    "NOT (state_type = 'PENDING' AND state_name = 'Pending' AND state_message IS NULL) "
    "AND state_seq IS NOT start_seq"
)

# Schema versions: the statements that take the previous version to each.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE processes (
            pk INTEGER PRIMARY KEY,      -- a recording session: one process, one registry
            id TEXT NOT NULL,            -- the process (it has several after reset_registry)
            id_prefix TEXT NOT NULL,     -- what the ids of the session's runs start with
            pid INTEGER NOT NULL,
            hostname TEXT NOT NULL,
            started REAL NOT NULL,
            heartbeat REAL NOT NULL,
            reaped REAL                  -- when its runs left open were marked Crashed
        )""",
        "CREATE INDEX processes_id ON processes (id)",
        "CREATE INDEX processes_unreaped ON processes (pk) WHERE reaped IS NULL",
        "CREATE INDEX processes_id_prefix ON processes (id_prefix)",
        """CREATE TABLE runs (
            pk INTEGER PRIMARY KEY,      -- session << 32 | registry row
            kind TEXT NOT NULL,          -- 'flow' | 'task'
            name TEXT NOT NULL,
            spec_name TEXT NOT NULL,     -- the flow's or task's name
            parent_pk INTEGER,           -- the parent flow run
            parent_task_pk INTEGER,      -- a subflow run's task run in its parent
            parameters TEXT,             -- JSON
            created REAL NOT NULL,       -- its creation Pending
            start_time REAL,             -- its first Running...
            start_seq INTEGER,           -- ...and that state's seq
            state_type TEXT NOT NULL,    -- the latest state
            state_name TEXT NOT NULL,
            state_message TEXT,
            state_ts REAL NOT NULL,
            state_seq INTEGER NOT NULL,
            run_count INTEGER NOT NULL
        )""",
        "CREATE INDEX runs_parent ON runs (parent_pk) WHERE parent_pk IS NOT NULL",
        "CREATE INDEX runs_parent_task ON runs (parent_task_pk) WHERE parent_task_pk IS NOT NULL",
        "CREATE INDEX runs_flows ON runs (created) WHERE kind = 'flow'",
        "CREATE INDEX runs_flow_names ON runs (spec_name, created) WHERE kind = 'flow'",
        """CREATE TABLE transition_log (  -- the states runs rows do not hold (see the view)
            run_pk INTEGER NOT NULL,
            seq INTEGER NOT NULL,        -- order within the run
            type TEXT NOT NULL,
            name TEXT NOT NULL,
            message TEXT,
            ts REAL NOT NULL,
            PRIMARY KEY (run_pk, seq)
        ) WITHOUT ROWID""",
        transitions_view(_EXPLICIT_LATEST, "", version=1),
    ],
    2: [
        "ALTER TABLE runs ADD COLUMN tags TEXT",  # JSON list, NULL: none
        "ALTER TABLE runs ADD COLUMN entrypoint TEXT",  # top-level flow runs: 'file.py:fn'
        "ALTER TABLE runs ADD COLUMN deployment TEXT",  # a deployment's run: 'flow/deployment'
        "ALTER TABLE runs ADD COLUMN scheduled_time REAL",
        "ALTER TABLE runs ADD COLUMN slot_key TEXT",  # one run per schedule slot
        "CREATE UNIQUE INDEX runs_slot ON runs (slot_key) WHERE slot_key IS NOT NULL",
        "CREATE INDEX runs_due ON runs (scheduled_time) WHERE state_type = 'SCHEDULED'",
        "DROP VIEW transitions",
        transitions_view(_EXPLICIT_LATEST, ""),
        """CREATE TABLE results (       -- persisted results, one per run that has one
            run_pk INTEGER PRIMARY KEY,  -- the run it is the result of
            storage TEXT NOT NULL,       -- where: a directory or an fsspec URL
            key TEXT NOT NULL,
            serializer TEXT NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            expires REAL,
            cache INTEGER NOT NULL,      -- 1: a cache key (runs of other flows may take it)
            restore_key TEXT             -- matches it to a call of a restarted flow run
        )""",
        "CREATE INDEX results_key ON results (storage, key)",
        """CREATE TABLE restarts (      -- flow runs run again ('runs retry'), by whom
            run_pk INTEGER PRIMARY KEY,
            process TEXT NOT NULL,       -- processes.id of the process running it now
            attempt INTEGER NOT NULL     -- 1 for the first restart
        )""",
        """CREATE TABLE deployments (  -- flows served on schedules: 'flow/deployment'
            name TEXT PRIMARY KEY,
            flow_name TEXT NOT NULL,
            entrypoint TEXT,
            description TEXT,
            version TEXT,
            tags TEXT NOT NULL,           -- JSON list
            parameters TEXT NOT NULL,     -- JSON: the defaults of its runs
            parameter_schema TEXT NOT NULL,
            schedules TEXT NOT NULL,      -- JSON list (asyncflow.deployments.deployment)
            paused INTEGER NOT NULL,
            concurrency_limit INTEGER,
            collision_strategy TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE variables (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,         -- JSON
            tags TEXT NOT NULL,          -- JSON list
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
    ],
    3: [
        """CREATE TABLE cancel_requests (  -- runs to cancel, for the process running them
            run_pk INTEGER PRIMARY KEY,
            requested REAL NOT NULL
        )""",
        # a deployment's runs, newest first (the API's and UI's filter)
        "CREATE INDEX runs_deployment ON runs (deployment, created) WHERE deployment IS NOT NULL",
    ],
}
assert max(MIGRATIONS) == SCHEMA_VERSION


def _insert_results_sql(rows: int) -> str:
    return f"""
INSERT OR REPLACE INTO results (run_pk, storage, key, serializer, size, created, expires, cache,
                                restore_key)
SELECT ? + column1, column2, column3, column4, column5, column6, column7, column8, column9
FROM (VALUES {_values(rows, 9)})"""


def _insert_facts_sql(rows: int) -> str:
    return f"INSERT INTO temp.run_facts (pk, tags, entrypoint) VALUES {_values(rows, 3)}"


# Tags and entrypoints of runs, through a temporary table (UPDATE ... FROM needs SQLite 3.33)
_TEMP_FACTS = """CREATE TEMP TABLE IF NOT EXISTS run_facts (
    pk INTEGER PRIMARY KEY, tags TEXT, entrypoint TEXT)"""
_APPLY_FACTS = [
    """UPDATE runs SET
        tags = coalesce((SELECT f.tags FROM temp.run_facts f WHERE f.pk = runs.pk), tags),
        entrypoint = coalesce(
            (SELECT f.entrypoint FROM temp.run_facts f WHERE f.pk = runs.pk), entrypoint)
    WHERE pk IN (SELECT pk FROM temp.run_facts)""",
    "DELETE FROM temp.run_facts",
]


_TEMP_CHANGED = """CREATE TEMP TABLE IF NOT EXISTS changed (
    pk INTEGER PRIMARY KEY, start_time REAL, start_seq INTEGER, state_type TEXT,
    state_name TEXT, state_message TEXT, state_ts REAL, state_seq INTEGER,
    run_count_delta INTEGER)"""


def _values(rows: int, width: int) -> str:
    return ",".join(["(" + ",".join(["?"] * width) + ")"] * rows)


# Multi-row inserts. The leading `?`s (in the SELECT list, numbered before the VALUES) take
# the session's base key, which is added to registry rows to make keys.
def _plain_sql(code: int) -> Callable[[int], str]:
    """The insert for plain runs whose latest state has type code `code` (as a literal: a
    CASE per row costs more than the insert itself)."""
    state = StateType(TYPE_VALUES[code])

    def sql(rows: int) -> str:
        # leading parameters: base, base, transition_start, transition_start
        return f"""
INSERT OR REPLACE INTO runs (pk, kind, name, spec_name, parent_pk, created, start_time,
                             start_seq, state_type, state_name, state_ts, state_seq, run_count)
SELECT ? + column1, 'task', column2 || '-' || column3, column2,
       CASE WHEN column4 >= 0 THEN ? + column4 END, column5, column6, ? + column7,
       '{state.value}', '{DEFAULT_NAMES[state]}', column8, ? + column9, 1
FROM (VALUES {_values(rows, 9)})"""

    return sql


_PLAIN_SQL = [_plain_sql(code) for code in range(len(TYPE_VALUES))]


def _insert_other_sql(rows: int) -> str:
    sql = f"""
INSERT OR REPLACE INTO runs (pk, kind, name, spec_name, parent_pk, parent_task_pk,
                             parameters, created, start_time, start_seq, state_type,
                             state_name, state_message, state_ts, state_seq, run_count, tags,
                             entrypoint)
SELECT ? + column1, column2, coalesce(column5, column3 || '-' || column4), column3,
       CASE WHEN column6 >= 0 THEN ? + column6 END, ? + column7, column8, column9,
       column10, column11, column12, coalesce(column13, {default_name_sql("column12")}),
       column14, column15, column16, column17, column18, column19
FROM (VALUES {_values(rows, 19)})"""
    return sql


def _insert_log_sql(rows: int) -> str:
    sql = f"""
INSERT OR IGNORE INTO transition_log (run_pk, seq, type, name, message, ts)
SELECT ? + column1, column2, column3,
       CASE column4 WHEN '' THEN {default_name_sql("column3")} ELSE column4 END, column5, column6
FROM (VALUES {_values(rows, 6)})"""
    return sql


def _insert_changed_sql(rows: int) -> str:
    sql = f"""
INSERT INTO temp.changed
SELECT ? + column1, CASE WHEN column3 >= 0 THEN column2 END,
       CASE WHEN column3 >= 0 THEN column3 END, column4,
       CASE column5 WHEN '' THEN {default_name_sql("column4")} ELSE column5 END,
       column6, column7, column8, column9
FROM (VALUES {_values(rows, 9)})"""
    return sql


# Runs of earlier batches with new states: the latest state they had moves to the log first.
# A run crash detection marked Crashed keeps that final state; the states its process (which
# was presumed dead but was not) sends later go to the log, so they are not lost either.
# Only a newer state replaces the latest one (`state_seq <`): a batch written twice (a retry
# after a commit whose answer was lost, a spill file replayed again) changes nothing.
_NEWER = "state_seq < (SELECT c.state_seq FROM temp.changed c WHERE c.pk = runs.pk)"
_APPLY_CHANGED = [
    f"""INSERT OR IGNORE INTO transition_log (run_pk, seq, type, name, message, ts)
    SELECT pk, state_seq, state_type, state_name, state_message, state_ts FROM runs
    WHERE pk IN (SELECT pk FROM temp.changed) AND {_EXPLICIT_LATEST} AND {_NEWER}""",
    f"""INSERT OR IGNORE INTO transition_log (run_pk, seq, type, name, message, ts)
    SELECT c.pk, c.state_seq, c.state_type, c.state_name, c.state_message, c.state_ts
    FROM temp.changed c JOIN runs r ON r.pk = c.pk WHERE r.state_seq = {CRASH_SEQ}""",
    f"""UPDATE runs SET (start_time, start_seq, state_type, state_name, state_message,
                        state_ts, state_seq, run_count) =
        (SELECT coalesce(runs.start_time, c.start_time), coalesce(runs.start_seq, c.start_seq),
                c.state_type, c.state_name, c.state_message, c.state_ts, c.state_seq,
                runs.run_count + c.run_count_delta
         FROM temp.changed c WHERE c.pk = runs.pk)
    WHERE pk IN (SELECT pk FROM temp.changed) AND state_seq != {CRASH_SEQ} AND {_NEWER}""",
    "DELETE FROM temp.changed",
]


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (it stays so). The switch needs the file to itself and does not
    wait for other connections: retry while another process opens it at the same moment."""
    deadline = time.monotonic() + _BUSY_TIMEOUT
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked (switching it to WAL mode)")
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.01)


def _chunks(total: int, width: int) -> Iterator[tuple[int, int]]:
    """(start, length) chunks covering `total` rows of `width` parameters each.

    Full chunks, then halving sizes: few distinct statement texts, so they stay prepared in
    the connection's statement cache.
    """
    most = max(1, _MAX_PARAMS // width)
    biggest = 1 << (most.bit_length() - 1)
    start = 0
    size = biggest
    while start < total:
        while size > total - start:
            size >>= 1
        yield start, size
        start += size


class SQLiteStore(SqlStore):
    """A run store in one SQLite file. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike[str], *, detect_crashes: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.url = self.source_url = f"sqlite://{self.path}"
        self._lock = threading.RLock()
        self.read_only = False  # opened read-only: the file or its directory is not writable
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._conn = self._open()
        if detect_crashes and not self.read_only:
            try:
                self._settle()
            except BaseException:
                self._conn.close()
                raise

    # -- opening ------------------------------------------------------------------------------
    def _error(
        self, what: str, exc: BaseException | None = None, kind: type[StoreError] = StoreError
    ) -> StoreError:
        detail = f" ({exc})" if exc is not None else ""
        return kind(f"Run history database {self.path}: {what}{detail}")

    def _open(self) -> sqlite3.Connection:
        path = self.path
        try:
            if path.is_symlink() and not path.exists():
                raise self._error(
                    f"is a symbolic link to {os.readlink(path)}, which does not exist; "
                    "asyncflow does not create a database through a dangling link"
                )
            if path.is_dir():
                raise self._error("is a directory, not a database file")
            # (no look at the file's header through a descriptor of our own: closing it would
            # drop this process's POSIX locks on the file, which its other connections hold, and
            # let another process delete the WAL they write to; SQLite itself says NOTADB)
            if not path.exists():
                # Private from the start: parameters can hold secrets. SQLite gives the -wal
                # and -shm files the database file's permissions.
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process created it at the same moment
        except OSError as exc:
            raise self._os_error(exc) from None
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
            try:
                self._setup(conn)
            except sqlite3.Error as exc:
                conn.close()
                if _kind_of(exc) is not StoreReadOnlyError and not self._unwritable():
                    raise
                conn = self._open_read_only(exc)
            except BaseException:
                conn.close()
                raise
        except StoreError:
            raise
        except sqlite3.Error as exc:
            kind = _kind_of(exc)
            if kind is StoreLockedError:
                raise self._error("is locked by another process", exc, kind) from None
            if kind is StoreFullError:
                raise self._error("cannot be set up: the disk is full", exc, kind) from None
            if kind is StoreError and "unable to open" in str(exc):
                raise self._error("cannot be opened", exc) from None
            if "file is not a database" in str(exc):
                raise self._error(
                    "is not an SQLite database (left untouched)", kind=StoreCorruptError
                ) from None
            raise self._error(
                "is corrupt or not an asyncflow run history (left untouched)",
                exc,
                StoreCorruptError,
            ) from None
        try:
            st = os.stat(path)
            self._file_id = (st.st_dev, st.st_ino)
        except OSError:
            self._file_id = None
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        self._check_and_migrate(conn)
        # WAL: readers and the writer do not block each other. NORMAL: a commit survives a
        # killed process (it is in the OS cache); only a power cut can undo the last ones.
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(_TEMP_CHANGED)
        conn.execute(_TEMP_FACTS)

    def _unwritable(self) -> bool:
        """Whether this user cannot write the file or its directory (WAL needs both)."""
        return not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))

    def _open_read_only(self, cause: sqlite3.Error) -> sqlite3.Connection:
        """A database this user may read but not write: open it for reading only."""
        if not os.access(self.path, os.R_OK) or self.path.stat().st_size == 0:
            raise self._error(
                "cannot be created or written: its directory or file is read-only",
                cause,
                StoreReadOnlyError,
            )
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error = cause
        # mode=ro still needs the -shm file (the directory) for a WAL database; immutable=1
        # does not, and a database nobody can write does not change under the reader.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            conn = sqlite3.connect(
                f"{uri}?{query}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_TIMEOUT,
            )
            try:
                if self._version(conn) != SCHEMA_VERSION:
                    raise self._error(
                        "is read-only and has no current asyncflow schema", kind=StoreReadOnlyError
                    )
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.execute(_TEMP_CHANGED)
                conn.execute(_TEMP_FACTS)
                conn.execute("SELECT count(*) FROM processes").fetchone()
            except sqlite3.Error as exc:
                conn.close()
                last = exc
                continue
            except BaseException:
                conn.close()
                raise
            self.read_only = True
            return conn
        raise last

    def _os_error(self, exc: OSError) -> StoreError:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return self._error(
                "cannot be created: its directory is not writable", exc, StoreReadOnlyError
            )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self._error("cannot be created: the disk is full", exc, StoreFullError)
        return self._error("cannot be read", exc)

    def _check_and_migrate(self, conn: sqlite3.Connection) -> None:
        """Refuse foreign, corrupt or newer databases before writing anything; then migrate."""
        if self._version(conn) == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then re-check
        try:
            version = self._version(conn)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _version(self, conn: sqlite3.Connection) -> int:
        own = not conn.in_transaction
        if own:  # the three reads must see one state, not a migration half way
            conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")
        if app_id != APPLICATION_ID:
            if tables:
                raise self._error(
                    "is an SQLite database of another program, not an asyncflow run history "
                    "(left untouched)",
                    kind=StoreCorruptError,
                )
            return 0
        if version > SCHEMA_VERSION:
            raise self._error(
                f"has schema version {version}, from a newer asyncflow; this one knows up to "
                f"version {SCHEMA_VERSION}. Upgrade asyncflow, or set ASYNCFLOW_HOME or "
                "ASYNCFLOW_STORE to use another database",
                kind=StoreVersionError,
            )
        return int(version)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; sqlite3 errors become StoreError naming the file."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None

    def _wrap(self, exc: sqlite3.Error) -> StoreError:
        kind = _kind_of(exc)
        if kind is StoreLockedError:
            return self._error("is locked by another process for too long", exc, kind)
        if kind is StoreFullError:
            return self._error("cannot be written: the disk is full", exc, kind)
        if kind is StoreReadOnlyError:
            return self._error("cannot be written: it is read-only", exc, kind)
        if kind is StoreCorruptError:
            return self._error("is corrupt", exc, kind)
        return self._error("cannot be used", exc)

    def _check_file(self) -> None:
        """StoreReplacedError when the file this connection writes was deleted or replaced
        (writes would go on into an unlinked file that nobody can read)."""
        if self._file_id is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._error(
                "was deleted while this process was recording to it", kind=StoreReplacedError
            ) from None
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self._file_id:
            raise self._error(
                "was replaced by another file while this process was recording to it",
                kind=StoreReplacedError,
            )

    def check_open(self) -> None:
        self._check_file()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writing (the writer thread) ------------------------------------------------------------
    def _insert_process(self, conn: Any, values: tuple[Any, ...]) -> int:
        cur = conn.execute(
            "INSERT INTO processes (id, id_prefix, pid, hostname, started, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            values,
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def write(self, batch: WriteBatch, session: int) -> None:
        self._check_file()
        base = session << 32
        statements: list[tuple[str, Sequence[Any]]] = []
        plain = batch.plain_runs
        if plain and plain[0]:
            t0 = batch.transition_start
            spec = list(map(batch.spec_names.__getitem__, plain[2]))
            # without kind (tasks: a flow run has parameters, so it is never plain) and the
            # state code (a literal of the statement: one statement family per code)
            columns = [plain[0], spec, *plain[3:8], plain[9], plain[10]]
            codes = bytes(plain[8])
            for code in set(codes):
                part = columns
                if codes.count(code) != len(codes):
                    mask = codes.translate(bytes(int(c == code) for c in range(256)))
                    part = [list(compress(column, mask)) for column in columns]
                statements += _inserts(_PLAIN_SQL[code], (base, base, t0, t0), part)
        if batch.other_runs:
            rows = _with_extras(batch.other_runs)
            statements += _inserts(_insert_other_sql, (base,) * 3, _transpose(rows))
        if batch.transitions:
            statements += _inserts(_insert_log_sql, (base,), _transpose(batch.transitions))
        if batch.alias_transitions:  # (restarted runs: rows keyed by the run's own key)
            statements += _inserts(_insert_log_sql, (0,), _transpose(batch.alias_transitions))
        if batch.changed_runs:
            statements += _inserts(_insert_changed_sql, (base,), _transpose(batch.changed_runs))
        if batch.alias_changed:
            statements += _inserts(_insert_changed_sql, (0,), _transpose(batch.alias_changed))
        if batch.changed_runs or batch.alias_changed:
            statements += [(sql, ()) for sql in _APPLY_CHANGED]
        if batch.results:
            statements += _inserts(_insert_results_sql, (base,), _transpose(batch.results))
        if batch.alias_results:
            statements += _inserts(_insert_results_sql, (0,), _transpose(batch.alias_results))
        statements += [  # (before the alias update: the flow row may be a restarted run)
            ("UPDATE runs SET parent_pk = ?, parent_task_pk = ? WHERE pk = ?",
             (base + flow_row, base + row, child))
            for row, flow_row, child in batch.links
        ]  # fmt: skip
        statements += [
            ("UPDATE runs SET parent_pk = ? WHERE parent_pk = ?", (pk, base + row))
            for row, pk in batch.alias_parents
        ]
        if batch.tags or batch.entrypoints:  # (keys made here: a few rows)
            facts: dict[int, list[str | None]] = {}
            for row, tags in batch.tags:
                facts.setdefault(base + row, [None, None])[0] = tags
            for row, entrypoint in batch.entrypoints:
                facts.setdefault(base + row, [None, None])[1] = entrypoint
            keyed = [(pk, tags, entrypoint) for pk, (tags, entrypoint) in facts.items()]
            statements += _inserts(_insert_facts_sql, (), _transpose(keyed))
            statements += [(sql, ()) for sql in _APPLY_FACTS]
        self._execute_batch(statements, session)

    def mark_crashed_runs(self) -> int:
        """Mark Crashed the open runs of every recording process that died; returns how many.

        Each dead process's runs are looked at once: its sessions are then marked reaped.
        """
        dead, now = self._dead_sessions()
        if not dead:
            return 0
        try:
            return self._crash_sessions(dead, now)
        except StoreError as exc:
            # a reader without write access, or a busy database: a later opening does it
            if "readonly" in str(exc) or "locked" in str(exc):
                return 0
            raise

    def _crash_sessions(self, sessions: list[tuple[int, str]], now: float) -> int:
        crashed = 0
        with self._transaction() as conn:
            for pk, reason in sessions:
                params = {
                    "lo": pk << 32,
                    "hi": (pk + 1) << 32,
                    "msg": reason,
                    "now": now,
                    "session": pk,
                }
                open_runs = f"({SESSION_RUNS}) AND state_type NOT IN {TERMINAL_SQL}"
                conn.execute(  # the latest state, if explicit, moves to the log first
                    "INSERT OR IGNORE INTO transition_log "
                    "(run_pk, seq, type, name, message, ts) "
                    "SELECT pk, state_seq, state_type, state_name, state_message, state_ts "
                    f"FROM runs WHERE {open_runs} AND {_EXPLICIT_LATEST}",
                    params,
                )
                cur = conn.execute(
                    "UPDATE runs SET state_type = 'CRASHED', state_name = 'Crashed', "
                    f"state_message = :msg, state_ts = :now, state_seq = {CRASH_SEQ} "
                    f"WHERE {open_runs}",
                    params,
                )
                crashed += max(cur.rowcount, 0)
                conn.execute("UPDATE processes SET reaped = ? WHERE pk = ?", (now, pk))
        return crashed

    # -- reading --------------------------------------------------------------------------------
    def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None

    @contextmanager
    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")


_SqlFor = Callable[[int], str]


def _kind_of(exc: sqlite3.Error) -> type[StoreError]:
    """Which StoreError an sqlite3 error is (by its message: error codes need Python 3.11)."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreLockedError
    if "readonly" in text or "read-only" in text:
        return StoreReadOnlyError
    if "disk is full" in text or "disk full" in text:
        return StoreFullError
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StoreCorruptError
    return StoreError


def _with_extras(rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """New-run rows with their tags and entrypoint (a spill file of version 1 has none)."""
    if len(rows[0]) == len(NEW_RUN_COLUMNS):
        return rows
    return [(*row, None, None) for row in rows]


def _transpose(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    return list(zip(*rows, strict=True))


def _inserts(
    sql_for: _SqlFor, lead: tuple[Any, ...], columns: Sequence[Sequence[Any]]
) -> list[tuple[str, list[Any]]]:
    """Multi-row inserts of `columns`: one GIL release per statement, not per row (a writer
    thread that steps row by row waits for the flows' thread at every row).

    `lead` fills each statement's leading parameters (the session's base key...).
    """
    width, skip = len(columns), len(lead)
    statements = []
    for start, size in _chunks(len(columns[0]), width):
        params: list[Any] = [None] * (skip + size * width)
        params[:skip] = lead
        for j, column in enumerate(columns):  # slice assignment: no tuple per row
            params[skip + j :: width] = column[start : start + size]
        statements.append((_sql(sql_for, size), params))
    return statements


_sql_texts: dict[tuple[_SqlFor, int], str] = {}


def _sql(sql_for: _SqlFor, size: int) -> str:
    key = (sql_for, size)
    text = _sql_texts.get(key)
    if text is None:
        text = _sql_texts[key] = sql_for(size)
    return text


__all__ = ["APPLICATION_ID", "MIGRATIONS", "SQLiteStore"]
