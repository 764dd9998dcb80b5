"""Restart from failure (issue 14): a failed, crashed or cancelled flow run runs again as a
new attempt of the same run id, and what its earlier attempts completed with a persisted
result is restored instead of run again. On SQLite and PostgreSQL, from the CLI and from
`Flow.retry`, and within a run's own `retries=`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow import flow, task
from asyncflow.cache_policies import NO_CACHE
from asyncflow.cli._run import load_file
from asyncflow.exceptions import StoreError
from asyncflow.settings import reload_settings
from asyncflow.store import open_store, writer

__all__ = ["recording", "server_url", "store_url"]
ROOT = Path(__file__).resolve().parent.parent

FIVE = """
import sys, time
from pathlib import Path
from asyncflow import flow, task

HERE = Path(__file__).parent

@task(persist_result=True)
def step(i: int) -> int:
    with open(HERE / "calls.txt", "a") as f:
        f.write(f"{i}\\n")
    if (HERE / f"hang-{i}").exists() and not (HERE / "go").exists():
        (HERE / f"in-{i}").write_text("")
        time.sleep(60)
    if i == 4 and not (HERE / "go").exists():
        raise RuntimeError("step 4 fails until go exists")
    return i * 10

@flow
def five(n: int = 5) -> int:
    return sum(step(i) for i in range(1, n + 1))

if __name__ == "__main__":
    five(return_state=True)
"""


def _calls(folder: Path) -> list[int]:
    path = folder / "calls.txt"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ASYNCFLOW_STORE": url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "asyncflow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # the entrypoint is found from any directory
    )


def _history(url: str, run_id: Any) -> list[tuple[str, str]]:
    store = open_store(url)
    try:
        run = store.read_run_sync(run_id)
    finally:
        store.close()
    return [(s.type.value, s.name) for s in run.states]


def test_runs_retry_runs_only_what_did_not_complete(recording: str, tmp_path: Path) -> None:
    (tmp_path / "five.py").write_text(FIVE)
    module = load_file(str(tmp_path / "five.py"))
    state = module.five(return_state=True)  # in this process, which stays alive meanwhile
    run_id = state.state_details.flow_run_id
    assert state.is_failed() and _calls(tmp_path) == [1, 2, 3, 4]
    writer.flush()

    (tmp_path / "go").write_text("")
    done = _cli(recording, "runs", "retry", str(run_id))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "150"
    assert _calls(tmp_path) == [1, 2, 3, 4, 4, 5]  # steps 1-3 were not run again

    store = open_store(recording)
    try:
        run = store.read_run_sync(run_id)
        tasks = store.children_sync(run_id)
    finally:
        store.close()
    assert run.state_name == "Completed" and run.run_count == 2
    assert [(s.type.value, s.name) for s in run.states] == [
        ("PENDING", "Pending"),
        ("RUNNING", "Running"),
        ("FAILED", "Failed"),
        ("SCHEDULED", "AwaitingRetry"),
        ("RUNNING", "Running"),
        ("COMPLETED", "Completed"),
    ]
    assert [t.state_name for t in tasks] == [
        *["Completed"] * 3, "Failed", *["Restored"] * 3, "Completed", "Completed",
    ]  # fmt: skip
    # this process exiting (its writer closing its runs) leaves the retried run alone
    writer.stop()
    assert _history(recording, run_id)[-1] == ("COMPLETED", "Completed")
    done = _cli(recording, "runs", "retry", str(run_id))
    assert done.returncode == 2
    assert "is Completed: only a Failed, Crashed or Cancelled flow run can be retried" in (
        done.stderr
    )


def test_a_run_killed_in_a_task_is_retried_from_that_task(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "five.py").write_text(FIVE)
    (tmp_path / "hang-3").write_text("")
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "five.py")], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "in-3").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.5)  # the writer's passes are 50 ms apart: steps 1-2 are in the store
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = open_store(store_url)  # (opening marks the dead process's runs Crashed)
    try:
        (run,) = store.list_runs_sync(spec_name="five")
    finally:
        store.close()
    assert run.state_name == "Crashed"
    (tmp_path / "go").write_text("")
    done = _cli(store_url, "runs", "retry", str(run.id))
    assert done.returncode == 0, done.stderr
    assert _calls(tmp_path) == [1, 2, 3, 3, 4, 5]  # 1-2 restored, 3 run again
    history = _history(store_url, run.id)
    assert [name for _, name in history] == [
        "Pending", "Running", "Crashed", "AwaitingRetry", "Running", "Completed",
    ]  # fmt: skip


def test_flow_retry_in_process_async_and_its_errors(
    recording: str, tmp_path: Path, anyio_backend: str
) -> None:
    import anyio

    calls: list[str] = []
    fail = {"b": True}

    @task(persist_result=True, cache_policy=NO_CACHE, result_storage=tmp_path)
    async def part(name: str) -> str:
        calls.append(name)
        if fail.get(name):
            raise ValueError(f"{name} failed")
        return name.upper()

    @flow
    async def parts() -> str:
        return await part("a") + await part("b")

    @flow
    def other() -> None:
        pass

    async def main() -> None:
        state = await parts(return_state=True)
        assert state.is_failed() and calls == ["a", "b"]
        run_id = state.state_details.flow_run_id
        with pytest.raises(ValueError, match="is a run of flow 'parts', not of 'other'"):
            other.retry(run_id)
        fail["b"] = False
        assert await parts.retry(run_id) == "AB"
        assert calls == ["a", "b", "b"]  # (NO_CACHE: restored, not a cache hit)
        with pytest.raises(ValueError, match="is Completed"):
            await parts.retry(run_id)
        with pytest.raises(KeyError, match="No run with id"):
            await parts.retry("0123456789abcdef0123456789abcdef")

    anyio.run(main, backend=anyio_backend)


def test_retry_refuses_task_runs_nested_runs_and_memory_stores(
    recording: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @task
    def boom() -> None:
        raise RuntimeError("boom")

    @flow
    def child() -> None:
        boom()

    @flow
    def parent() -> None:
        child()

    @flow
    def outer(run_id: str) -> None:
        parent.retry(run_id)

    state = parent(return_state=True)
    writer.flush()
    store = open_store(recording)
    try:
        (nested,) = store.list_runs_sync(spec_name="child")
        (task_run,) = store.list_runs_sync(kind="task", spec_name="boom")
    finally:
        store.close()
    with pytest.raises(ValueError, match="is a nested flow run: retry its parent flow run"):
        child.retry(nested.id)
    with pytest.raises(ValueError, match="is a task run"):
        parent.retry(task_run.id)
    inner = outer(str(state.state_details.flow_run_id), return_state=True)
    with pytest.raises(RuntimeError, match="call it outside any flow run"):
        inner.result()
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    reload_settings()
    with pytest.raises(StoreError, match="ASYNCFLOW_STORE is 'memory'"):
        parent.retry(state.state_details.flow_run_id)


def test_a_retried_attempt_restores_persisted_tasks_and_nested_flows(tmp_path: Path) -> None:
    calls: list[str] = []
    failing = {"sub-b": 1, "top": 1}

    @task(persist_result=True, cache_policy=NO_CACHE, result_storage=tmp_path)
    def work(name: str) -> str:
        calls.append(name)
        if failing.get(name, 0) > 0:
            failing[name] -= 1
            raise RuntimeError(f"{name} failed")
        return name

    @flow(persist_result=True, result_storage=tmp_path)
    def sub(which: str) -> str:
        return work(f"sub-{which}") + work(f"sub-{which}-2")

    @flow(retries=1)
    def top() -> list[str]:
        first = sub("a")  # completes: restored whole on the retry
        try:
            second = sub("b")  # fails: runs again, its first task restored
        except RuntimeError:
            second = "-"
        work("top")  # fails the first attempt
        return [first, second]

    state = top(return_state=True)
    assert state.is_completed() and state.result() == ["sub-asub-a-2", "sub-bsub-b-2"]
    assert calls == ["sub-a", "sub-a-2", "sub-b", "top", "sub-b", "sub-b-2", "top"]


def test_changed_inputs_run_again(tmp_path: Path) -> None:
    calls: list[int] = []
    attempt = {"n": 0}

    @task(persist_result=True, result_storage=tmp_path)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @flow(retries=1)
    def varying() -> int:
        attempt["n"] += 1
        total = double(1) + double(attempt["n"] * 10)  # the second call's input changes
        if attempt["n"] == 1:
            raise RuntimeError("first attempt")
        return total

    assert varying() == 42
    assert calls == [1, 10, 20]


def test_a_restored_result_that_is_gone_runs_again(
    recording: str, tmp_path: Path, logs: Any
) -> None:
    @task(persist_result=True, result_storage=tmp_path / "r", cache_policy=NO_CACHE)
    def one() -> int:
        calls.append(1)
        return 1

    calls: list[int] = []
    broken = {"yes": True}

    @flow
    def flaky() -> int:
        value = one()
        if broken["yes"]:
            raise RuntimeError("broken")
        return value

    run_id = flaky(return_state=True).state_details.flow_run_id
    for path in (tmp_path / "r").iterdir():
        path.unlink()  # the result is deleted behind the store's back
    broken["yes"] = False
    assert flaky.retry(run_id) == 1
    assert calls == [1, 1]
    assert any("Not restored, runs again" in m for m in logs.messages)


def test_generator_flows_cannot_be_retried(recording: str) -> None:
    @flow
    def gen() -> Any:
        yield 1
        raise RuntimeError("no")

    with pytest.raises(TypeError, match="is a generator flow"):
        gen.retry("0123456789abcdef0123456789abcdef")


def test_a_killed_retry_is_crashed_and_can_be_retried_again(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "five.py").write_text(FIVE)
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    subprocess.run([sys.executable, str(tmp_path / "five.py")], env=env, check=True, timeout=60)
    store = open_store(store_url)
    try:
        (run,) = store.list_runs_sync(spec_name="five")
    finally:
        store.close()
    (tmp_path / "hang-4").write_text("")  # the retry hangs in step 4 (1-3 are restored)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from asyncflow.cli._run import load_file
        module = load_file({str(tmp_path / "five.py")!r})
        module.five.retry({str(run.id)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "in-4").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _history(store_url, run.id)[-1] == ("CRASHED", "Crashed")
    (tmp_path / "go").write_text("")
    done = _cli(store_url, "runs", "retry", str(run.id))
    assert done.returncode == 0, done.stderr
    store = open_store(store_url)
    try:
        final = store.read_run_sync(run.id)
    finally:
        store.close()
    assert final.state_name == "Completed" and final.run_count == 3
    assert _calls(tmp_path) == [1, 2, 3, 4, 4, 4, 5]
    assert [s.name for s in final.states] == [
        "Pending", "Running", "Failed", "AwaitingRetry", "Running", "Crashed",
        "AwaitingRetry", "Running", "Completed",
    ]  # fmt: skip


def test_a_retry_that_cannot_start_leaves_the_run_as_it_was(recording: str) -> None:
    from asyncflow.exceptions import ParameterBindError

    @flow
    def strict(x: int) -> int:
        if x < 5:
            raise ValueError("too small")
        return x

    run_id = strict(1, return_state=True).state_details.flow_run_id

    @flow(name="strict")
    def renamed(y: int) -> int:  # the flow's code changed: its parameter is now `y`
        return y

    with pytest.raises(ParameterBindError):
        renamed.retry(run_id)
    assert _history(recording, run_id)[-1] == ("FAILED", "Failed")  # not AwaitingRetry

    class Stop(Exception):
        pass

    import asyncflow.engine.entry as entry

    original = entry.open_run

    def broken(*args: Any) -> Any:
        raise Stop("before the run is registered")

    entry.open_run = broken
    try:
        with pytest.raises(Stop):
            strict.retry(run_id)
    finally:
        entry.open_run = original
    assert _history(recording, run_id)[-1] == ("FAILED", "Failed")
    assert strict.retry(run_id, return_state=True).is_failed()  # x is still 1
    assert [n for _, n in _history(recording, run_id)] == [
        "Pending", "Running", "Failed", "AwaitingRetry", "Running", "Failed",
    ]  # fmt: skip


def test_parameters_not_stored_as_they_were_are_refused(recording: str) -> None:
    class Config:
        def __init__(self, n: int) -> None:
            self.n = n

    @flow
    def configured(cfg: Any) -> int:
        raise RuntimeError(str(cfg.n))

    run_id = configured(Config(3), return_state=True).state_details.flow_run_id
    with pytest.raises(ValueError, match="parameter\\(s\\) 'cfg' were not stored as they were"):
        configured.retry(run_id)
    assert _history(recording, run_id)[-1] == ("FAILED", "Failed")


def test_the_run_id_names_the_retried_attempt(recording: str, tmp_path: Path) -> None:
    from asyncflow import runtime
    from asyncflow.engine.context import flow_run_var
    from asyncflow.registry import locate

    seen: list[Any] = []
    fail = {"yes": True}

    @task(persist_result=True, result_storage=tmp_path, cache_expiration=None)
    def value() -> int:
        return 7

    @flow
    def located() -> int:
        engine = flow_run_var.get()
        assert engine is not None
        found = locate(runtime.flow_run.id)
        seen.append((runtime.flow_run.id, found is not None and found[1] == engine.row))
        result = value()
        if fail["yes"]:
            raise RuntimeError("once")
        return result

    run_id = located(return_state=True).state_details.flow_run_id
    fail["yes"] = False
    assert located.retry(run_id) == 7
    assert seen == [(run_id, True), (run_id, True)]


def test_restored_results_keep_their_expiry(recording: str, tmp_path: Path) -> None:
    import datetime

    @task(
        persist_result=True,
        result_storage=tmp_path,
        cache_policy=NO_CACHE,
        cache_expiration=datetime.timedelta(hours=1),
    )
    def kept() -> int:
        return 1

    fail = {"yes": True}

    @flow
    def expiring() -> int:
        out = kept()
        if fail["yes"]:
            raise RuntimeError("once")
        return out

    run_id = expiring(return_state=True).state_details.flow_run_id
    fail["yes"] = False
    assert expiring.retry(run_id) == 1
    writer.flush()
    store = open_store(recording)
    try:
        rows = store.list_results_sync(task="kept")
    finally:
        store.close()
    assert len(rows) == 2 and rows[0].expires == rows[1].expires is not None
    assert rows[0].created == rows[1].created


def test_runs_retry_imports_a_flow_of_a_package(recording: str, tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("OK = 'ok'\n")
    (package / "flows.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from .helpers import OK
            from asyncflow import flow

            @flow
            def packaged() -> str:
                if not (Path(__file__).parent / "go").exists():
                    raise RuntimeError("not yet")
                return OK
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "CRITICAL"}
    code = "from mypkg.flows import packaged\npackaged(return_state=True)\n"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=60)
    store = open_store(recording)
    try:
        (run,) = store.list_runs_sync(spec_name="packaged")
    finally:
        store.close()
    assert run.entrypoint == f"{package / 'flows.py'}:packaged"
    (package / "go").write_text("")
    done = _cli(recording, "runs", "retry", str(run.id))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_runs_retry_of_an_async_flow(recording: str, tmp_path: Path, backend: str) -> None:
    (tmp_path / "aflow.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from asyncflow import flow, task

            HERE = Path(__file__).parent

            @task(persist_result=True)
            async def part(i: int) -> int:
                with open(HERE / "calls.txt", "a") as f:
                    f.write(f"{i}\\n")
                if i == 2 and not (HERE / "go").exists():
                    raise RuntimeError("not yet")
                return i

            @flow
            async def aflow() -> int:
                return await part(1) + await part(2)
            """
        )
    )
    done = _cli(recording, "run", str(tmp_path / "aflow.py"), "--backend", backend)
    assert done.returncode == 1
    store = open_store(recording)
    try:
        (run,) = store.list_runs_sync(spec_name="aflow")
    finally:
        store.close()
    (tmp_path / "go").write_text("")
    done = _cli(recording, "runs", "retry", str(run.id), "--backend", backend)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3" and _calls(tmp_path) == [1, 2, 2]


def test_a_restart_that_fails_while_it_prepares_is_undone(
    recording: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncflow.results.restore as restore

    @task(persist_result=True, result_storage=tmp_path)
    def one() -> int:
        return 1

    @flow
    def prepared() -> int:
        one()
        raise RuntimeError("fails")

    run_id = prepared(return_state=True).state_details.flow_run_id

    def unopenable(run: Any) -> Any:
        raise ImportError("Install s3fs to read this storage")

    monkeypatch.setattr(restore, "store_record", unopenable)
    with pytest.raises(ImportError, match="Install s3fs"):
        prepared.retry(run_id)
    assert _history(recording, run_id)[-1] == ("FAILED", "Failed")
    monkeypatch.undo()
    assert prepared.retry(run_id, return_state=True).is_failed()  # it can be retried
