"""The PostgreSQL run store against a real server (`.ci/run` starts one and sets
ASYNCFLOW_TEST_POSTGRES_URL). Each test gets a schema of its own in that database.

The behavior tests are tests/test_store_sqlite.py's, run again here with a PostgreSQL URL;
below them are the PostgreSQL-only ones. Without a server they skip, saying why, except
under CI=true, where a missing server is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from _tcp_proxy import TcpProxy
from test_store_sqlite import (  # the behavior tests, run here on PostgreSQL
    recording,
    store,
    test_async_flow_and_async_queries,
    test_completed_runs_are_recorded_with_their_states_and_links,
    test_concurrent_tasks_and_unusual_parameters,
    test_failed_runs_keep_their_error_message,
    test_failed_state_is_a_returned_value,
    test_killed_process_runs_are_crashed_and_completed_states_kept,
    test_listing_filters_and_id_lookup,
    test_reset_registry_keeps_recording,
    test_retried_task_records_every_attempt,
    test_runs_left_open_at_exit_are_crashed,
    test_states_spread_over_several_writes_are_all_kept,
    test_two_processes_write_one_store_at_once,
)

from asyncflow import flow, task
from asyncflow.exceptions import StoreError
from asyncflow.registry import reset_registry
from asyncflow.settings import reload_settings
from asyncflow.states import StateType
from asyncflow.store import open_store, writer
from asyncflow.store.base import CRASH_SEQ, SCHEMA_VERSION

__all__ = [
    "recording",
    "store",
    "test_async_flow_and_async_queries",
    "test_completed_runs_are_recorded_with_their_states_and_links",
    "test_concurrent_tasks_and_unusual_parameters",
    "test_failed_runs_keep_their_error_message",
    "test_failed_state_is_a_returned_value",
    "test_killed_process_runs_are_crashed_and_completed_states_kept",
    "test_listing_filters_and_id_lookup",
    "test_reset_registry_keeps_recording",
    "test_retried_task_records_every_attempt",
    "test_runs_left_open_at_exit_are_crashed",
    "test_states_spread_over_several_writes_are_all_kept",
    "test_two_processes_write_one_store_at_once",
]

URL_VARIABLE = "ASYNCFLOW_TEST_POSTGRES_URL"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: .ci/run is meant to start a PostgreSQL server")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        _unavailable(f"no PostgreSQL server: {URL_VARIABLE} is not set (.ci/run sets it)")
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev,postgres]')")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        _unavailable(f"the PostgreSQL server at {URL_VARIABLE} is unreachable: {exc}")
    assert url is not None
    return url


@pytest.fixture
def store_url(server_url: str) -> Iterator[str]:
    """The server's database with a fresh schema first on the search path."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server_url else "?"
    yield f"{server_url}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _execute(url: str, sql: str) -> list[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def test_schema_is_versioned_and_the_view_shows_every_state(store: Any, recording: str) -> None:
    from test_store_sqlite import parent_flow

    parent_flow(1)
    assert writer.flush()  # read below with a plain connection, not through the store
    assert _execute(recording, "SELECT version FROM asyncflow_schema") == [(SCHEMA_VERSION,)]
    assert _execute(recording, "SELECT count(*) FROM transitions") == [(15,)]


def test_newer_schema_is_refused(store_url: str) -> None:
    open_store(store_url).close()
    _execute(store_url, f"UPDATE asyncflow_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer asyncflow") as info:
        open_store(store_url)
    assert "127.0.0.1" in str(info.value)


def test_foreign_runs_table_is_refused(store_url: str) -> None:
    _execute(store_url, "CREATE TABLE runs (id integer)")
    with pytest.raises(StoreError, match="not asyncflow's"):
        open_store(store_url)
    assert _execute(store_url, "SELECT to_regclass('asyncflow_schema')") == [(None,)]


def test_unreachable_server_names_it_without_the_password() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev,postgres]')")
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError, match="cannot be reached") as info:
        open_store(url)
    assert "127.0.0.1:1/nowhere" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_concurrent_crash_detectors_add_one_crashed_state(store_url: str) -> None:
    """Stores opened at once by several processes (here threads) crash a dead process's open
    runs once: one Crashed state each."""
    writer_store: Any = open_store(store_url)
    try:
        session = writer_store.session_for("dead-process", "00000000-0000-4000-0000-")
    finally:
        writer_store.close()
    base = session << 32
    _execute(
        store_url,
        "INSERT INTO runs (pk, kind, name, spec_name, created, state_type, state_name, "
        f"state_ts, state_seq, run_count, start_time, start_seq) VALUES ({base}, 'flow', 'f', "
        "'f', 1.0, 'RUNNING', 'Running', 2.0, 1, 1, 2.0, 1)",
    )
    _execute(  # a process on another host, silent for long
        store_url, f"UPDATE processes SET hostname = 'gone', heartbeat = 0 WHERE pk = {session}"
    )
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_store(store_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    states = _execute(store_url, f"SELECT type FROM transitions WHERE run_pk = {base} ORDER BY seq")
    assert states == [("PENDING",), ("RUNNING",), ("CRASHED",)]
    crashed = _execute(
        store_url, f"SELECT state_type, state_seq, state_message FROM runs WHERE pk = {base}"
    )
    assert crashed[0][0] == StateType.CRASHED.value and crashed[0][1] == CRASH_SEQ
    assert "stopped reporting" in crashed[0][2]


def test_concurrent_first_opens_create_the_schema_once(store_url: str) -> None:
    """Processes opening a new database at once: one creates the tables, none fails."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_store(store_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert _execute(store_url, "SELECT version FROM asyncflow_schema") == [(SCHEMA_VERSION,)]


# -- outages (issue 11), through a TCP proxy in front of the server ------------------------------
def _proxied(url: str) -> tuple[TcpProxy, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    proxy = TcpProxy(parts.hostname, parts.port)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return proxy, urlunsplit(parts._replace(netloc=netloc))


@task
def paced(i: int) -> int:
    time.sleep(0.001)
    return i


@flow
def long_flow(n: int) -> int:
    return sum(paced(i) for i in range(n))


def test_server_restart_mid_flow_loses_nothing(store_url: str, logs: Any) -> None:
    """The server goes away for a second mid-flow (every connection dropped, new ones
    refused) and comes back: every state before, during and after is stored, the flow
    Completed; one warning when it went, one when it came back."""
    proxy, proxied = _proxied(store_url)
    os.environ["ASYNCFLOW_STORE"] = proxied
    reload_settings()
    reset_registry()
    try:
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(long_flow(1500)))
        thread.start()
        time.sleep(0.4)
        proxy.cut()
        time.sleep(1.0)
        proxy.resume()
        thread.join(120)
        assert done == [sum(range(1500))]
        deadline = time.monotonic() + 30
        while not writer.flush():
            assert time.monotonic() < deadline, "the writer did not reconnect"
            time.sleep(0.1)
    finally:
        writer.stop()
        os.environ["ASYNCFLOW_STORE"] = "sqlite"
        reload_settings()
        proxy.close()
    s: Any = open_store(store_url)
    try:
        (top,) = s.list_runs_sync(kind="flow")
        assert top.state_type is StateType.COMPLETED
        tasks = s.list_runs_sync(kind="task", limit=10_000)
        assert len(tasks) == 1500
        assert all(t.state_type is StateType.COMPLETED for t in tasks)
        assert [x.type.value for x in s.read_run_sync(top.id).states] == [
            "PENDING", "RUNNING", "COMPLETED"
        ]  # fmt: skip
    finally:
        s.close()
    store_messages = [r.getMessage() for r in logs.records if r.name == "asyncflow.store"]
    assert sum("not recorded in" in m for m in store_messages) == 1, store_messages
    assert sum("again, after" in m for m in store_messages) == 1, store_messages


HANG_SCRIPT = """
import time
from asyncflow import flow, task

@task
def part(i: int) -> int:
    return i

@flow
def finishes(n: int) -> int:
    print("started", flush=True)
    time.sleep(0.5)
    return sum(part(i) for i in range(n))

print(finishes(10), flush=True)
"""


def test_server_that_stops_answering_at_exit(store_url: str, tmp_path: Path) -> None:
    """The server stops answering (connections open, no bytes back) while a process runs:
    its exit waits ASYNCFLOW_STORE_EXIT_TIMEOUT and no longer, says how much it could not
    write and where it went (it was silent, and lost it); the next opening writes it."""
    proxy, proxied = _proxied(store_url)
    try:
        open_store(proxied).close()  # the schema exists
        path = tmp_path / "hang.py"
        path.write_text(HANG_SCRIPT)
        env = {
            **os.environ,
            "ASYNCFLOW_STORE": proxied,
            "ASYNCFLOW_LOGGING_LEVEL": "WARNING",
            "ASYNCFLOW_STORE_EXIT_TIMEOUT": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.2)  # the writer has the flow's Running by now
        proxy.freeze()
        began = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "45"
        assert time.monotonic() - began < 10
        assert "could not be written" in err and "saved to" in err, err
        proxy.resume()
        s: Any = open_store(proxied)  # writes the spill file
        try:
            (top,) = s.list_runs_sync(kind="flow")
            assert top.state_type is StateType.COMPLETED, top
            tasks = s.list_runs_sync(kind="task", limit=100)
            assert len(tasks) == 10 and all(t.state_type is StateType.COMPLETED for t in tasks)
        finally:
            s.close()
    finally:
        proxy.close()
