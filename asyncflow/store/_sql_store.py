"""What the SQLite and PostgreSQL stores share, written once: the read side of `RunStore`,
the end of a write batch, heartbeats and crash detection.

Both stores share the schema, so the statements are the same text; they differ only in the
driver's placeholder style, how transactions and consistent snapshots are opened, and how
driver errors are reported. A store supplies those (`placeholder`, `_transaction`,
`_snapshot`, `_query`), its batch inserts, and `_crash_sessions`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar
from uuid import UUID

import anyio.to_thread

from asyncflow.exceptions import StoreError
from asyncflow.states import StateType
from asyncflow.store import spill
from asyncflow.store.base import (
    HEARTBEAT_SECONDS,
    RUN_COLUMNS,
    RUN_FROM,
    Claimed,
    EarlierRun,
    Restart,
    StoredResult,
    StoredRun,
    ambiguous_run,
    before_read,
    crash_reason,
    id_lookup,
    row_to_run,
    run_id,
    unknown_run,
)

T = TypeVar("T")


def _kind_sql(kind: str) -> str:
    """A run kind as an SQL literal (never user text in SQL)."""
    if kind not in ("flow", "task"):
        raise ValueError(f"kind: 'flow' or 'task' (or None for both), not {kind!r}")
    return f"'{kind}'"


def encode_cursor(created: float, pk: int) -> str:
    """The opaque cursor of a page that ends at the run (created, key)."""
    import base64

    return base64.urlsafe_b64encode(f"{created!r}:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """(created, key) from `encode_cursor`; ValueError for anything else."""
    import base64
    import binascii

    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, pk = text.split(":")
        return float(created), int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"Not a cursor of this API: {cursor!r}.") from None


logger = logging.getLogger("asyncflow.store")

# A result row with its run: (RESULT_SELECT) FROM RESULT_FROM; `result_row` decodes it.
RESULT_SELECT = (
    "x.run_pk, p.id_prefix, r.name, r.kind, r.spec_name, "
    "CASE WHEN r.kind = 'flow' THEN r.spec_name ELSE f.spec_name END, x.storage, x.key, "
    "x.serializer, x.size, x.created, x.expires, x.cache, x.restore_key"
)
RESULT_FROM = (
    "results x JOIN runs r ON r.pk = x.run_pk JOIN processes p ON p.pk = x.run_pk >> 32 "
    "LEFT JOIN runs f ON f.pk = r.parent_pk"
)


def result_row(row: Any) -> StoredResult:
    (pk, prefix, name, kind, spec, flow, storage, key, serializer, size, created, expires,
     cache, restore_key) = row  # fmt: skip
    utc = datetime.timezone.utc
    return StoredResult(
        run_id=run_id(prefix, pk),
        run_name=name,
        kind=kind,
        spec_name=spec,
        flow_name=flow,
        storage=storage,
        key=key,
        serializer=serializer,
        size=int(size),
        created=datetime.datetime.fromtimestamp(created, utc),
        expires=None if expires is None else datetime.datetime.fromtimestamp(expires, utc),
        cache=bool(cache),
        restore_key=restore_key,
    )


class SqlStore:
    """Statements over the shared schema; SQL is written with `?` and adapted per driver."""

    #: the driver's parameter placeholder (`?` for sqlite3, `%s` for psycopg)
    placeholder = "?"
    #: how errors and messages name the store
    url: str
    #: how the process's writer names the store (PostgreSQL's `url` hides the password)
    source_url: str

    def _query(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(connection)` under the store's lock, turning driver errors into StoreError."""
        raise NotImplementedError

    def _snapshot(self, conn: Any) -> AbstractContextManager[object]:
        """A read transaction: the statements inside see one consistent state."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction on the store's connection."""
        raise NotImplementedError

    def _crash_sessions(self, sessions: list[tuple[int, str]], now: float) -> int:
        """Mark Crashed the open runs of these (session, reason) pairs; returns how many."""
        raise NotImplementedError

    def _insert_process(self, conn: Any, values: tuple[Any, ...]) -> int:
        """Insert a processes row (id, id_prefix, pid, hostname, started, heartbeat)."""
        raise NotImplementedError

    def mark_crashed_runs(self) -> int:
        raise NotImplementedError

    def write(self, batch: Any, session: int) -> None:
        raise NotImplementedError

    def _settle(self) -> None:
        """At opening: write the spill files of processes that are gone, then mark Crashed
        the open runs of dead processes (in this order: a spilled run may have finished)."""
        if spill.has_files(self.source_url):
            try:
                spill.replay(self, self.source_url)
            except StoreError as exc:
                logger.warning("Run history: spill files not written yet (%s); later.", exc)
                return  # crash detection waits too: it would crash runs the files finish
        self.mark_crashed_runs()

    def _before_read(self) -> None:
        for hook in before_read:  # this process's own runs, written first
            hook(self.source_url)

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    # -- writing ------------------------------------------------------------------------------
    _beat = 0.0  # when a write batch last marked the process alive

    def _execute_batch(self, statements: list[tuple[str, Any]], session: int) -> None:
        """Run a write batch's statements in one transaction, with a heartbeat now and then."""
        now = time.time()
        if now - self._beat > HEARTBEAT_SECONDS / 2:  # not every batch: it costs a statement
            # every session of the process: an older one may hold a quiet long-running run
            beat = self._sql(
                "UPDATE processes SET heartbeat = ? "
                "WHERE id = (SELECT id FROM processes WHERE pk = ?)"
            )
            statements.append((beat, (now, session)))
            self._beat = now
        if len(statements) == 1:  # one statement is one transaction already (the usual flush
            sql, params = statements[0]  # at the end of a small flow): spare BEGIN and COMMIT
            self._query(lambda conn: conn.execute(sql, params))
            return
        with self._transaction() as conn:
            for sql, params in statements:
                conn.execute(sql, params)

    def heartbeat(self, process_id: str) -> None:
        sql = self._sql("UPDATE processes SET heartbeat = ? WHERE id = ?")
        with self._transaction() as conn:
            conn.execute(sql, (time.time(), process_id))

    # -- crash detection ----------------------------------------------------------------------
    def _dead_sessions(self) -> tuple[list[tuple[int, str]], float]:
        """(session, reason) for each recording process that died and is not reaped yet."""
        here, now = socket.gethostname(), time.time()
        sessions = self._query(
            lambda c: c.execute(
                "SELECT pk, pid, hostname, started, heartbeat FROM processes WHERE reaped IS NULL"
            ).fetchall()
        )
        dead = [
            (pk, reason)
            for pk, pid, host, started, beat in sessions
            if (reason := crash_reason(pid, host, started, beat, here, now)) is not None
        ]
        return dead, now

    def session_for(
        self,
        process_id: str,
        id_prefix: str,
        pid: int | None = None,
        hostname: str | None = None,
        started: float | None = None,
    ) -> int:
        """The recording session of (process, registry): found, or added. Idempotent, so a
        retried or replayed registration never makes a second one."""
        find = self._sql(
            "SELECT pk FROM processes WHERE id = ? AND id_prefix = ? ORDER BY pk LIMIT 1"
        )
        now = time.time()
        values = (
            process_id,
            id_prefix,
            os.getpid() if pid is None else pid,
            socket.gethostname() if hostname is None else hostname,
            now if started is None else started,
            now,
        )
        with self._transaction() as conn:
            row = conn.execute(find, (process_id, id_prefix)).fetchone()
            if row is not None:
                return int(row[0])
            return self._insert_process(conn, values)

    def end_process(self, process_id: str, reason: str, *, force: bool = False) -> int:
        """The process is done: mark Crashed the runs it leaves open (they will not end).

        `force` also takes sessions crash detection already reaped (a replayed spill file can
        add runs to them).
        """
        sql = "SELECT pk FROM processes WHERE id = ?"
        sql = self._sql(sql if force else sql + " AND reaped IS NULL")
        sessions = self._query(lambda c: c.execute(sql, (process_id,)).fetchall())
        if force and sessions:
            unreap = self._sql("UPDATE processes SET reaped = NULL WHERE id = ?")
            with self._transaction() as conn:
                conn.execute(unreap, (process_id,))
        return self._crash_sessions([(pk, reason) for (pk,) in sessions], time.time())

    # -- reading ------------------------------------------------------------------------------

    def list_runs_sync(
        self,
        *,
        kind: Literal["flow", "task"] | None = "flow",
        spec_name: str | None = None,
        state: StateType | None = None,
        since: datetime.datetime | None = None,
        limit: int = 50,
    ) -> list[StoredRun]:
        """`list_runs` without the thread hop."""
        self._before_read()
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if kind is not None:
            where.append(f"r.kind = {_kind_sql(kind)}")  # (a literal: see list_runs_page)
        if spec_name is not None:
            where.append("r.spec_name = ?")
            params.append(spec_name)
        if state is not None:
            where.append("r.state_type = ?")
            params.append(StateType(state).value)
        if since is not None:
            where.append("r.created >= ?")
            params.append(since.timestamp())
        sql = self._sql(
            f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE {' AND '.join(where)} "
            "ORDER BY r.created DESC, r.pk DESC LIMIT ?"
        )
        rows = self._query(lambda c: c.execute(sql, (*params, max(0, limit))).fetchall())
        return [row_to_run(row) for row in rows]

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
    ) -> tuple[list[StoredRun], str | None]:
        """One page of runs, newest first, and the cursor of the next page (None: the last
        one). Keyset pagination on (created, key): a page costs the same at any depth, and
        runs added meanwhile never shift a page (no duplicates, no gaps). `parent`: the
        runs directly under that flow run. ValueError for a bad cursor; KeyError for an
        unknown parent."""
        self._before_read()
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if kind is not None:
            # (a literal: PostgreSQL's generic plan for a parameter cannot use the index
            # on flow runs, `WHERE kind = 'flow'`, which made every page a scan)
            where.append(f"r.kind = {_kind_sql(kind)}")
        for column, value in (
            ("r.spec_name", spec_name),
            ("r.state_type", None if state is None else StateType(state).value),
            ("r.deployment", deployment),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("r.created >= ?")
            params.append(since.timestamp())
        if until is not None:
            where.append("r.created < ?")
            params.append(until.timestamp())
        if cursor is not None:
            created, pk = decode_cursor(cursor)
            # (the first term bounds the index range; the second breaks ties on the key)
            where.append("r.created <= ? AND (r.created < ? OR r.pk < ?)")
            params += [created, created, pk]

        def read(conn: Any) -> tuple[list[StoredRun], str | None]:
            clauses, args = list(where), list(params)
            if parent is not None:
                clauses.append("r.parent_pk = ?")
                args.append(self._pk_of(conn, parent))
            sql = self._sql(
                f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE {' AND '.join(clauses)} "
                "ORDER BY r.created DESC, r.pk DESC LIMIT ?"
            )
            rows = conn.execute(sql, (*args, max(1, limit) + 1)).fetchall()
            more = len(rows) > max(1, limit)
            rows = rows[: max(1, limit)]
            # (the key and creation time of the page's last run: RUN_COLUMNS 0 and 8)
            token = encode_cursor(float(rows[-1][8]), int(rows[-1][0])) if more else None
            return [row_to_run(row) for row in rows], token

        return self._query(read)

    def list_flows(self) -> list[dict[str, Any]]:
        """Each flow name with its number of flow runs and its latest run's creation time
        (ISO 8601), most recently run first."""
        rows = self._query(
            lambda c: c.execute(
                "SELECT spec_name, count(*), max(created) FROM runs WHERE kind = 'flow' "
                "GROUP BY spec_name ORDER BY max(created) DESC"
            ).fetchall()
        )
        return [
            {"name": name, "runs": int(count),
             "last_run": datetime.datetime.fromtimestamp(last, datetime.timezone.utc).isoformat()}
            for name, count, last in rows
        ]  # fmt: skip

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
        return await anyio.to_thread.run_sync(
            lambda: self.list_runs_sync(
                kind=kind, spec_name=spec_name, state=state, since=since, limit=limit
            )
        )

    def _pk_of(self, conn: Any, run: UUID | str) -> int:
        plan = id_lookup(run)
        found = conn.execute(
            self._sql(
                "SELECT r.pk, p.id_prefix FROM processes p JOIN runs r "
                "ON r.pk BETWEEN (p.pk << 32) + ? AND (p.pk << 32) + ? "
                # (no ORDER BY: PostgreSQL then walked every run in key order to find one)
                "WHERE p.id_prefix >= ? AND p.id_prefix < ? LIMIT 3"
            ),
            (plan.row_low, plan.row_high, plan.prefix_low, plan.prefix_high),
        ).fetchall()
        found.sort()
        if not found:
            raise unknown_run(run, self.url)
        if len(found) > 1:
            raise ambiguous_run(run, [str(run_id(prefix, pk)) for pk, prefix in found])
        return int(found[0][0])

    def check_open(self) -> None:
        """StoreReplacedError when the database this connection uses is not the one at its
        path any more (SQLite: deleted or replaced); nothing to check on PostgreSQL."""

    def key_of(self, run: UUID | str) -> int:
        """A run's key in this store (KeyError for an unknown or ambiguous id)."""
        return self._query(lambda conn: self._pk_of(conn, run))

    def read_run_sync(self, run: UUID | str) -> StoredRun:
        """`read_run` without the thread hop."""
        self._before_read()

        def read(conn: Any) -> StoredRun:
            with self._snapshot(conn):  # the run and its history from one state
                pk = self._pk_of(conn, run)
                row = conn.execute(
                    self._sql(f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.pk = ?"), (pk,)
                ).fetchone()
                log = conn.execute(
                    self._sql(
                        "SELECT seq, type, name, message, ts FROM transition_log WHERE run_pk = ?"
                    ),
                    (pk,),
                ).fetchall()
            assert row is not None
            return row_to_run(row, log)

        return self._query(read)

    async def read_run(self, run_id: UUID | str) -> StoredRun:
        """One run with its full state history; KeyError when unknown."""
        return await anyio.to_thread.run_sync(self.read_run_sync, run_id)

    def children_sync(self, run: UUID | str, limit: int | None = None) -> list[StoredRun]:
        """`children` without the thread hop (the first `limit` of them, if given)."""
        self._before_read()

        def read(conn: Any) -> list[StoredRun]:
            pk = self._pk_of(conn, run)
            sql = (
                f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.parent_pk = ? "
                "ORDER BY r.created, r.pk"
            )
            args: tuple[int, ...] = (pk,)
            if limit is not None:
                sql, args = f"{sql} LIMIT ?", (pk, max(0, limit))
            rows = conn.execute(self._sql(sql), args).fetchall()
            return [row_to_run(row) for row in rows]

        return self._query(read)

    def children_summary(
        self, run: UUID | str, limit: int
    ) -> tuple[list[StoredRun], list[StoredRun], list[tuple[str, StateType, str, int]]]:
        """What a flow run's page shows of what ran under it, however much that is: its
        first `limit` task and subflow runs (oldest first), its first `limit` subflow runs,
        and how many of them are in each (kind, state type, state name). A subflow's
        stand-in task run is left out of all three: the subflow run stands for it."""
        self._before_read()
        # (the stand-ins are the parent task runs of this run's subflow runs: a few rows of
        # the same index, where a NOT EXISTS per row made PostgreSQL scan every run)
        plain = (
            "r.parent_pk = ? AND r.pk NOT IN (SELECT f.parent_task_pk FROM runs f "
            "WHERE f.parent_pk = ? AND f.kind = 'flow' AND f.parent_task_pk IS NOT NULL)"
        )

        def read(conn: Any) -> Any:
            with self._snapshot(conn):
                pk = self._pk_of(conn, run)
                order = "ORDER BY r.created, r.pk LIMIT ?"
                rows = conn.execute(
                    self._sql(f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE {plain} {order}"),
                    (pk, pk, limit),
                ).fetchall()
                flows = conn.execute(
                    self._sql(
                        f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.parent_pk = ? "
                        f"AND r.kind = 'flow' {order}"
                    ),
                    (pk, limit),
                ).fetchall()
                counts = conn.execute(
                    self._sql(
                        "SELECT r.kind, r.state_type, r.state_name, count(*) FROM runs r "
                        f"WHERE {plain} GROUP BY r.kind, r.state_type, r.state_name"
                    ),
                    (pk, pk),
                ).fetchall()
            return (
                [row_to_run(row) for row in rows],
                [row_to_run(row) for row in flows],
                [(kind, StateType(t), name, int(n)) for kind, t, name, n in counts],
            )

        return self._query(read)  # type: ignore[no-any-return]

    async def children(self, run_id: UUID | str) -> list[StoredRun]:
        """Direct children of a flow run: its task runs and subflow runs, oldest first."""
        return await anyio.to_thread.run_sync(self.children_sync, run_id)

    # -- results --------------------------------------------------------------------------------
    def result_of_sync(self, run: UUID | str) -> StoredResult | None:
        """`result_of` without the thread hop."""
        self._before_read()

        def read(conn: Any) -> StoredResult | None:
            pk = self._pk_of(conn, run)
            row = conn.execute(
                self._sql(f"SELECT {RESULT_SELECT} FROM {RESULT_FROM} WHERE x.run_pk = ?"), (pk,)
            ).fetchone()
            return None if row is None else result_row(row)

        return self._query(read)

    async def result_of(self, run_id: UUID | str) -> StoredResult | None:
        """The persisted result of a run, None when it has none; KeyError when unknown."""
        return await anyio.to_thread.run_sync(self.result_of_sync, run_id)

    def list_results_sync(
        self,
        *,
        task: str | None = None,
        flow: str | None = None,
        key_prefix: str | None = None,
        older_than: datetime.datetime | None = None,
        cache_only: bool = False,
        limit: int | None = None,
    ) -> list[StoredResult]:
        """`list_results` without the thread hop."""
        self._before_read()
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if task is not None:
            where.append("r.kind = 'task' AND r.spec_name = ?")
            params.append(task)
        if flow is not None:
            where.append("CASE WHEN r.kind = 'flow' THEN r.spec_name ELSE f.spec_name END = ?")
            params.append(flow)
        if key_prefix:
            where.append("substr(x.key, 1, ?) = ?")
            params += [len(key_prefix), key_prefix]
        if older_than is not None:
            where.append("x.created < ?")
            params.append(older_than.timestamp())
        if cache_only:
            where.append("x.cache = 1")
        sql = f"SELECT {RESULT_SELECT} FROM {RESULT_FROM} WHERE {' AND '.join(where)} "
        sql += "ORDER BY x.created DESC, x.run_pk DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        rows = self._query(lambda c: c.execute(self._sql(sql), params).fetchall())
        return [result_row(row) for row in rows]

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
        """Persisted results, newest first: of task `task`, of flow `flow` (its flow runs
        and their task runs), whose key starts with `key_prefix`, written before
        `older_than`, only cache records."""
        return await anyio.to_thread.run_sync(
            lambda: self.list_results_sync(
                task=task,
                flow=flow,
                key_prefix=key_prefix,
                older_than=older_than,
                cache_only=cache_only,
                limit=limit,
            )
        )

    def forget_results(self, locations: list[tuple[str, str]]) -> int:
        """Delete the result rows at these (storage, key) locations (every run's that shares
        one); returns how many rows went. The files are the caller's to delete."""
        sql = self._sql("DELETE FROM results WHERE storage = ? AND key = ?")
        deleted = 0
        with self._transaction() as conn:
            for storage, key in locations:
                cur = conn.execute(sql, (storage, key))
                deleted += max(cur.rowcount, 0)
        return deleted

    # -- restarts -------------------------------------------------------------------------------
    def begin_restart(
        self,
        run: UUID | str,
        process: tuple[str, int, str, float],
        id_prefix: str,
        message: str,
    ) -> Restart:
        """Make a Failed, Crashed or Cancelled top-level flow run ready for another attempt
        by this process: it goes to AwaitingRetry (so a second restart is refused) and this
        process answers for it (its death crashes it). ValueError when it cannot be retried.

        Attempt N's states are numbered from N << 48, above every earlier one's; the latest
        state moves to the log (a crash's number, above every attempt's, becomes one below).
        """
        from asyncflow.store.base import CRASH_SEQ, latest_is_implicit

        process_id = process[0]
        self.session_for(process_id, id_prefix, *process[1:])  # crash detection knows it
        with self._transaction() as conn:
            pk = self._pk_of(conn, run)
            row = conn.execute(
                self._sql(
                    "SELECT r.kind, r.name, r.parent_pk, r.state_type, r.state_name, "
                    "r.state_message, r.state_ts, r.state_seq, r.start_seq, x.attempt, "
                    "x.process, r.deployment "
                    "FROM runs r LEFT JOIN restarts x ON x.run_pk = r.pk WHERE r.pk = ?"
                )
                + self.for_update,
                (pk,),
            ).fetchone()
            (kind, name, parent, type_, state_name, message_, ts, seq, start_seq, done, by,
             deployment) = row  # fmt: skip
            what = f"{kind.capitalize()} run {name!r} ({run_id(self._prefix_of(conn, pk), pk)})"
            if kind != "flow":
                raise ValueError(f"{what} is a task run: retry the flow run it belongs to.")
            if parent is not None and deployment is None:  # (run_deployment's child: its own)
                top = run_id(self._prefix_of(conn, parent), parent)
                raise ValueError(
                    f"{what} is a nested flow run: retry its parent flow run ({top}), which "
                    "runs it again."
                )
            if type_ not in ("FAILED", "CRASHED", "CANCELLED"):
                why = f" ({message_})" if type_ == "SCHEDULED" and message_ else ""
                raise ValueError(
                    f"{what} is {state_name}{why}: only a Failed, Crashed or Cancelled flow "
                    "run can be retried."
                )
            attempt = 1 if done is None else int(done) + 1
            seq_base = attempt << 48
            log_seq = seq if seq != CRASH_SEQ else seq_base - 2
            before = (type_, state_name, message_, ts, log_seq, done, by)
            if not latest_is_implicit(type_, state_name, message_, seq, start_seq):
                conn.execute(
                    self._sql(
                        "INSERT INTO transition_log (run_pk, seq, type, name, message, ts) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                    ),
                    (pk, log_seq, type_, state_name, message_, ts),
                )  # fmt: skip
            conn.execute(
                self._sql(
                    "UPDATE runs SET state_type = 'SCHEDULED', state_name = 'AwaitingRetry', "
                    "state_message = ?, state_ts = ?, state_seq = ? WHERE pk = ?"
                ),
                (message, time.time(), seq_base - 1, pk),
            )
            conn.execute(
                self._sql(
                    "INSERT INTO restarts (run_pk, process, attempt) VALUES (?, ?, ?) "
                    "ON CONFLICT (run_pk) DO UPDATE SET process = excluded.process, "
                    "attempt = excluded.attempt"
                ),
                (pk, process_id, attempt),
            )
            # (a request for an earlier attempt must not cancel this one)
            conn.execute(self._sql("DELETE FROM cancel_requests WHERE run_pk = ?"), (pk,))
        return Restart(run_id(self._prefix_of_pk(pk), pk), pk, attempt, seq_base, before)

    def abort_restart(self, restart: Restart) -> bool:
        """Undo `begin_restart` when the new attempt never started (its run is back in its
        state before); False when states of the attempt were written meanwhile."""
        type_, name, message, ts, log_seq, done, by = restart.before
        with self._transaction() as conn:
            cur = conn.execute(
                self._sql(
                    "UPDATE runs SET state_type = ?, state_name = ?, state_message = ?, "
                    "state_ts = ?, state_seq = ? WHERE pk = ? AND state_seq = ?"
                ),
                (type_, name, message, ts, log_seq, restart.pk, restart.seq_base - 1),
            )
            if not cur.rowcount:
                return False
            conn.execute(
                self._sql("DELETE FROM transition_log WHERE run_pk = ? AND seq = ?"),
                (restart.pk, log_seq),
            )
            if done is None:
                conn.execute(self._sql("DELETE FROM restarts WHERE run_pk = ?"), (restart.pk,))
            else:
                conn.execute(
                    self._sql("UPDATE restarts SET attempt = ?, process = ? WHERE run_pk = ?"),
                    (done, by, restart.pk),
                )
        return True

    #: appended to a SELECT that must lock its rows (PostgreSQL; SQLite locks the file)
    for_update = ""

    def _prefix_of(self, conn: Any, pk: int) -> str:
        row = conn.execute(
            self._sql("SELECT id_prefix FROM processes WHERE pk = ?"), (pk >> 32,)
        ).fetchone()
        return str(row[0])

    def _prefix_of_pk(self, pk: int) -> str:
        return self._query(lambda conn: self._prefix_of(conn, pk))

    def earlier_runs(self, pk: int) -> tuple[list[EarlierRun], dict[int, list[float]]]:
        """Every run under flow run `pk` (its task runs with a result, its subflow runs and
        theirs), oldest first, with where their persisted results are; and when each of
        these flow runs (`pk` too) began each attempt. What a restart of `pk` can take
        instead of running again."""
        self._before_read()

        def read(conn: Any) -> tuple[list[EarlierRun], dict[int, list[float]]]:
            found: list[EarlierRun] = []
            attempts: dict[int, list[float]] = {}
            level = [pk]
            with self._snapshot(conn):
                while level:
                    marks = ", ".join("?" * len(level))
                    for run_pk, start in conn.execute(
                        self._sql(f"SELECT pk, start_time FROM runs WHERE pk IN ({marks})"),
                        level,
                    ).fetchall():
                        attempts[run_pk] = [] if start is None else [start]
                    for run_pk, ts in conn.execute(
                        self._sql(
                            "SELECT run_pk, ts FROM transition_log WHERE type = 'RUNNING' "
                            f"AND run_pk IN ({marks}) ORDER BY seq"
                        ),
                        level,
                    ).fetchall():
                        attempts[run_pk].append(ts)
                    rows = conn.execute(
                        self._sql(
                            "SELECT r.pk, r.parent_pk, r.kind, r.spec_name, r.parameters, "
                            "r.state_type, r.created, x.storage, x.key, x.serializer, x.size, "
                            "x.restore_key, x.created, x.expires "
                            "FROM runs r LEFT JOIN results x ON x.run_pk = r.pk "
                            f"WHERE r.parent_pk IN ({marks}) "
                            "AND (r.kind = 'flow' OR x.restore_key IS NOT NULL) "
                            "ORDER BY r.created, r.pk"
                        ),
                        level,
                    ).fetchall()
                    found += [EarlierRun(*row) for row in rows]
                    level = [row[0] for row in rows if row[2] == "flow"]
            for starts in attempts.values():
                starts.sort()
            return found, attempts

        return self._query(read)

    # -- variables ------------------------------------------------------------------------------
    def get_variable(self, name: str) -> tuple[str, str, float, float] | None:
        """(value JSON, tags JSON, created, updated) of a variable, None when unset."""
        sql = self._sql("SELECT value, tags, created, updated FROM variables WHERE name = ?")
        row = self._query(lambda c: c.execute(sql, (name,)).fetchone())
        return None if row is None else (row[0], row[1], row[2], row[3])

    def set_variable(self, name: str, value: str, tags: str, overwrite: bool) -> bool:
        """Set a variable (JSON value and tags); False when it exists and not `overwrite`."""
        now = time.time()
        sql = "INSERT INTO variables (name, value, tags, created, updated) VALUES (?, ?, ?, ?, ?)"
        sql += (
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, tags = excluded.tags, "
            "updated = excluded.updated"
            if overwrite
            else " ON CONFLICT (name) DO NOTHING"
        )
        with self._transaction() as conn:
            cur = conn.execute(self._sql(sql), (name, value, tags, now, now))
            return bool(cur.rowcount)

    def unset_variable(self, name: str) -> bool:
        """Delete a variable; False when there was none."""
        with self._transaction() as conn:
            cur = conn.execute(self._sql("DELETE FROM variables WHERE name = ?"), (name,))
            return bool(cur.rowcount)

    def list_variables(self) -> list[tuple[str, str, str, float, float]]:
        """(name, value JSON, tags JSON, created, updated) of every variable, by name."""
        sql = "SELECT name, value, tags, created, updated FROM variables ORDER BY name"
        rows = self._query(lambda c: c.execute(sql).fetchall())
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # -- deployments ----------------------------------------------------------------------------
    _DEPLOYMENT_COLUMNS = (
        "name, flow_name, entrypoint, description, version, tags, parameters, "
        "parameter_schema, schedules, paused, concurrency_limit, collision_strategy, created, "
        "updated"
    )

    def save_deployment(self, row: dict[str, Any]) -> None:
        """Add or replace a deployment (by its name); its `created` time is kept, and so is
        its paused flag when `row["paused"]` is None (a server starting does not resume a
        deployment paused from the CLI)."""
        names = self._DEPLOYMENT_COLUMNS.split(", ")
        now = time.time()
        if row.get("paused") is None:
            stored = self.read_deployment(row["name"])
            row = {**row, "paused": int(stored["paused"]) if stored else 0}
        values = [row.get(n) for n in names[:-2]] + [now, now]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in ("name", "created"))
        sql = (
            f"INSERT INTO deployments ({self._DEPLOYMENT_COLUMNS}) VALUES "
            f"({', '.join('?' * len(names))}) ON CONFLICT (name) DO UPDATE SET {updates}"
        )
        with self._transaction() as conn:
            conn.execute(self._sql(sql), values)

    def list_deployments(self) -> list[dict[str, Any]]:
        """Every deployment, by name, as a dict of its columns."""
        sql = f"SELECT {self._DEPLOYMENT_COLUMNS} FROM deployments ORDER BY name"
        rows = self._query(lambda c: c.execute(sql).fetchall())
        names = self._DEPLOYMENT_COLUMNS.split(", ")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def read_deployment(self, name: str) -> dict[str, Any] | None:
        """One deployment by its name ('flow/deployment'), None when there is none."""
        sql = self._sql(f"SELECT {self._DEPLOYMENT_COLUMNS} FROM deployments WHERE name = ?")
        row = self._query(lambda c: c.execute(sql, (name,)).fetchone())
        names = self._DEPLOYMENT_COLUMNS.split(", ")
        return None if row is None else dict(zip(names, row, strict=True))

    def set_deployment_paused(self, name: str, paused: bool, on_shutdown: bool = False) -> bool:
        """Pause or resume a deployment's schedules; False when there is no such one.
        `on_shutdown`: paused by a server stopping (`pause_on_shutdown`), stored as 2, so
        that serving it again resumes only such a pause, never one an operator set."""
        value = (2 if on_shutdown else 1) if paused else 0
        sql = self._sql("UPDATE deployments SET paused = ?, updated = ? WHERE name = ?")
        with self._transaction() as conn:
            return bool(conn.execute(sql, (value, time.time(), name)).rowcount)

    def delete_deployment(self, name: str) -> bool:
        """Delete a deployment (its runs stay in the history); False when there was none."""
        with self._transaction() as conn:
            cur = conn.execute(self._sql("DELETE FROM deployments WHERE name = ?"), (name,))
            return bool(cur.rowcount)

    # -- scheduled runs (deployments) -------------------------------------------------------------
    #: how a JSON text parameter is bound (PostgreSQL's column is jsonb)
    json_param = "?"

    def _queued_insert(self) -> str:
        """The insert of a deployment's run, Scheduled: (key, name, flow name, parameters
        JSON, created, state time, deployment, scheduled time, slot key, entrypoint, tags)."""
        return (
            "INSERT INTO runs (pk, kind, name, spec_name, parameters, created, state_type, "
            "state_name, state_ts, state_seq, run_count, deployment, scheduled_time, slot_key, "
            "entrypoint, tags) "
            f"VALUES (?, 'flow', ?, ?, {self.json_param}, ?, 'SCHEDULED', 'Scheduled', ?, 0, 0, "
            f"?, ?, ?, ?, {self.json_param})"
        )

    def schedule_runs(self, session: int, runs: list[tuple[Any, ...]]) -> int:
        """Add scheduled runs of deployments, at most one per slot key (a slot another
        process scheduled first is left as it is): rows of (name, flow name, parameters
        JSON, deployment, scheduled time, slot key). Keys are the session's. Returns how
        many were added."""
        if not runs:
            return 0
        lo, hi = session << 32, (session + 1) << 32
        sql = self._sql(self._queued_insert() + " ON CONFLICT DO NOTHING")
        added = 0
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                self._sql("SELECT max(pk) FROM runs WHERE pk >= ? AND pk < ?"), (lo, hi)
            ).fetchone()
            pk = lo - 1 if row is None or row[0] is None else int(row[0])
            for name, flow_name, parameters, deployment, when, slot, entry, tags in runs:
                pk += 1
                values = (pk, name, flow_name, parameters, now, now, deployment, when, slot)
                cur = conn.execute(sql, (*values, entry, tags))
                added += max(cur.rowcount, 0)
        return added

    def last_slot(self, deployment: str, slot_prefix: str) -> float | None:
        """The latest scheduled time of the runs whose slot key starts with `slot_prefix`."""
        sql = self._sql(
            "SELECT max(scheduled_time) FROM runs WHERE deployment = ? "
            "AND substr(slot_key, 1, ?) = ?"
        )
        row = self._query(
            lambda c: c.execute(sql, (deployment, len(slot_prefix), slot_prefix)).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def open_slot_runs(self, deployment: str, slot_prefix: str) -> tuple[int, int]:
        """(waiting, going): the runs of these slots still Scheduled, and those past it but
        not finished."""
        from asyncflow.store.base import TERMINAL_SQL

        sql = self._sql(
            "SELECT state_type = 'SCHEDULED', count(*) FROM runs WHERE deployment = ? "
            f"AND substr(slot_key, 1, ?) = ? AND state_type NOT IN {TERMINAL_SQL} "
            "GROUP BY state_type = 'SCHEDULED'"
        )
        rows = self._query(
            lambda c: c.execute(sql, (deployment, len(slot_prefix), slot_prefix)).fetchall()
        )
        counts = {bool(waiting): int(n) for waiting, n in rows}
        return counts.get(True, 0), counts.get(False, 0)

    def claim_runs(
        self,
        deployments: list[str],
        now: float,
        limit: int,
        process_id: str,
        exclusive: dict[str, list[str]] | None = None,
        caps: dict[str, tuple[int, str]] | None = None,
    ) -> list[Claimed]:
        """Take up to `limit` due scheduled runs of these deployments for this process: each
        goes to Pending, and this process answers for it (its death crashes it). A run is
        claimed once, however many processes ask at the same moment.

        `exclusive`: per deployment, slot-key prefixes (schedules) of which a run is only
        claimed while none other goes. `caps`: per deployment, (limit, strategy) of its
        concurrency limit, counted over every process: a run over it waits (`ENQUEUE`) or
        ends Cancelled (`CANCEL_NEW`).
        """
        if not deployments or limit < 1:
            return []
        marks = ", ".join("?" * len(deployments))
        due = (
            "r.state_type = 'SCHEDULED' AND r.state_name = 'Scheduled' "
            f"AND r.scheduled_time <= ? AND r.deployment IN ({marks})"
        )
        probe = self._sql(f"SELECT 1 FROM runs r WHERE {due} LIMIT 1")
        if self._query(lambda c: c.execute(probe, (now, *deployments)).fetchone()) is None:
            return []  # (nothing due: no write transaction)
        select = (
            self._sql(
                "SELECT r.pk, p.id_prefix, r.name, r.spec_name, r.parameters, r.deployment, "
                "r.scheduled_time, r.slot_key, x.attempt FROM runs r "
                "JOIN processes p ON p.pk = r.pk >> 32 LEFT JOIN restarts x ON x.run_pk = r.pk "
                f"WHERE {due} ORDER BY r.scheduled_time, r.pk LIMIT 500"
            )
            + self.skip_locked
        )
        going_sql = self._sql(
            "SELECT count(*) FROM runs WHERE deployment = ? AND substr(slot_key, 1, ?) = ? "
            "AND state_type IN ('PENDING', 'RUNNING', 'CANCELLING')"
        )
        count_sql = self._sql(
            "SELECT count(*) FROM runs WHERE deployment = ? "
            "AND state_type IN ('PENDING', 'RUNNING', 'CANCELLING')"
        )
        log = self._sql(
            "INSERT INTO transition_log (run_pk, seq, type, name, message, ts) "
            "SELECT pk, state_seq, state_type, state_name, state_message, state_ts FROM runs "
            "WHERE pk = ? ON CONFLICT DO NOTHING"
        )
        take = self._sql(
            "UPDATE runs SET state_type = ?, state_name = ?, state_message = ?, state_ts = ?, "
            "state_seq = ? WHERE pk = ? AND state_type = 'SCHEDULED'"
        )
        own = self._sql(
            "INSERT INTO restarts (run_pk, process, attempt) VALUES (?, ?, ?) "
            "ON CONFLICT (run_pk) DO UPDATE SET process = excluded.process, "
            "attempt = excluded.attempt"
        )
        claimed: list[Claimed] = []
        with self._transaction() as conn:
            for name in sorted(caps or ()):  # (PostgreSQL: one counter of a limit at a time)
                self._lock_name(conn, name)
            rows = conn.execute(select, (now, *deployments)).fetchall()
            blocked: set[str] = set()
            for name, prefixes in (exclusive or {}).items():
                for prefix in prefixes:
                    args = (name, len(prefix), prefix)
                    if conn.execute(going_sql, args).fetchone()[0]:
                        blocked.add(prefix)
            going = {
                name: int(conn.execute(count_sql, (name,)).fetchone()[0]) for name in caps or {}
            }
            for pk, prefix, name, flow_name, params, deployment, when, slot, done in rows:
                if len(claimed) >= limit:
                    break
                schedule = slot.rsplit("|", 1)[0] + "|" if slot else ""
                if schedule in blocked:
                    continue
                attempt = 1 if done is None else int(done) + 1
                seq_base = attempt << 48
                cap = (caps or {}).get(deployment)
                if cap is not None and going[deployment] >= cap[0]:
                    if cap[1] != "CANCEL_NEW":
                        continue  # ENQUEUE: it waits for a slot of the limit
                    conn.execute(log, (pk,))
                    message = f"The deployment's concurrency limit ({cap[0]}) was reached."
                    conn.execute(take, ("CANCELLED", "Cancelled", message, now, seq_base, pk))
                    continue
                conn.execute(log, (pk,))
                cur = conn.execute(
                    take, ("PENDING", "Pending", f"Claimed by {process_id}", now, seq_base - 1, pk)
                )
                if not cur.rowcount:
                    continue
                conn.execute(own, (pk, process_id, attempt))
                if schedule in {p for ps in (exclusive or {}).values() for p in ps}:
                    blocked.add(schedule)
                if cap is not None:
                    going[deployment] += 1
                if isinstance(params, str):
                    params = json.loads(params)
                claimed.append(
                    Claimed(run_id(prefix, pk), pk, name, flow_name, dict(params or {}),
                            deployment, float(when), seq_base)
                )  # fmt: skip
        return claimed

    def adopt_claim(
        self, claimed: Claimed, owner: str, process: tuple[str, int, str, float], prefix: str
    ) -> bool:
        """A claimed run moves to another process (the one that runs it, with
        `isolation="process"`): from now on that process answers for it (its death crashes
        it; cancel requests go to it). Its session is made first, so crash detection knows
        it. False when `owner` no longer has the run."""
        self.session_for(process[0], prefix, *process[1:])
        sql = self._sql("UPDATE restarts SET process = ? WHERE run_pk = ? AND process = ?")
        with self._transaction() as conn:
            return bool(conn.execute(sql, (process[0], claimed.pk, owner)).rowcount)

    def next_due(self, deployments: list[str]) -> float | None:
        """When the earliest Scheduled run of these deployments is due (a serving process
        sleeps until then), None when there is none."""
        if not deployments:
            return None
        marks = ", ".join("?" * len(deployments))
        sql = self._sql(
            "SELECT min(scheduled_time) FROM runs WHERE state_type = 'SCHEDULED' "
            f"AND state_name = 'Scheduled' AND deployment IN ({marks})"
        )
        row = self._query(lambda c: c.execute(sql, deployments).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    def _lock_name(self, conn: Any, name: str) -> None:
        """Serialize writers of one name within the transaction (SQLite's transactions
        are serialized already; PostgreSQL takes an advisory lock)."""

    #: appended to the claim's SELECT (PostgreSQL: rows another claimer holds are skipped)
    skip_locked = ""

    def fail_claimed(
        self, claimed: Claimed, message: str, type_: str = "FAILED", owner: str | None = None
    ) -> bool:
        """End Failed (or `type_`) a claimed run whose flow did not start (its parameters no
        longer fit the flow, say); False when its attempt recorded states meanwhile, or
        (with `owner`) when another process than `owner` took it over."""
        name = StateType(type_).value.capitalize()
        check = self._sql(
            "SELECT 1 FROM runs WHERE pk = ? AND state_seq = ?"
            + (
                ""
                if owner is None
                else " AND pk IN (SELECT run_pk FROM restarts WHERE process = ?)"
            )
        )
        log = self._sql(
            "INSERT INTO transition_log (run_pk, seq, type, name, message, ts) "
            "SELECT pk, state_seq, state_type, state_name, state_message, state_ts "
            "FROM runs WHERE pk = ? ON CONFLICT DO NOTHING"
        )
        end = self._sql(
            f"UPDATE runs SET state_type = '{type_}', state_name = '{name}', "
            "state_message = ?, state_ts = ?, state_seq = ? WHERE pk = ?"
        )
        args = (claimed.pk, claimed.seq_base - 1) + (() if owner is None else (owner,))
        with self._transaction() as conn:
            if conn.execute(check, args).fetchone() is None:
                return False
            conn.execute(log, (claimed.pk,))
            conn.execute(end, (message, time.time(), claimed.seq_base, claimed.pk))
            return True

    # -- runs made on request (run_deployment) ------------------------------------------------
    def add_deployment_run(
        self,
        session: int,
        row: tuple[Any, ...],
        slot_key: str | None = None,
    ) -> tuple[UUID, int, bool]:
        """Add a Scheduled run of a deployment: `row` is (name, flow name, parameters JSON,
        deployment, scheduled time, entrypoint, tags JSON). With a `slot_key` (an
        idempotency key) the run made earlier with that key, if there is one, is the answer.
        Returns (id, key, added)."""
        name, flow_name, parameters, deployment, when, entrypoint, tags = row
        lo, hi = session << 32, (session + 1) << 32
        insert = self._sql(
            self._queued_insert() + " ON CONFLICT (slot_key) WHERE slot_key IS NOT NULL DO NOTHING"
        )
        find = self._sql(
            "SELECT r.pk, p.id_prefix FROM runs r JOIN processes p ON p.pk = r.pk >> 32 "
            "WHERE r.slot_key = ?"
        )
        now = time.time()
        with self._transaction() as conn:
            if slot_key is not None:
                found = conn.execute(find, (slot_key,)).fetchone()
                if found is not None:
                    return run_id(found[1], found[0]), int(found[0]), False
            last = conn.execute(
                self._sql("SELECT max(pk) FROM runs WHERE pk >= ? AND pk < ?"), (lo, hi)
            ).fetchone()
            pk = lo if last is None or last[0] is None else int(last[0]) + 1
            values = (pk, name, flow_name, parameters, now, now, deployment, when, slot_key)
            added = conn.execute(insert, (*values, entrypoint, tags)).rowcount > 0
            if not added:  # (another process added the key's run meanwhile)
                found = conn.execute(find, (slot_key,)).fetchone()
                return run_id(found[1], found[0]), int(found[0]), False
            prefix = self._prefix_of(conn, pk)
            self._notify_queued(conn, deployment)
        return run_id(prefix, pk), pk, True

    def _notify_queued(self, conn: Any, deployment: str) -> None:
        """Tell the serving processes a run of `deployment` was queued (PostgreSQL: NOTIFY,
        sent at commit; SQLite has no such thing: its servers poll)."""

    def queue_listener(self) -> Any:
        """An object whose `wait(seconds)` returns the deployments runs were queued for
        meanwhile (see `_notify_queued`), or None where the store cannot tell."""
        return None

    def run_state(self, pk: int) -> tuple[StateType, str] | None:
        """A run's latest state (type, name) by its key: what a waiter polls."""
        sql = self._sql("SELECT state_type, state_name FROM runs WHERE pk = ?")
        row = self._query(lambda c: c.execute(sql, (pk,)).fetchone())
        return None if row is None else (StateType(row[0]), str(row[1]))

    # -- cancel requests ------------------------------------------------------------------------
    def request_cancel(
        self, run: UUID | str, process_id: str = "", why: str = "cancel_run"
    ) -> tuple[str, StoredRun]:
        """Cancel a flow run recorded here. A deployment's run still waiting in the queue
        ends Cancelled at once (it never starts: a claim takes only those); another open one
        gets a cancel request, which the process running it acts on, unless that is
        `process_id` (the caller). Returns ("cancelled" | "requested" | "final" | "own" |
        "task", the run as it was): "task" for a task run, which only its own process can
        cancel (`cancel_run` there). KeyError for an unknown run."""
        from asyncflow.store.base import TERMINAL

        self._before_read()
        stored = self.read_run_sync(run)
        queued = (
            "pk = ? AND state_type = 'SCHEDULED' AND state_name = 'Scheduled' "
            "AND deployment IS NOT NULL AND pk NOT IN (SELECT run_pk FROM restarts)"
        )
        log = self._sql(
            "INSERT INTO transition_log (run_pk, seq, type, name, message, ts) "
            "SELECT pk, state_seq, state_type, state_name, state_message, state_ts FROM runs "
            f"WHERE {queued} ON CONFLICT DO NOTHING"
        )
        end = self._sql(
            "UPDATE runs SET state_type = 'CANCELLED', state_name = 'Cancelled', "
            f"state_message = ?, state_ts = ?, state_seq = state_seq + 1 WHERE {queued}"
        )
        ask = self._sql(
            "INSERT INTO cancel_requests (run_pk, requested) VALUES (?, ?) ON CONFLICT DO NOTHING"
        )
        state = self._sql(
            "SELECT r.kind, r.state_type, coalesce(x.process, p.id) FROM runs r "
            "JOIN processes p ON p.pk = r.pk >> 32 LEFT JOIN restarts x ON x.run_pk = r.pk "
            "WHERE r.pk = ?"
        )
        with self._transaction() as conn:
            pk = self._pk_of(conn, stored.id)
            kind, type_, owner = conn.execute(state, (pk,)).fetchone()
            if StateType(type_) in TERMINAL:
                return "final", stored
            if kind != "flow":
                return "task", stored
            conn.execute(log, (pk,))
            message = f"Cancelled before it started ({why})."
            if conn.execute(end, (message, time.time(), pk)).rowcount:
                return "cancelled", stored
            if owner == process_id:
                return "own", stored
            conn.execute(ask, (pk, time.time()))
        return "requested", stored

    def cancel_requests(self, process_id: str) -> list[UUID]:
        """The open runs this process answers for (its own, or restarted or claimed by it)
        that someone asked to cancel. Requests for runs that ended, whoever ran them, are
        dropped here."""
        from asyncflow.store.base import TERMINAL

        probe = "SELECT 1 FROM cancel_requests LIMIT 1"
        if self._query(lambda c: c.execute(probe).fetchone()) is None:
            return []  # (the usual answer: one read of an empty table)
        sql = (
            "SELECT c.run_pk, p.id_prefix, r.state_type, coalesce(x.process, p.id) "
            "FROM cancel_requests c JOIN runs r ON r.pk = c.run_pk "
            "JOIN processes p ON p.pk = c.run_pk >> 32 LEFT JOIN restarts x ON x.run_pk = c.run_pk"
        )
        rows = self._query(lambda c: c.execute(sql).fetchall())
        ended = [pk for pk, _, state, _ in rows if StateType(state) in TERMINAL]
        if ended:
            drop = self._sql("DELETE FROM cancel_requests WHERE run_pk = ?")
            with self._transaction() as conn:
                for pk in ended:
                    conn.execute(drop, (pk,))
        return [
            run_id(prefix, pk)
            for pk, prefix, state, owner in rows
            if owner == process_id and StateType(state) not in TERMINAL
        ]
