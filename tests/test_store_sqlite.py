"""The SQLite run store on real files, fed by the background writer of real flow runs.

The tests above the SQLite-only section take the store as a URL (`store_url`), and
tests/test_store_postgres.py runs them again against a PostgreSQL server.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncflow import flow, task
from asyncflow.exceptions import StoreError
from asyncflow.registry import reset_registry
from asyncflow.settings import reload_settings
from asyncflow.states import Failed, StateType
from asyncflow.store import open_store, writer
from asyncflow.store import store_url as canonical_url
from asyncflow.store.base import SCHEMA_VERSION, RecordingStore, StoredRun

ROOT = Path(__file__).resolve().parent.parent


# -- fixtures and helpers (the PostgreSQL tests define their own `store_url`) --------------------
@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'runs.db'}"


@pytest.fixture
def recording(store_url: str) -> Iterator[str]:
    """Flow runs in the test record to `store_url` (through the process's writer)."""
    old = os.environ.get("ASYNCFLOW_STORE")
    os.environ["ASYNCFLOW_STORE"] = store_url
    reload_settings()
    try:
        yield store_url
    finally:
        writer.stop()
        if old is None:
            os.environ.pop("ASYNCFLOW_STORE", None)
        else:
            os.environ["ASYNCFLOW_STORE"] = old
        reload_settings()


@pytest.fixture
def store(recording: str) -> Iterator[RecordingStore]:
    """A reader's connection to the test's store (opened at first use, closed at the end)."""
    opened: list[RecordingStore] = []

    class Lazy:
        def __getattr__(self, name: str) -> Any:
            if not opened:
                opened.append(open_store(recording))
            return getattr(opened[0], name)

    yield Lazy()  # type: ignore[misc]
    for s in opened:
        s.close()


def history(run: StoredRun) -> list[tuple[str, str]]:
    return [(s.type.value, s.name) for s in run.states]


def all_runs(store: Any) -> list[StoredRun]:
    return store.list_runs_sync(kind=None, limit=1_000_000)


def top_flow(store: Any, name: str | None = None) -> StoredRun:
    runs = [
        r
        for r in store.list_runs_sync(kind="flow", limit=1000)
        if r.parent_flow_run_id is None and (name is None or r.spec_name == name)
    ]
    assert len(runs) == 1, runs
    return runs[0]


def start_script(
    code: str, url: str, tmp_path: Path, *args: str, name: str = "script"
) -> subprocess.Popen[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    env = {**os.environ, "ASYNCFLOW_STORE": url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


PLAIN = [("PENDING", "Pending"), ("RUNNING", "Running"), ("COMPLETED", "Completed")]


# -- recorded sequences --------------------------------------------------------------------------
@task
def double(x: int) -> int:
    return 2 * x


@task
def explode(x: int) -> int:
    raise ValueError(f"bad {x}")


@flow
def child_flow(y: int) -> int:
    return double(y)


@flow
def parent_flow(n: int = 2) -> int:
    total = sum(double(i) for i in range(n))
    return total + child_flow(10)


def test_completed_runs_are_recorded_with_their_states_and_links(store: Any) -> None:
    """A completed flow with tasks and a subflow: every run, state, parameter and link is in the
    store as soon as the flow call returns (a read in this process writes what is pending)."""
    assert parent_flow(3) == 2 * (0 + 1 + 2) + 20
    runs = all_runs(store)
    assert len(runs) == 1 + 3 + 1 + 1 + 1  # flow, 3 tasks, subflow's task run, subflow, its task
    top = top_flow(store, "parent-flow")
    assert (top.state_type, top.state_name, top.run_count) == (StateType.COMPLETED, "Completed", 1)
    assert top.parameters == {"n": 3}
    assert top.start_time is not None and top.end_time is not None
    assert top.created <= top.start_time <= top.end_time
    assert history(store.read_run_sync(top.id)) == PLAIN

    kids = store.children_sync(top.id)
    assert [k.name for k in kids] == [
        "double-0",
        "double-1",
        "double-2",
        "child-flow-0",
        kids[4].name,
    ]
    assert all(k.parent_flow_run_id == top.id for k in kids)
    stand_in, sub = kids[3], kids[4]
    assert (stand_in.kind, sub.kind) == ("task", "flow")
    assert stand_in.child_flow_run_id == sub.id and sub.parent_task_run_id == stand_in.id
    assert sub.parameters == {"y": 10}
    (grandchild,) = store.children_sync(sub.id)
    assert grandchild.name == "double-0" and grandchild.parent_flow_run_id == sub.id
    for run in runs:
        assert history(store.read_run_sync(run.id)) == PLAIN
        assert run.state_type is StateType.COMPLETED and run.is_final


def test_failed_runs_keep_their_error_message(store: Any) -> None:
    """A failing task fails its flow; both end Failed with the exception in the message."""

    @flow
    def failing() -> None:
        explode(7)

    state = failing(return_state=True)
    assert state.is_failed()
    top = top_flow(store, "failing")
    assert top.state_type is StateType.FAILED and "bad 7" in (top.state_message or "")
    (child,) = store.children_sync(top.id)
    full = store.read_run_sync(child.id)
    assert history(full) == [("PENDING", "Pending"), ("RUNNING", "Running"), ("FAILED", "Failed")]
    assert full.states[-1].message == "Task run encountered an exception ValueError: bad 7"
    assert full.end_time == full.states[-1].timestamp
    failed = store.list_runs_sync(kind=None, state=StateType.FAILED)
    assert {r.id for r in failed} == {top.id, child.id}
    assert store.list_runs_sync(kind="task", state=StateType.COMPLETED) == []


def test_retried_task_records_every_attempt(store: Any) -> None:
    """Failed attempt, AwaitingRetry, Retrying, then the final state, in order; run_count 3."""
    attempts = []

    @task(retries=2, retry_delay_seconds=0)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)}")
        return "ok"

    @flow
    def retrying() -> str:
        return flaky()

    assert retrying() == "ok"
    (run,) = store.list_runs_sync(kind="task")
    full = store.read_run_sync(run.id)
    assert history(full) == [
        ("PENDING", "Pending"),
        ("RUNNING", "Running"),
        ("FAILED", "Failed"),
        ("SCHEDULED", "AwaitingRetry"),
        ("RUNNING", "Retrying"),
        ("FAILED", "Failed"),
        ("SCHEDULED", "AwaitingRetry"),
        ("RUNNING", "Retrying"),
        ("COMPLETED", "Completed"),
    ]
    assert full.run_count == 3
    assert [s.message for s in full.states][2] == (
        "Task run encountered an exception RuntimeError: attempt 1"
    )
    stamps = [s.timestamp for s in full.states]
    assert stamps == sorted(stamps)


def test_states_spread_over_several_writes_are_all_kept(store: Any) -> None:
    """A run whose states reach the store in different transactions (the writer flushes in
    the middle of it) still has its whole history, in order, and a single latest state."""

    @task(retries=1, retry_delay_seconds=0)
    def slow_flaky(i: int) -> int:
        writer.flush()  # everything so far, including this run's Running, is written now
        if i == 0 and not seen:
            seen.append(1)
            raise RuntimeError("once")
        return i

    seen: list[int] = []

    @flow
    def spread() -> list[int]:
        writer.flush()
        return [slow_flaky(i) for i in range(3)]

    assert spread() == [0, 1, 2]
    top = top_flow(store, "spread")
    assert history(store.read_run_sync(top.id)) == PLAIN
    kids = store.children_sync(top.id)
    assert history(store.read_run_sync(kids[0].id)) == [
        ("PENDING", "Pending"),
        ("RUNNING", "Running"),
        ("FAILED", "Failed"),
        ("SCHEDULED", "AwaitingRetry"),
        ("RUNNING", "Retrying"),
        ("COMPLETED", "Completed"),
    ]
    assert kids[0].run_count == 2
    for kid in kids[1:]:
        assert history(store.read_run_sync(kid.id)) == PLAIN


def test_concurrent_tasks_and_unusual_parameters(store: Any) -> None:
    """Submitted tasks (finishing in any order, across write batches) and parameters JSON cannot
    hold (an object, a set, NaN) are stored; the object and NaN as marked reprs."""

    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    @flow
    def mapped(items: Any, extra: Any = None) -> int:
        futures = double.map(range(200))
        return sum(f.result() for f in futures)

    assert mapped([1, 2], extra={"t": Thing(), "s": {3}, "nan": float("nan")}) == 2 * 199 * 200 // 2
    top = top_flow(store, "mapped")
    assert top.parameters == {
        "items": [1, 2],
        "extra": {
            "t": "<not JSON, stored as its repr: <thing>>",
            "s": [3],
            "nan": "<not JSON, stored as its repr: nan>",
        },
    }
    kids = store.children_sync(top.id)
    assert len(kids) == 200 and all(k.state_type is StateType.COMPLETED for k in kids)
    for kid in kids[::20]:
        assert history(store.read_run_sync(kid.id)) == PLAIN


@pytest.mark.anyio
async def test_async_flow_and_async_queries(store: Any) -> None:
    """An async flow on asyncio or trio records like a sync one; the async queries read it."""

    @task
    async def add(a: int, b: int) -> int:
        return a + b

    @flow
    async def adder(a: int) -> int:
        return await add(a, 1)

    assert await adder(41) == 42
    (top,) = await store.list_runs(kind="flow")
    assert top.spec_name == "adder" and top.parameters == {"a": 41}
    full = await store.read_run(str(top.id))
    assert history(full) == PLAIN
    (kid,) = await store.children(top.id)
    assert kid.name == "add-0" and history(await store.read_run(kid.id)) == PLAIN


def test_listing_filters_and_id_lookup(store: Any) -> None:
    """Filters by kind, name, state and time; newest first; ids by prefix; clear errors."""

    @flow
    def alpha() -> None:
        pass

    @flow
    def beta() -> None:
        double(1)

    before = time.time()
    for _ in range(3):
        alpha()
    beta()
    flows = store.list_runs_sync()
    assert [r.spec_name for r in flows] == ["beta", "alpha", "alpha", "alpha"]
    assert len(store.list_runs_sync(spec_name="alpha")) == 3
    assert len(store.list_runs_sync(spec_name="alpha", limit=2)) == 2
    assert [r.name for r in store.list_runs_sync(kind="task")] == ["double-0"]
    import datetime

    later = datetime.datetime.fromtimestamp(time.time() + 60, datetime.timezone.utc)
    assert store.list_runs_sync(since=later) == []
    since = datetime.datetime.fromtimestamp(before - 1, datetime.timezone.utc)
    assert len(store.list_runs_sync(since=since)) == 4

    run = flows[0]
    text = str(run.id)
    assert store.read_run_sync(text).id == run.id
    assert store.read_run_sync(text.upper().replace("-", "")).id == run.id
    with pytest.raises(KeyError, match="No run with id"):
        store.read_run_sync("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ValueError, match="ambiguous"):
        store.read_run_sync(text[:8])
    with pytest.raises(ValueError, match="not a run id"):
        store.read_run_sync("xyz")


def test_reset_registry_keeps_recording(store: Any) -> None:
    """Runs recorded before and after `reset_registry()` are all stored, with distinct ids."""

    @flow
    def once() -> None:
        double(2)

    once()
    reset_registry()
    once()
    runs = all_runs(store)
    assert len(runs) == 4 and len({r.id for r in runs}) == 4
    assert len(store.list_runs_sync(spec_name="once")) == 2


# -- processes -------------------------------------------------------------------------------------
KILL_SCRIPT = """
import time
from asyncflow import flow, task

@task
def step(i: int) -> int:
    return i

@task
def block() -> None:
    print("blocked", flush=True)
    time.sleep(600)

@flow
def doomed(n: int) -> None:
    for i in range(n):
        step(i)
    block()

doomed(5)
"""


def test_killed_process_runs_are_crashed_and_completed_states_kept(
    recording: str, tmp_path: Path
) -> None:
    """SIGKILL mid-flow: the completed task runs keep all their states; the flow run and the
    blocked task run are marked Crashed when a store is next opened, and not before."""
    proc = start_script(KILL_SCRIPT, recording, tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "blocked", proc.stderr and proc.stderr.read()

        def five_steps_written() -> bool:
            s: Any = open_store(recording)
            try:
                return len(s.list_runs_sync(kind="task", state=StateType.COMPLETED)) == 5
            finally:
                s.close()

        wait_for(five_steps_written, what="the writer to commit the completed task runs")
        s: Any = open_store(recording)  # the process is alive: nothing is crashed
        try:
            (top,) = s.list_runs_sync(kind="flow")
            assert top.state_type is StateType.RUNNING
        finally:
            s.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    s = open_store(recording)
    try:
        runs = {r.name: r for r in s.list_runs_sync(kind=None)}
        assert len(runs) == 7
        for i in range(5):
            step = s.read_run_sync(runs[f"step-{i}"].id)
            assert history(step) == PLAIN
        blocked = s.read_run_sync(runs["block-0"].id)
        assert history(blocked) == [
            ("PENDING", "Pending"),
            ("RUNNING", "Running"),
            ("CRASHED", "Crashed"),
        ]
        assert f"pid {proc.pid}" in (blocked.state_message or "")
        assert "died" in (blocked.state_message or "")
        top = next(r for r in runs.values() if r.kind == "flow")
        assert history(s.read_run_sync(top.id)) == [
            ("PENDING", "Pending"),
            ("RUNNING", "Running"),
            ("CRASHED", "Crashed"),
        ]
        assert top.end_time is not None
        assert s.mark_crashed_runs() == 0  # final: done once
    finally:
        s.close()


EXIT_SCRIPT = """
import threading, time
from asyncflow import flow, task

@task
def forever() -> None:
    time.sleep(600)

@flow
def left_behind() -> None:
    forever()

threading.Thread(target=left_behind, daemon=True).start()
time.sleep(0.5)
"""


def test_runs_left_open_at_exit_are_crashed(recording: str, tmp_path: Path) -> None:
    """A process that exits while a flow still runs in a daemon thread marks that flow run
    and its task run Crashed on its way out."""
    proc = start_script(EXIT_SCRIPT, recording, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s: Any = open_store(recording)
    try:
        runs = s.list_runs_sync(kind=None)
        assert sorted(r.spec_name for r in runs) == ["forever", "left-behind"]
        for run in runs:
            assert run.state_type is StateType.CRASHED
            assert "exited before it finished" in (run.state_message or "")
            assert history(s.read_run_sync(run.id))[-1] == ("CRASHED", "Crashed")
    finally:
        s.close()


def test_crash_rule_on_this_host() -> None:
    """A dead pid, or a live pid that started after the recorded process (reused), is dead;
    a live process that started before is alive; elsewhere only a stale heartbeat counts."""
    import socket

    from asyncflow.store.base import STALE_AFTER_SECONDS, crash_reason

    here, now = socket.gethostname(), time.time()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert "died" in (crash_reason(child.pid, here, now, now, here, now) or "")
    parent = os.getppid()
    assert crash_reason(parent, here, now, now, here, now) is None
    assert "another process" in (crash_reason(parent, here, 1.0, 1.0, here, now) or "")
    assert crash_reason(os.getpid(), here, 1.0, 1.0, here, now) is None
    assert crash_reason(1, "elsewhere", 1.0, now - 5, here, now) is None
    stale = now - STALE_AFTER_SECONDS - 1
    assert "stopped reporting" in (crash_reason(1, "elsewhere", 1.0, stale, here, now) or "")


WRITER_SCRIPT = """
import sys
from asyncflow import flow, task

failed = set()

@task(retries=1, retry_delay_seconds=0)
def work(k: int, i: int) -> int:
    if i % 10 == 0 and (k, i) not in failed:
        failed.add((k, i))
        raise RuntimeError("first attempt fails")
    return i

@flow
def batch(worker: int, k: int) -> int:
    return sum(work(k, i) for i in range(40))

for k in range(25):
    assert batch(int(sys.argv[1]), k) == sum(range(40))
print("done", flush=True)
"""


def test_two_processes_write_one_store_at_once(recording: str, tmp_path: Path) -> None:
    """Two processes, each running 25 flows of 40 tasks (some retried), record to the same
    store at the same time: both succeed, no error is logged and no state is lost."""
    procs = [
        start_script(WRITER_SCRIPT, recording, tmp_path, str(w), name="writer") for w in (1, 2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "done"
        # the tasks' own failures are logged; nothing about the store is
        assert "Run history" not in err and "locked" not in err, err
    s: Any = open_store(recording)
    try:
        flows = s.list_runs_sync(kind="flow", limit=1000)
        assert len(flows) == 50
        assert sorted(r.parameters["worker"] for r in flows) == [1] * 25 + [2] * 25
        tasks = s.list_runs_sync(kind="task", limit=100_000)
        assert len(tasks) == 50 * 40
        assert all(t.state_type is StateType.COMPLETED for t in tasks)
        retried = [t for t in tasks if t.run_count == 2]
        assert len(retried) == 50 * 4
        states = 0
        for run in flows + tasks:
            full = s.read_run_sync(run.id)
            states += len(full.states)
            expected = 6 if run.run_count == 2 else 3
            assert len(full.states) == expected, history(full)
        assert states == 50 * 3 + 50 * 36 * 3 + 50 * 4 * 6
    finally:
        s.close()


# -- settings ------------------------------------------------------------------------------------
def test_store_setting_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sqlite` is the file under ASYNCFLOW_HOME; paths and URLs name files; memory is none."""
    monkeypatch.setenv("ASYNCFLOW_HOME", str(tmp_path / "home"))
    reload_settings()
    try:
        assert canonical_url("sqlite") == f"sqlite://{(tmp_path / 'home' / 'runs.db').resolve()}"
        assert canonical_url(f"sqlite://{tmp_path}/x.db") == f"sqlite://{tmp_path.resolve()}/x.db"
        assert canonical_url(str(tmp_path / "y.db")) == f"sqlite://{tmp_path.resolve()}/y.db"
        assert canonical_url("memory") is None
        assert canonical_url("postgresql://u@h/db") == "postgresql://u@h/db"
        with pytest.raises(StoreError, match="Unknown run store 'mongodb://x'"):
            canonical_url("mongodb://x")
        with pytest.raises(StoreError, match="memory"):
            open_store("memory")
    finally:
        monkeypatch.undo()
        reload_settings()


def test_memory_store_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASYNCFLOW_STORE=memory: flows run and no database appears."""
    monkeypatch.setenv("ASYNCFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    reload_settings()
    try:
        parent_flow(1)
        assert writer.current_writer() is None
        assert list(tmp_path.iterdir()) == []
    finally:
        monkeypatch.undo()
        reload_settings()


def test_default_store_is_sqlite_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ASYNCFLOW_STORE, runs go to $ASYNCFLOW_HOME/runs.db, visible to another process."""
    monkeypatch.setenv("ASYNCFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("ASYNCFLOW_STORE")
    reload_settings()
    try:
        parent_flow(1)
        code = (
            "import anyio; from asyncflow.store import open_store; s = open_store(); "
            "print(len(anyio.run(lambda: s.list_runs(kind=None))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "5"
        assert (tmp_path / "runs.db").exists()
    finally:
        writer.stop()
        monkeypatch.undo()
        reload_settings()


# -- SQLite only -------------------------------------------------------------------------------
def sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite://") :])


def test_database_is_wal_and_versioned(store: Any, recording: str) -> None:
    """The file is in WAL mode, carries the schema version, and has every state as a row."""
    parent_flow(1)
    assert writer.flush()  # read below with a plain connection, not through the store
    conn = sqlite3.connect(sqlite_path(recording))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # the view shows every state as a row, as the engine recorded them
        rows = conn.execute("SELECT count(*) FROM transitions").fetchone()[0]
        assert rows == 5 * 3
    finally:
        conn.close()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 100, b"SQLite format 3\x00" + os.urandom(8000)],
    ids=["text", "damaged-sqlite"],
)
def test_corrupt_database_is_refused_and_left_untouched(
    tmp_path: Path, content: bytes, logs: Any
) -> None:
    """A corrupt file: StoreError naming it, for readers and for flows (which still run and
    log the error); its bytes are unchanged and no -wal/-shm file appears."""
    path = tmp_path / "runs.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        open_store(f"sqlite://{path}")
    assert str(path) in str(info.value)
    assert "untouched" in str(info.value)
    assert "Traceback" not in str(info.value)

    os.environ["ASYNCFLOW_STORE"] = f"sqlite://{path}"
    reload_settings()
    try:
        assert parent_flow(1) == 20
    finally:
        writer.stop()
        os.environ["ASYNCFLOW_STORE"] = "sqlite"
        reload_settings()
    assert any(str(path) in m and "not recorded" in m for m in logs.messages), logs.messages
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    open_store(f"sqlite://{path}").close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer asyncflow") as info:
        open_store(f"sqlite://{path}")
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_other_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another program"):
        open_store(f"sqlite://{path}")
    assert path.read_bytes() == before


def test_concurrent_first_opens_create_the_schema_once(tmp_path: Path) -> None:
    """Threads (each with its own connection) opening a new file at once all succeed."""
    url = f"sqlite://{tmp_path / 'runs.db'}"
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_store(url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    conn = sqlite3.connect(tmp_path / "runs.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_directory_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        open_store(f"sqlite://{tmp_path / 'runs.db'}")


def test_reader_sees_commits_while_a_writer_holds_the_file(store: Any, recording: str) -> None:
    """WAL: a reader is not blocked by an open write transaction, and sees the last commit."""
    parent_flow(1)
    assert writer.flush()  # committed before the other writer takes the lock
    conn = sqlite3.connect(sqlite_path(recording), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        done = threading.Event()
        found: list[int] = []

        def read() -> None:
            found.append(len(all_runs(store)))
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(5), "the reader was blocked by the writer"
        assert found == [5]
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_locked_database_does_not_delay_flow_runs(recording: str, store: Any) -> None:
    """Another process holding the write lock does not hold up flow runs (they never wait
    for the disk); the runs are written once the lock is released."""
    parent_flow(1)  # starts the writer
    assert writer.flush()  # creates the file
    conn = sqlite3.connect(sqlite_path(recording), isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        parent_flow(1)
        assert time.monotonic() - started < 1.0
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert writer.flush()
    assert len(store.list_runs_sync(kind="flow")) == 2 + 2  # each has a subflow


def test_failed_state_is_a_returned_value(store: Any) -> None:
    """A flow returning a Failed state is recorded Failed with that state's message."""

    @flow
    def returns_failed() -> Any:
        return Failed(message="nope")

    returns_failed(return_state=True)
    top = top_flow(store, "returns-failed")
    assert (top.state_type, top.state_message) == (StateType.FAILED, "nope")


def test_a_second_connection_in_a_process_does_not_cost_the_first_its_wal(
    tmp_path: Path,
) -> None:
    """Opening a store used to read the file's header through a descriptor of its own:
    closing it dropped the process's POSIX locks, which its other connections hold, so
    another process closing its connection took itself for the last one and deleted the WAL
    the first connection went on writing to. Those writes were lost to every other reader."""
    from asyncflow.store.sqlite import SQLiteStore

    path = tmp_path / "runs.db"
    first = SQLiteStore(path)
    second = SQLiteStore(path)
    try:
        first.set_variable("before", '"1"', "[]", True)
        other = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT 1 FROM runs')"
        subprocess.run([sys.executable, "-c", other, str(path)], check=True)
        first.set_variable("after", '"2"', "[]", True)
        assert (tmp_path / "runs.db-wal").exists()
        reader = sqlite3.connect(path)
        try:
            names = {row[0] for row in reader.execute("SELECT name FROM variables")}
        finally:
            reader.close()
        assert names == {"before", "after"}
    finally:
        second.close()
        first.close()
