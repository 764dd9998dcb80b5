"""Results in the run store (issue 14): a persisted result is a row of the store, so another
process finds and reads it by run id (`asyncflow.store.load_result`, `asyncflow runs result`),
and runs carry their tags and their flow's entrypoint. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from test_store_postgres import server_url

from asyncflow import flow, tags, task
from asyncflow.cli import main
from asyncflow.exceptions import MissingResult
from asyncflow.settings import reload_settings
from asyncflow.store import load_result, open_store, writer
from asyncflow.store.base import SCHEMA_VERSION

__all__ = ["server_url"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'runs.db'}"
        return
    import psycopg

    base = request.getfixturevalue("server_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def recording(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's runs record to `store_url`."""
    monkeypatch.setenv("ASYNCFLOW_STORE", store_url)
    reload_settings()
    yield store_url
    writer.stop()
    monkeypatch.undo()
    reload_settings()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_persisted_results_are_rows_readable_from_another_process(
    recording: str, tmp_path: Path
) -> None:
    @task(persist_result=True, result_serializer="json")
    def add(x: int, y: int) -> int:
        return x + y

    @flow(persist_result=True, result_storage=tmp_path / "results")
    def total(n: int) -> dict[str, Any]:
        return {"total": add(n, 1), "n": n}

    state = total(4, return_state=True)
    flow_id = state.state_details.flow_run_id
    writer.flush()
    store = open_store(recording)
    try:
        flow_result = store.result_of_sync(flow_id)
        (task_result,) = store.list_results_sync(task="add")
        task_run = store.read_run_sync(task_result.run_id)
    finally:
        store.close()
    assert flow_result is not None and flow_result.key == str(flow_id)
    assert flow_result.serializer == "pickle" and not flow_result.cache
    assert flow_result.storage == str(tmp_path / "results")
    # the task's storage is its flow's; a persisting task caches: its key is its cache key
    assert task_result.storage == str(tmp_path / "results") and task_result.cache
    assert task_result.serializer == "json" and task_result.flow_name == "total"
    assert task_run.parent_flow_run_id == flow_id and len(task_result.key) == 64

    code = (
        "import json, sys\n"
        "from asyncflow.store import load_result\n"
        "print(json.dumps([load_result(sys.argv[1]), load_result(sys.argv[2])]))\n"
    )
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(flow_id), str(task_result.run_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # another directory: the storage path is absolute
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"total": 5, "n": 4}, 5]


def test_runs_result_prints_the_value_and_says_why_there_is_none(
    recording: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @task
    def plain() -> int:
        return 1

    @flow(persist_result=True, result_storage=tmp_path)
    def kept() -> dict[str, list[int]]:
        plain()
        return {"values": [1, 2]}

    @flow
    def broken() -> None:
        raise ValueError("no")

    kept_id = kept(return_state=True).state_details.flow_run_id
    broken_id = broken(return_state=True).state_details.flow_run_id
    writer.flush()
    code, out, err = _cli(capsys, "--store", recording, "runs", "result", str(kept_id))
    assert code == 0, err
    assert out.strip() == "{'values': [1, 2]}"
    code, out, _ = _cli(capsys, "--store", recording, "runs", "result", str(kept_id), "--json")
    assert code == 0 and json.loads(out) == {"values": [1, 2]}
    code, out, _ = _cli(capsys, "--store", recording, "runs", "inspect", str(kept_id))
    assert code == 0 and "result     pickle" in out

    store = open_store(recording)
    try:
        (plain_run,) = store.list_runs_sync(kind="task", spec_name="plain")
    finally:
        store.close()
    code, _, err = _cli(capsys, "--store", recording, "runs", "result", str(plain_run.id))
    assert code == 2
    assert "has no persisted result" in err and "persist_result=True on task 'plain'" in err
    with pytest.raises(MissingResult, match="persist_result=True on task 'plain'"):
        load_result(plain_run.id, recording)
    with pytest.raises(MissingResult, match="is Failed: only a completed run has a result"):
        load_result(broken_id, recording)
    with pytest.raises(KeyError, match="No run with id"):
        load_result(uuid.uuid4(), recording)

    # the file removed behind the store's back: the error says where it looked
    (tmp_path / str(kept_id)).unlink()
    with pytest.raises(MissingResult, match="No result is stored at"):
        load_result(kept_id, recording)
    code, _, err = _cli(capsys, "--store", recording, "runs", "result", str(kept_id))
    assert code == 2 and "is gone" in err


def test_a_cache_hit_points_at_the_record_it_took(recording: str, tmp_path: Path) -> None:
    from asyncflow.cache_policies import INPUTS

    @task(cache_policy=INPUTS, result_storage=tmp_path)
    def square(x: int) -> int:
        return x * x

    @flow
    def twice() -> list[int]:
        return [square(3), square(3)]

    assert twice() == [9, 9]
    writer.flush()
    store = open_store(recording)
    try:
        runs = store.list_runs_sync(kind="task", spec_name="square")
        results = {r.run_id: r for r in store.list_results_sync(task="square")}
    finally:
        store.close()
    names = sorted(r.state_name for r in runs)
    assert names == ["Cached", "Completed"]
    assert len(results) == 2 and len({(r.storage, r.key) for r in results.values()}) == 1
    assert all(r.cache for r in results.values())


def test_runs_carry_their_tags_and_their_flows_entrypoint(recording: str, tmp_path: Path) -> None:
    script = tmp_path / "tagged.py"
    script.write_text(
        textwrap.dedent(
            """
            from asyncflow import flow, tags, task

            @task(tags=["t1"])
            def step() -> int:
                return 1

            @flow
            def tagged() -> int:
                with tags("inner"):
                    return step()

            with tags("outer"):
                tagged()
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr

    @flow
    def local() -> None:  # defined in a function: no importable entrypoint
        pass

    with tags("here"):
        local()
    writer.flush()
    store = open_store(recording)
    try:
        (flow_run,) = store.list_runs_sync(spec_name="tagged")
        (task_run,) = store.list_runs_sync(kind="task", spec_name="step")
        (local_run,) = store.list_runs_sync(spec_name="local")
    finally:
        store.close()
    assert flow_run.tags == ("outer",) and flow_run.entrypoint == f"{script}:tagged"
    assert task_run.tags == ("inner", "outer", "t1") and task_run.entrypoint is None
    assert local_run.tags == ("here",) and local_run.entrypoint is None


def test_a_version_1_sqlite_store_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    from asyncflow.store.sqlite import APPLICATION_ID, MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO processes VALUES (1, 'p', '00000000-0000-8000-8000-', 1, 'h', 0, 0, 0)"
    )
    conn.execute(
        "INSERT INTO runs (pk, kind, name, spec_name, created, state_type, state_name, "
        "state_ts, state_seq, run_count) "
        "VALUES (4294967296, 'flow', 'old-run', 'old', 1.0, 'COMPLETED', 'Completed', 2.0, 2, 1)"
    )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite://{path}")
    try:
        (run,) = store.list_runs_sync()
        assert run.name == "old-run" and run.tags == () and run.entrypoint is None
        assert store.result_of_sync(run.id) is None and store.list_results_sync() == []
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"results", "restarts", "variables", "cancel_requests"} <= tables
    conn.close()


class _Terminal:
    """A stdin that is a terminal answering `answer`."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.answer + "\n"


def test_cache_ls_and_clear_select_by_task_flow_key_and_age(
    recording: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asyncflow.cache_policies import INPUTS

    calls: list[str] = []

    @task(cache_policy=INPUTS, result_storage=tmp_path / "results")
    def first(x: int) -> int:
        calls.append("first")
        return x

    @task(cache_policy=INPUTS, result_storage=tmp_path / "results")
    def second(x: int) -> int:
        calls.append("second")
        return -x

    @flow(persist_result=True, result_storage=tmp_path / "results")
    def both() -> int:
        return first(1) + first(2) + second(3)  # (INPUTS alone: same inputs, same key)

    both()
    writer.flush()
    store = ("--store", recording)

    def listed(*args: str) -> list[dict[str, Any]]:
        code, out, err = _cli(capsys, *store, "cache", "ls", "--json", *args)
        assert code == 0, err
        return json.loads(out)  # type: ignore[no-any-return]

    assert sorted(r["task"] for r in listed()) == ["first", "first", "second"]
    assert [r["task"] for r in listed("--task", "second")] == ["second"]
    assert len(listed("--flow", "both")) == 3 and listed("--flow", "other") == []
    key = listed("--task", "second")[0]["key"]
    assert [r["key"] for r in listed("--key", key[:10])] == [key]
    assert listed("--older-than", "1h") == []
    assert len(listed("--all")) == 4  # the flow's own result is no cache record
    code, out, _ = _cli(capsys, *store, "cache", "ls")
    assert code == 0 and "second" in out and "KEY" in out
    code, _, err = _cli(capsys, *store, "cache", "ls", "--older-than", "soon")
    assert code == 2 and "bad --older-than" in err

    # clearing asks first: without a terminal it needs --yes; "n" keeps everything
    code, _, err = _cli(capsys, *store, "cache", "clear", "--task", "first")
    assert code == 2 and "needs confirmation: pass --yes" in err
    monkeypatch.setattr(sys, "stdin", _Terminal("n"))
    code, out, _ = _cli(capsys, *store, "cache", "clear", "--task", "first")
    assert code == 1 and "Nothing deleted" in out and len(listed()) == 3
    files = {r["key"] for r in listed("--task", "first")}
    assert all((tmp_path / "results" / k).is_file() for k in files)
    monkeypatch.setattr(sys, "stdin", _Terminal("y"))
    code, out, _ = _cli(capsys, *store, "cache", "clear", "--task", "first")
    assert code == 0 and "Deleted 2 cache record(s)" in out
    assert not any((tmp_path / "results" / k).exists() for k in files)
    assert [r["task"] for r in listed()] == ["second"]

    calls.clear()
    both()  # `first` runs again (its records are gone), `second` is still cached
    assert calls == ["first", "first"]
    writer.flush()
    code, out, _ = _cli(capsys, *store, "cache", "clear", "--all", "--yes")
    assert code == 0 and "Deleted" in out and listed("--all") == []
    assert [p for p in (tmp_path / "results").iterdir() if p.is_file()] == []


def test_cache_clear_judges_a_key_by_its_last_write(
    recording: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from asyncflow.cache_policies import INPUTS

    @task(cache_policy=INPUTS, result_storage=tmp_path / "results")
    def fetch(x: int) -> int:
        return x

    @flow
    def once() -> int:
        return fetch(1)

    once()
    time.sleep(1.2)
    refreshed = fetch.with_options(refresh_cache=True)

    @flow
    def again() -> int:
        return refreshed(1)

    again()
    writer.flush()
    code, out, _ = _cli(
        capsys, "--store", recording, "cache", "clear", "--older-than", "1s", "--yes"
    )
    assert code == 0 and "No cache records to clear" in out  # written again a moment ago
    assert len(list((tmp_path / "results").iterdir())) == 1
