"""Result persistence (issue 14): a completed run's result written to storage as it completes."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from asyncflow import flow, task
from asyncflow.exceptions import InvalidDefinitionError, MissingResult
from asyncflow.results import JSONSerializer, LocalFileSystem, ResultRecord


def test_a_persisted_task_result_is_written_and_read_back(tmp_path: Path) -> None:
    @task(persist_result=True, result_storage=tmp_path, result_serializer="json")
    def compute(x: int) -> dict[str, Any]:
        return {"x": x, "when": datetime.date(2026, 12, 1)}

    @flow
    def runs() -> Any:
        return compute(2, return_state=True)

    state = runs()
    record = state.result_record
    assert isinstance(record, ResultRecord) and record.serializer == JSONSerializer()
    # a persisting task caches with Prefect's DEFAULT policy: its key is the cache key
    assert len(record.key) == 64 and (tmp_path / record.key).is_file()
    assert record.load() == {"x": 2, "when": datetime.date(2026, 12, 1)}
    blob = (tmp_path / record.key).read_bytes()
    header, payload = blob.split(b"\n", 2)[:2], blob.split(b"\n", 2)[2]
    assert header[0] == b"AFR1" and json.loads(header[1])["serializer"] == "json"
    assert json.loads(payload)["x"] == 2 and record.size == len(payload)


def test_a_flow_result_is_stored_under_its_run_id(tmp_path: Path) -> None:
    @flow(persist_result=True, result_storage=tmp_path)
    def runs() -> int:
        return 7

    state = runs(return_state=True)
    assert state.result_record.key == str(state.state_details.flow_run_id)
    assert state.result_record.load() == 7


def test_results_are_not_persisted_by_default(tmp_path: Path) -> None:
    @task
    def plain() -> int:
        return 1

    @flow(result_storage=tmp_path)
    def runs() -> Any:
        return plain(return_state=True)

    assert runs().result_record is None
    assert list(tmp_path.iterdir()) == []


def test_a_flow_setting_does_not_reach_its_tasks_but_reaches_nested_flows(tmp_path: Path) -> None:
    @task
    def inner() -> int:
        return 1

    @flow
    def child() -> int:
        return 2

    @flow(persist_result=False)
    def opted_out() -> int:
        return 3

    @flow(persist_result=True, result_storage=tmp_path)
    def parent() -> Any:
        return inner(return_state=True), child(return_state=True), opted_out(return_state=True)

    state = parent(return_state=True)
    task_state, child_state, opted_state = state.data
    assert task_state.result_record is None  # a flow's setting never persists its tasks
    assert child_state.result_record is not None  # a nested flow does as its parent
    assert child_state.result_record.load() == 2
    assert opted_state.result_record is None
    assert state.result_record is not None


def test_cache_result_in_memory_false_reads_the_result_back(tmp_path: Path) -> None:
    @task(persist_result=True, cache_result_in_memory=False, result_storage=tmp_path)
    def big() -> list[int]:
        return list(range(10))

    @flow
    def runs() -> Any:
        state = big(return_state=True)
        assert isinstance(state.data, ResultRecord)  # the value itself is not kept
        return big(), state, big.submit().result()

    value, state, submitted = runs()
    assert value == submitted == list(range(10)) and state.result() == list(range(10))
    (tmp_path / state.data.key).unlink()
    with pytest.raises(MissingResult, match="No result is stored"):
        state.result()


def test_result_storage_key_template(tmp_path: Path) -> None:
    @task(
        persist_result=True,
        result_storage=tmp_path,
        result_storage_key="{parameters[name]}-{flow_run.name}",
    )
    def greet(name: str) -> str:
        return f"hi {name}"

    @flow(flow_run_name="the-run")
    def runs() -> Any:
        return greet("ann", return_state=True)

    assert runs().result_record.key == "ann-the-run"
    assert (tmp_path / "ann-the-run").is_file()


def test_a_result_that_cannot_be_written_completes_the_run_with_a_warning(
    tmp_path: Path, logs: Any
) -> None:
    @task(persist_result=True, result_storage=tmp_path, result_serializer="json")
    def not_json() -> Any:
        return threading.Lock()

    blocker = tmp_path / "file"
    blocker.write_text("x")

    @task(persist_result=True, result_storage=blocker)
    def nowhere() -> int:
        return 1

    @flow
    def runs() -> Any:
        return not_json(return_state=True), [nowhere(return_state=True) for _ in range(3)]

    bad_json, unwritable = runs()
    assert bad_json.is_completed() and "not persisted" in bad_json.message
    assert "'json' serializer" in bad_json.message
    assert all(s.is_completed() and s.result() == 1 for s in unwritable)
    assert all("not persisted" in s.message for s in unwritable)
    told = [r for r in logs.records if r.getMessage().startswith("The result was not persisted")]
    storage = [r.levelname for r in told if "writing to" in r.getMessage()]
    assert storage == ["WARNING"]  # warned once per storage location (then at DEBUG)


def test_result_options_are_checked_at_definition(tmp_path: Path) -> None:
    with pytest.raises(InvalidDefinitionError, match="Unknown result serializer 'yaml'"):
        task(result_serializer="yaml")(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(InvalidDefinitionError, match="directory path or a ResultStorage"):
        flow(result_storage=3)(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(InvalidDefinitionError, match="result_storage_key must be a string"):
        task(result_storage_key=3)(lambda: None)  # type: ignore[call-overload]
    custom = LocalFileSystem(tmp_path)
    assert task(result_storage=custom)(lambda: None).result_storage is custom  # type: ignore[call-overload]


@pytest.mark.anyio
async def test_async_runs_persist_too(tmp_path: Path) -> None:
    @task(persist_result=True, result_storage=tmp_path)
    async def double(x: int) -> int:
        return 2 * x

    @flow(persist_result=True, result_storage=tmp_path)
    async def runs() -> Any:
        return await double(4, return_state=True), await double.submit(5)

    state = await runs(return_state=True)
    task_state, value = state.data
    assert task_state.result_record.load() == 8 and value == 10
    assert state.result_record.load()[1] == 10


def test_the_default_storage_is_under_asyncflow_home(tmp_path: Path) -> None:
    script = """
        from asyncflow import flow
        @flow(persist_result=True)
        def f():
            return {"a": 1}
        state = f(return_state=True)
        print(state.result_record.storage.url, state.result_record.key)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFLOW_")}
    env.update(ASYNCFLOW_HOME=str(tmp_path), ASYNCFLOW_LOGGING_LEVEL="WARNING")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[0] == str(tmp_path / "storage")
    assert (tmp_path / "storage" / out[1]).is_file()


# -- fsspec storage (the [fsspec] extra; .ci/run installs it) ------------------------------------
def test_results_in_an_fsspec_filesystem(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")  # (the extra: CI has it; a bare install gets the error below)
    from asyncflow.results import RemoteFileSystem

    for url in ("memory://asyncflow-tests/results", f"file://{tmp_path}/remote"):

        @task(persist_result=True, result_storage=url, result_storage_key="k/{parameters[x]}")
        def stored(x: int) -> dict[str, int]:
            return {"x": x}

        @flow
        def runs() -> Any:
            return stored(3, return_state=True), stored(3, return_state=True)

        first, second = runs()
        record = first.result_record
        assert isinstance(record.storage, RemoteFileSystem) and record.storage.url == url
        assert record.load() == {"x": 3} and second.name == "Cached"
        assert record.storage.exists("k/3") and record.storage.delete("k/3")
        with pytest.raises(MissingResult):
            record.load()
    assert (tmp_path / "remote" / "k").is_dir()


def test_an_fsspec_url_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if it were not installed
    with pytest.raises(InvalidDefinitionError, match=r"pip install 'asyncflow\[fsspec\]'"):
        task(result_storage="s3://bucket/x")(lambda: None)  # type: ignore[call-overload]
