"""`run_deployment`, cancellation across processes and a serving process's shutdown
(issue 15): a real serving process, a real SQLite file and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pydantic
import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow import cancel_run, flow, task
from asyncflow.deployments import FlowRun, arun_deployment, run_deployment
from asyncflow.deployments.parameters import check_parameters
from asyncflow.exceptions import (
    FailedRun,
    MissingResult,
    ObjectNotFound,
    ParameterBindError,
    ParameterTypeError,
    StoreError,
    UnfinishedRun,
)
from asyncflow.states import StateType
from asyncflow.store import open_store, writer

__all__ = ["recording", "server_url", "store_url"]
ROOT = Path(__file__).resolve().parent.parent

SERVED = """
import sys, time
from pathlib import Path
from asyncflow import flow, task, serve

@task
def step(i: int) -> int:
    time.sleep(0.02)
    return i

@flow(persist_result=True)
def double(n: int = 1) -> int:
    return 2 * n

@flow
def plain(n: int = 1) -> int:
    return n

@flow
def broken() -> None:
    raise ValueError("no luck")

@flow
def inner(steps: int) -> None:
    for i in range(steps):
        step(i)

@flow
def long(seconds: float = 60.0) -> None:
    (Path(sys.argv[2]) / "started").write_text("")
    inner(int(seconds * 40))

serve(
    double.to_deployment("api"), plain.to_deployment("plain"), broken.to_deployment("b"),
    long.to_deployment("long"), limit=8, grace_period=float(sys.argv[1]),
    pause_on_shutdown=sys.argv[3] == "pause",
)
"""


def _start(store_url: str, tmp_path: Path, grace: float = 8.0, pause: bool = False) -> Any:
    script = tmp_path / "served.py"
    script.write_text(SERVED)
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    args = [str(grace), str(tmp_path), "pause" if pause else "-"]
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while True:  # registered: run_deployment finds the deployments
        assert proc.poll() is None and time.monotonic() < deadline
        store = open_store(store_url)
        try:
            if len(store.list_deployments()) == 4:  # type: ignore[attr-defined]
                return proc
        finally:
            store.close()
        time.sleep(0.1)


@pytest.fixture
def served(recording: str, tmp_path: Path) -> Iterator[Any]:
    """A process serving the deployments of SERVED; this process records to the same store."""
    proc = _start(recording, tmp_path)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _read(url: str, run_id: Any) -> Any:
    writer.flush()
    store = open_store(url)
    try:
        return store.read_run_sync(run_id)
    finally:
        store.close()


def _wait_for(url: str, run_id: Any, *types: StateType, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        run = _read(url, run_id)
        if run.state_type in types or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def test_run_deployment_returns_the_persisted_result_of_the_served_run(
    served: Any, recording: str
) -> None:
    run = run_deployment("double/api", parameters={"n": 21})
    assert isinstance(run, FlowRun) and run.state.is_completed()
    assert run.result() == 42 and run.parameters == {"n": 21}
    assert run.deployment == "double/api" and run.flow_name == "double"
    assert run.start_time is not None and run.expected_start_time is not None
    assert run.start_time >= run.expected_start_time  # never before its time
    # a child that persisted nothing: MissingResult names what would have
    plain = run_deployment("plain/plain", parameters={"n": 3})
    assert plain.state.is_completed()
    with pytest.raises(MissingResult, match="persist_result"):
        plain.result()
    failed = run_deployment("broken/b")
    assert failed.state.type is StateType.FAILED
    with pytest.raises(FailedRun, match="no luck"):
        failed.result()
    assert isinstance(failed.result(raise_on_failure=False), FailedRun)


def test_timeout_zero_returns_a_scheduled_run_at_once_and_wait_follows_it(
    served: Any, recording: str
) -> None:
    run = run_deployment("double/api", parameters={"n": 2}, timeout=0)
    assert run.state.type is StateType.SCHEDULED and run.state.name == "Scheduled"
    with pytest.raises(UnfinishedRun, match="wait"):
        run.result()
    assert run.wait(timeout=30) is run
    assert run.state.is_completed() and run.result() == 4


def test_bad_calls_raise_clear_errors_and_queue_nothing(
    recording: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow
    def typed(n: int, label: str = "x") -> None:
        pass

    typed.to_deployment("d").apply()
    with pytest.raises(ParameterTypeError, match="parameter 'n': 'x' is not of type integer"):
        run_deployment("typed/d", parameters={"n": "x"})
    with pytest.raises(ParameterBindError, match=r"has no parameter.*'m'"):
        run_deployment("typed/d", parameters={"n": 1, "m": 2})
    with pytest.raises(ParameterBindError, match=r"needs the parameter.*'n'"):
        run_deployment("typed/d")
    with pytest.raises(ObjectNotFound, match=r"'typed/nope'.*known: 'typed/d'"):
        run_deployment("typed/nope")
    with pytest.raises(ValueError, match="flow name/deployment name"):
        run_deployment("typed")
    with pytest.raises(ValueError, match="timeout"):
        run_deployment("typed/d", parameters={"n": 1}, timeout=-1)
    with pytest.raises(ValueError, match="idempotency_key"):
        run_deployment("typed/d", parameters={"n": 1}, idempotency_key="")
    with pytest.raises(TypeError, match="parameters must be a dict"):
        run_deployment("typed/d", parameters=[1])  # type: ignore[arg-type]
    store = open_store(recording)
    try:
        assert [r for r in store.list_runs_sync() if r.deployment == "typed/d"] == []
    finally:
        store.close()
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    from asyncflow.settings import reload_settings

    reload_settings()
    with pytest.raises(StoreError, match="needs a run store"):
        run_deployment("typed/d", parameters={"n": 1})


def test_an_idempotency_key_gives_back_the_first_run(recording: str) -> None:
    @flow
    def once(n: int = 0) -> None:
        pass

    once.to_deployment("d").apply()
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    first = run_deployment("once/d", {"n": 1}, scheduled_time=when, timeout=0,
                           idempotency_key="k", flow_run_name="first")  # fmt: skip
    again = run_deployment("once/d", {"n": 2}, timeout=0, idempotency_key="k")
    other = run_deployment("once/d", {"n": 3}, timeout=0, idempotency_key="k2")
    assert again.id == first.id and again.parameters == {"n": 1} and again.name == "first"
    assert other.id != first.id
    assert first.expected_start_time is not None
    assert abs((first.expected_start_time - when).total_seconds()) < 1e-3


def test_a_scheduled_run_cancelled_before_it_starts_never_starts(
    recording: str, tmp_path: Path
) -> None:
    from asyncflow.store.base import TERMINAL

    @flow
    def later() -> None:
        pass

    later.to_deployment("d").apply()
    run = run_deployment("later/d", timeout=0)
    assert cancel_run(run.id) is True
    stored = _read(recording, run.id)
    assert stored.state_type is StateType.CANCELLED and "before it started" in (
        stored.state_message or ""
    )
    assert cancel_run(run.id) is False  # already final
    assert stored.state_type in TERMINAL and stored.start_time is None


def test_cancel_from_another_process_ends_the_run_and_its_subtree_cancelled(
    served: Any, recording: str, tmp_path: Path
) -> None:
    run = run_deployment("long/long", timeout=0)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # (its nested flow and task runs are going)
    assert cancel_run(run.id) is True
    stored = _wait_for(recording, run.id, StateType.CANCELLED, StateType.COMPLETED)
    assert stored.state_type is StateType.CANCELLED
    store = open_store(recording)
    try:
        children = store.children_sync(run.id)  # type: ignore[attr-defined]
        nested = [c for c in children if c.kind == "flow"]
        assert nested and all(c.state_type is StateType.CANCELLED for c in nested)
        assert all(c.parent_flow_run_id == run.id for c in children)
        tasks = store.children_sync(nested[0].id)  # type: ignore[attr-defined]
        assert tasks and all(t.is_final for t in tasks)
        assert tasks[-1].state_type is StateType.CANCELLED
    finally:
        store.close()


def test_run_deployment_in_a_flow_links_the_child_to_the_parent(
    served: Any, recording: str
) -> None:
    @flow
    def parent() -> Any:
        return run_deployment("double/api", parameters={"n": 5})

    child = parent()
    assert child.state.is_completed() and child.result() == 10
    writer.flush()
    stored = _read(recording, child.id)
    parents = open_store(recording)
    try:
        top = next(r for r in parents.list_runs_sync() if r.spec_name == "parent")
        stand_in = parents.read_run_sync(stored.parent_task_run_id)
    finally:
        parents.close()
    assert stored.parent_flow_run_id == top.id
    assert stand_in.name == "double/api-0" and stand_in.child_flow_run_id == child.id
    assert stand_in.state_type is StateType.COMPLETED


@pytest.mark.anyio
async def test_await_run_deployment_in_an_async_flow(served: Any, recording: str) -> None:
    @flow
    async def parent() -> int:
        run = await run_deployment("double/api", parameters={"n": 4})
        assert (await run.wait()) is run
        return int(await run.result())

    assert await parent() == 8
    run = await arun_deployment("double/api", timeout=0, as_subflow=False)
    await run.await_final(timeout=30)
    assert run.state.is_completed()


@pytest.mark.anyio
async def test_plain_run_deployment_in_an_event_loop_is_refused(recording: str) -> None:
    @flow
    def target() -> None:
        pass

    target.to_deployment("d").apply()
    with pytest.raises(RuntimeError, match="await run_deployment"):
        run_deployment("target/d")
    run = run_deployment("target/d", timeout=0)  # (only a store write: allowed)
    assert run.state.type is StateType.SCHEDULED


@pytest.mark.anyio
async def test_a_server_in_this_process_runs_a_run_queued_here(recording: str) -> None:
    from asyncflow.deployments.serve import aserve

    @task
    def add_one(n: int) -> int:
        return n + 1

    @flow(persist_result=True)
    async def local(n: int = 0) -> int:
        return add_one(n)

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: aserve(local.to_deployment("here")))
        with anyio.fail_after(30):
            while True:  # (registered)
                try:
                    run = await arun_deployment("local/here", {"n": 1}, as_subflow=False)
                    break
                except ObjectNotFound:
                    await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    assert run.state.is_completed() and await run.result() == 2
    tasks = open_store(recording)
    try:  # the served run's task run links to it (the run has another session's key)
        children = tasks.children_sync(run.id)  # type: ignore[attr-defined]
    finally:
        tasks.close()
    assert [c.parent_flow_run_id for c in children] == [run.id]


def test_a_cancelled_caller_cancels_the_child_it_waits_for(
    served: Any, recording: str, tmp_path: Path
) -> None:
    @flow(timeout_seconds=1.5)
    def impatient() -> None:
        run_deployment("long/long", parameters={"seconds": 60})

    state = impatient(return_state=True)
    assert state.type is StateType.FAILED  # (its timeout)
    writer.flush()
    store = open_store(recording)
    try:
        long_run = next(r for r in store.list_runs_sync() if r.deployment == "long/long")
    finally:
        store.close()
    stored = _wait_for(recording, long_run.id, StateType.CANCELLED, StateType.COMPLETED)
    assert stored.state_type is StateType.CANCELLED


@pytest.mark.parametrize("pause", [False, True])
def test_sigterm_lets_short_runs_finish_and_cancels_long_ones(
    recording: str, tmp_path: Path, pause: bool
) -> None:
    proc = _start(recording, tmp_path, grace=1.0, pause=pause)
    try:
        long_run = run_deployment("long/long", timeout=0)
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        late = run_deployment("plain/plain", timeout=0)  # (queued while it stops)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = _read(recording, long_run.id)
    assert stored.state_type is StateType.CANCELLED  # recorded, not Crashed
    assert _read(recording, late.id).state_type in (StateType.SCHEDULED, StateType.COMPLETED)
    store = open_store(recording)
    try:
        paused = {d["name"]: d["paused"] for d in store.list_deployments()}  # type: ignore[attr-defined]
    finally:
        store.close()
    assert bool(paused["long/long"]) == pause


class Color(enum.Enum):
    RED = "red"


class Point(pydantic.BaseModel):
    x: int


@flow
def shapes(
    n: int,
    ratio: float = 1.0,
    items: list[int] | None = None,
    color: Color = Color.RED,
    point: Point | None = None,
    pair: tuple[int, str] = (1, "a"),
    bounded: Annotated[int, pydantic.Field(ge=0, lt=10)] = 0,
) -> None:
    pass


def test_the_parameter_check_follows_the_schema_pydantic_writes() -> None:
    schema = json.loads(shapes.to_deployment().to_row()["parameter_schema"])
    ok = {"n": 1, "ratio": 2, "items": [1, 2], "color": "red", "point": {"x": 1},
          "pair": [2, "b"], "bounded": 9}  # fmt: skip
    check_parameters(schema, ok, "d")
    check_parameters(schema, {"n": 1.0, "items": None, "point": None}, "d")
    for bad, words in [
        ({"n": True}, "not of type integer"),
        ({"n": 1, "items": [1, "x"]}, "matches none"),
        ({"n": 1, "color": "blue"}, "not one of 'red'"),
        ({"n": 1, "point": {"y": 1}}, "matches none"),
        ({"n": 1, "pair": [1, 2]}, "not of type string"),
        ({"n": 1, "pair": [1, "a", 3]}, "more than 2 items"),
        ({"n": 1, "bounded": 10}, "not less than 10"),
        ({"n": 1, "bounded": -1}, "less than 0"),
    ]:
        with pytest.raises(ParameterTypeError, match=words):
            check_parameters(schema, bad, "d")


CLI_FLOWS = """
import time
from asyncflow import flow

@flow(persist_result=True)
def greet(name: str = "world", times: int = 1) -> str:
    return " ".join([f"hello {name}"] * times)

@flow
def steps(n: int = 1000) -> None:
    for _ in range(n):
        time.sleep(0.01)
"""


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from asyncflow.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_serves_a_file_runs_its_deployment_and_cancels_a_run(
    recording: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flows.py").write_text(CLI_FLOWS)
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "asyncflow.cli", "serve"]
    procs = [
        subprocess.Popen(
            [*command, f"{tmp_path / 'flows.py'}:{name}", "--name", "cli", *extra],
            env=env, cwd=ROOT,
        )
        for name, extra in (("greet", ["--param", "name=bob", "--cron", "0 0 1 1 *"]),
                            ("steps", ["--grace-period", "0"]))
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            code, out, _ = _cli(capsys, "deployments", "ls", "--json")
            if code == 0 and len(json.loads(out)) == 2:
                break
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        code, out, _ = _cli(capsys, "deployments", "inspect", "greet/cli", "--json")
        info = json.loads(out)
        assert info["parameters"] == {"name": "bob"} and len(info["next_slots"]) == 3
        # a number-looking value of a str parameter stays a string; an int one is read as JSON
        code, out, _ = _cli(capsys, "deployments", "run", "greet/cli", "--param", "name=5",
                            "--param", "times=2", "--wait", "--json")  # fmt: skip
        run = json.loads(out)
        assert code == 0 and run["state_type"] == "COMPLETED" and run["parameters"] == {
            "name": "5", "times": 2,
        }  # fmt: skip
        code, out, _ = _cli(capsys, "runs", "result", run["id"])
        assert out.strip() == "hello 5 hello 5"
        code, _, err = _cli(capsys, "deployments", "run", "greet/cli", "--param", "times=x")
        assert code == 2 and "parameter 'times': 'x' is not of type integer" in err
        code, _, err = _cli(capsys, "deployments", "run", "greet/none")
        assert code == 2 and "No deployment 'greet/none'" in err
        # cancel a run another process runs
        code, out, _ = _cli(capsys, "deployments", "run", "steps/cli", "--json")
        steps = json.loads(out)
        assert steps["state_type"] == "SCHEDULED"
        _wait_for(recording, steps["id"], StateType.RUNNING)
        code, out, err = _cli(capsys, "runs", "cancel", steps["id"])
        assert code == 0 and "Cancel requested" in out, err
        stored = _wait_for(recording, steps["id"], StateType.CANCELLED, StateType.COMPLETED)
        assert stored.state_type is StateType.CANCELLED
        code, out, _ = _cli(capsys, "runs", "cancel", steps["id"], "--json")
        assert code == 1 and json.loads(out)["outcome"] == "final"
        code, _, err = _cli(capsys, "runs", "cancel", "ffffffff")
        assert code == 2 and "ffffffff" in err
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            assert proc.wait(30) == 0


def test_the_cli_serve_command_refuses_bad_options(
    recording: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flows.py").write_text(CLI_FLOWS)
    target = f"{tmp_path / 'flows.py'}:greet"
    code, _, err = _cli(capsys, "serve", target, "--cron", "not a cron")
    assert code == 2 and "cron" in err.lower()
    code, _, err = _cli(capsys, "serve", target, "--param", "times=x")
    assert code == 2 and "times" in err
    code, _, err = _cli(capsys, "serve", f"{tmp_path / 'flows.py'}:nope")
    assert code == 2 and "no flow 'nope'" in err
    code, _, err = _cli(capsys, "serve", target, "--limit", "0")
    assert code == 2 and "limit" in err


ISOLATED = """
import os, sys, time
from pathlib import Path
from asyncflow import flow, serve

@flow(persist_result=True)
def pid_of() -> int:
    return os.getpid()

@flow
def stuck(seconds: float = 60.0) -> None:
    (Path(os.environ["MARKS"]) / f"stuck-{os.getpid()}").write_text("")
    time.sleep(seconds)  # one long C call: only a process's main thread can be stopped in it

if __name__ == "__main__":
    serve(pid_of.to_deployment("iso"), stuck.to_deployment("iso"), isolation="process",
          grace_period=0)
"""

UNGUARDED = """
from asyncflow import flow, serve

@flow
def loose() -> int:
    return 1

serve(loose.to_deployment("iso"), isolation="process")
"""


def _serve_script(store: str, tmp_path: Path, text: str, count: int) -> Any:
    script = tmp_path / "isolated_flows.py"
    script.write_text(text)
    env = {**os.environ, "ASYNCFLOW_STORE": store, "ASYNCFLOW_LOGGING_LEVEL": "WARNING",
           "MARKS": str(tmp_path)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while len(_listed(store)) < count:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    return proc


def _listed(store: str) -> list[Any]:
    opened = open_store(store)
    try:
        return opened.list_deployments()  # type: ignore[attr-defined,no-any-return]
    finally:
        opened.close()


def test_isolated_runs_run_in_processes_of_their_own(recording: str, tmp_path: Path) -> None:
    proc = _serve_script(recording, tmp_path, ISOLATED, 2)
    try:
        runs = [run_deployment("pid-of/iso", timeout=0) for _ in range(2)]
        pids = {run.wait(timeout=60).result() for run in runs}
        assert len(pids) == 2 and proc.pid not in pids
        # a sync flow blocked in time.sleep is stopped by a cancel (it is in a main thread)
        stuck = run_deployment("stuck/iso", timeout=0)
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("stuck-*")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cancel_run(stuck.id) is True
        assert stuck.wait(timeout=20).state.type is StateType.CANCELLED
        # a run's process killed: the run ends Crashed and the server goes on serving
        killed = run_deployment("stuck/iso", timeout=0)
        while len(list(tmp_path.glob("stuck-*"))) < 2:
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        child = max(tmp_path.glob("stuck-*"), key=lambda p: p.stat().st_mtime)
        os.kill(int(child.name.split("-")[1]), signal.SIGKILL)
        assert killed.wait(timeout=20).state.type is StateType.CRASHED
        assert run_deployment("pid-of/iso", timeout=60).state.is_completed()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_an_unguarded_serve_call_is_not_run_again_by_a_runs_process(
    recording: str, tmp_path: Path
) -> None:
    proc = _serve_script(recording, tmp_path, UNGUARDED, 1)
    try:
        run = run_deployment("loose/iso", timeout=60)
        assert run.state.type is StateType.FAILED
        assert "if __name__ == '__main__'" in (run.state.message or "")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_isolation_needs_an_entrypoint() -> None:
    from asyncflow.deployments.serve import serve

    def make() -> Any:
        @flow
        def local() -> None:
            pass

        return local

    with pytest.raises(ValueError, match="have none"):
        serve(make().to_deployment("x"), isolation="process")
    with pytest.raises(ValueError, match="isolation must be"):
        serve(make().to_deployment("x"), isolation="thread")  # type: ignore[arg-type]


def test_queued_runs_are_announced_on_postgresql_and_polled_on_sqlite(recording: str) -> None:
    @flow
    def announced() -> None:
        pass

    announced.to_deployment("d").apply()
    store: Any = open_store(recording)
    listener = store.queue_listener()
    try:
        if recording.startswith("sqlite"):
            assert listener is None  # (servers poll the file)
            return
        assert listener.wait(0.05) == []  # (connects and listens)
        run_deployment("announced/d", timeout=0)
        assert listener.wait(10) == ["announced/d"]
    finally:
        if listener is not None:
            listener.close()
        store.close()


@flow(retries=1, retry_delay_seconds=30)
def waits_to_retry() -> None:
    raise ValueError("first attempt fails")


@flow
def queued_child() -> int:
    return 7


def _ask(url: str, run_id: Any) -> str:
    """A cancel request as another process makes it (this one is not the run's owner)."""
    store: Any = open_store(url)
    try:
        return str(store.request_cancel(run_id)[0])
    finally:
        store.close()


def _requests(url: str) -> int:
    store: Any = open_store(url)
    try:
        return int(
            store._query(lambda c: c.execute("SELECT count(*) FROM cancel_requests").fetchone()[0])
        )
    finally:
        store.close()


def test_a_run_waiting_to_retry_gets_a_request_and_ends_cancelled(recording: str) -> None:
    import threading

    states: list[Any] = []
    thread = threading.Thread(target=lambda: states.append(waits_to_retry(return_state=True)))
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        writer.flush()
        store: Any = open_store(recording)
        try:
            runs = [r for r in store.list_runs_sync() if r.spec_name == "waits-to-retry"]
        finally:
            store.close()
        if runs and runs[0].state_name == "AwaitingRetry":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # (AwaitingRetry is of type SCHEDULED, but not a queued deployment run: a request)
    assert _ask(recording, runs[0].id) == "requested"
    thread.join(20)
    assert not thread.is_alive() and states[0].type is StateType.CANCELLED
    writer.flush()
    store = open_store(recording)
    try:
        store.cancel_requests("anyone")  # type: ignore[attr-defined]  # (any process drops it)
    finally:
        store.close()
    assert _requests(recording) == 0


def test_a_task_run_is_not_cancelled_from_another_process(recording: str) -> None:
    @task
    def quick() -> int:
        return 1

    @flow
    def holder() -> Any:
        return quick(return_state=True)

    state = holder(return_state=True)
    writer.flush()
    task_state = state.result()
    task_id = task_state.state_details.task_run_id
    assert _ask(recording, task_id) == "final"
    code = textwrap.dedent(
        """
        import sys, time
        from asyncflow import flow, task
        from pathlib import Path

        @task
        def slow() -> None:
            Path(sys.argv[1]).write_text("")
            time.sleep(30)

        @flow
        def holding() -> None:
            slow()

        holding()
        """
    )
    marker = Path(tempfile.mkdtemp()) / "go"
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        store: Any = open_store(recording)
        try:
            running = [r for r in store.list_runs_sync(kind="task") if r.spec_name == "slow"]
        finally:
            store.close()
        assert running and cancel_run(running[0].id) is False  # (cancel its flow run)
        assert _requests(recording) == 0
    finally:
        proc.kill()
        proc.wait(10)


def test_an_idempotent_caller_that_stops_waiting_does_not_cancel_anothers_run(
    recording: str,
) -> None:
    queued_child.to_deployment("later").apply()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    first = run_deployment("queued-child/later", scheduled_time=later, timeout=0,
                           idempotency_key="nightly")  # fmt: skip

    @flow(timeout_seconds=0.5)
    def impatient() -> None:
        run_deployment("queued-child/later", idempotency_key="nightly")

    assert impatient(return_state=True).type is StateType.FAILED
    assert _read(recording, first.id).state_type is StateType.SCHEDULED  # (still queued)


def test_a_deployment_run_linked_to_its_caller_can_be_retried(recording: str) -> None:
    queued_child.to_deployment("linked").apply()

    @flow
    def caller() -> Any:
        return run_deployment("queued-child/linked", timeout=0)

    child = caller()
    assert cancel_run(child.id) is True  # (never started: Cancelled)
    stored = _read(recording, child.id)
    assert stored.parent_flow_run_id is not None and stored.state_type is StateType.CANCELLED
    assert queued_child.retry(child.id) == 7
    assert _read(recording, child.id).state_type is StateType.COMPLETED
