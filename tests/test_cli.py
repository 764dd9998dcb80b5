"""The `asyncflow` command: `runs ls | inspect | tree` on a real SQLite store, and `run`.

The run history is made by real processes (a script, or `asyncflow run`) writing to a SQLite
file in a temporary ASYNCFLOW_HOME; the read commands are then called in-process through
`main([...])`, and a few through the installed console script.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncflow.cli import main
from asyncflow.cli._format import duration, local_time, short_ids, table
from asyncflow.cli._run import parse_params, split_target
from asyncflow.settings import reload_settings

ROOT = Path(__file__).resolve().parent.parent

HISTORY_SCRIPT = """
import asyncio

from asyncflow import flow, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(retries=1)
def flaky() -> None:
    raise ValueError("always flaky")


@flow(name="child-flow")
def child(x: int) -> int:
    return add(x, 1)


@flow(name="parent-flow")
def parent(n: int = 2) -> int:
    total = add(n, n)
    return child(total)


@flow(name="failing-flow")
def failing() -> None:
    flaky()


@flow(name="async-flow")
async def async_flow(word: str) -> str:
    await asyncio.sleep(0)
    return word.upper()


if __name__ == "__main__":
    parent(2)
    parent(n=3)
    try:
        failing()
    except ValueError:
        pass
    asyncio.run(async_flow("hi"))
"""

FLOWS_FILE = """
import anyio
from helper import double

from asyncflow import flow, task


@task
def inc(x: int) -> int:
    return x + 1


@flow
def typed(n: int, items: list[int] = [], label: str = "x") -> dict:
    return {"n": inc(n), "sum": sum(items), "label": label, "double": double(n)}


@flow(name="Async Greeting")
async def greet(name: str, delay: float = 0.0) -> str:
    await anyio.sleep(delay)
    return f"hello {name}"


@flow
def broken() -> None:
    raise RuntimeError("flow body failed")


def plain() -> None:
    pass


NUMBER = 3
"""


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ASYNCFLOW_STORE"] = "sqlite"  # the default store: $ASYNCFLOW_HOME/runs.db
    env["ASYNCFLOW_HOME"] = str(home)
    return env


def _cli(home: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncflow.cli", *args],
        cwd=cwd,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ASYNCFLOW_HOME whose SQLite store holds the runs of HISTORY_SCRIPT."""
    home = tmp_path_factory.mktemp("home")
    script = home / "make_history.py"
    script.write_text(HISTORY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def use_home(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point this process's settings at an ASYNCFLOW_HOME (restored afterwards)."""

    def use(home: Path) -> Path:
        monkeypatch.setenv("ASYNCFLOW_STORE", "sqlite")  # the default: $ASYNCFLOW_HOME/runs.db
        monkeypatch.setenv("ASYNCFLOW_HOME", str(home))
        reload_settings()
        return home

    yield use
    monkeypatch.undo()
    reload_settings()


@pytest.fixture(autouse=True)
def _temp_home(tmp_path: Path, use_home: Any) -> None:
    """Runs made in this process never reach the user's real ~/.asyncflow."""
    use_home(tmp_path / "default-home")


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "flows.py").write_text(FLOWS_FILE)
    return tmp_path


def _run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _ls_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = _run_main(capsys, "runs", "ls", "--json", *args)
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, list)
    return data


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("asyncflow: error: "), err
    return lines[0]


# -- formatting helpers ----------------------------------------------------------------------
def test_durations_and_times() -> None:
    assert duration(datetime.timedelta(milliseconds=12)) == "0.012s"
    assert duration(datetime.timedelta(seconds=12.5)) == "12.500s"
    assert duration(datetime.timedelta(seconds=62)) == "1m02s"
    assert duration(datetime.timedelta(hours=2, minutes=3, seconds=4)) == "2h03m04s"
    assert duration(None) == "-"
    ts = datetime.datetime(2024, 5, 1, 9, 12, 1, 301000, tzinfo=datetime.timezone.utc)
    local = ts.astimezone()
    assert local_time(ts) == local.strftime("%Y-%m-%d %H:%M:%S")
    assert local_time(ts, millis=True).endswith(".301")
    assert local_time(None) == "-"


def test_table_columns_are_aligned() -> None:
    text = table(["ID", "NAME"], [["a", "long-name"], ["bbbbbb", "x"]])
    lines = text.splitlines()
    assert lines[0] == "ID      NAME"
    assert lines[1] == "a       long-name"
    assert lines[2] == "bbbbbb  x"


def test_short_ids_are_unique_prefixes() -> None:
    ids = [
        "6616f837-4d19-a911-0000-000000000000",
        "6616f837-4d19-a911-0000-000000000003",
        "1234abcd-0000-0000-0000-000000000000",
    ]
    short = short_ids(ids)
    assert short[ids[2]] == "1234abcd"
    assert short[ids[0]] == ids[0] and short[ids[1]] == ids[1]
    assert short_ids(["abcdef12-3456-0000-0000-000000000000"]) == {
        "abcdef12-3456-0000-0000-000000000000": "abcdef12"
    }


def test_split_target_and_params() -> None:
    assert split_target("a/b.py:my_flow") == ("a/b.py", "my_flow")
    assert split_target("a/b.py") == ("a/b.py", None)
    assert split_target(r"C:\x\b.py") == (r"C:\x\b.py", None)
    assert parse_params(["n=5", "s=a=b", "e="]) == {"n": "5", "s": "a=b", "e": ""}


# -- runs ls -----------------------------------------------------------------------------------
def test_ls_lists_flow_runs_newest_first(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    code, out, err = _run_main(capsys, "runs", "ls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "FLOW", "STATE", "START", "DURATION"]
    flows = [line.split()[2] for line in lines[1:]]
    # 2 parent runs + 2 child runs + failing + async, newest first
    assert flows == [
        "async-flow",
        "failing-flow",
        "child-flow",
        "parent-flow",
        "child-flow",
        "parent-flow",
    ]
    for line in lines[1:]:
        assert line.split()[3] in {"Completed", "Failed"}
        # local start time YYYY-MM-DD HH:MM:SS and a duration in seconds
        start = " ".join(line.split()[4:6])
        datetime.datetime.strptime(start, "%Y-%m-%d %H:%M:%S")
        assert line.split()[6].endswith("s")
    # the header's columns line up with the values
    start_col = lines[0].index("START")
    assert all(line[start_col : start_col + 4].isdigit() for line in lines[1:])


def test_ls_filters(history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]) -> None:
    use_home(history)
    parents = _ls_json(capsys, "--flow", "parent-flow")
    assert [r["spec_name"] for r in parents] == ["parent-flow", "parent-flow"]
    assert [r["parameters"] for r in parents] == [{"n": 3}, {"n": 2}]
    failed = _ls_json(capsys, "--state", "failed")
    assert [r["name"] for r in failed] and {r["spec_name"] for r in failed} == {"failing-flow"}
    assert _ls_json(capsys, "--state", "FAILED") == failed
    assert len(_ls_json(capsys, "--limit", "2")) == 2
    tasks = _ls_json(capsys, "--kind", "task")
    assert {r["kind"] for r in tasks} == {"task"}
    assert {r["spec_name"] for r in tasks} >= {"add", "flaky"}
    everything = _ls_json(capsys, "--kind", "all", "--limit", "100")
    assert {r["kind"] for r in everything} == {"flow", "task"}
    assert _ls_json(capsys, "--since", "1h") == _ls_json(capsys)
    assert _ls_json(capsys, "--since", "2999-01-01") == []
    code, out, _ = _run_main(capsys, "runs", "ls", "--flow", "no-such-flow")
    assert code == 0 and out.startswith("No flow runs found")


def test_ls_json_fields(history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]) -> None:
    use_home(history)
    run = _ls_json(capsys, "--flow", "async-flow")[0]
    assert run["kind"] == "flow" and run["state_type"] == "COMPLETED"
    assert run["state_name"] == "Completed"
    assert run["parameters"] == {"word": "hi"}
    for key in ("created", "start_time", "end_time"):
        assert datetime.datetime.fromisoformat(run[key]).tzinfo is not None
    assert isinstance(run["id"], str) and len(run["id"]) == 36
    assert run["duration_seconds"] >= 0
    assert run["parent_flow_run_id"] is None


def test_ls_kind_all_table_has_kind_column(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    code, out, _ = _run_main(capsys, "runs", "ls", "--kind", "all", "--limit", "100")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["ID", "KIND", "NAME", "FLOW/TASK"]
    assert {line.split()[1] for line in out.splitlines()[1:]} == {"flow", "task"}


def test_ls_short_ids_resolve(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every id the table shows, however short, names exactly its run."""
    use_home(history)
    code, out, _ = _run_main(capsys, "runs", "ls")
    assert code == 0
    full = [r["id"] for r in _ls_json(capsys)]
    shown = [line.split()[0] for line in out.splitlines()[1:]]
    for short, run_id in zip(shown, full, strict=True):
        assert run_id.startswith(short) and len(short) >= 8
        code, out, err = _run_main(capsys, "runs", "inspect", short, "--json")
        assert code == 0, err
        assert json.loads(out)["id"] == run_id


# -- runs inspect / tree ---------------------------------------------------------------------
def _parent_run(capsys: pytest.CaptureFixture[str], n: int) -> dict[str, Any]:
    return next(r for r in _ls_json(capsys, "--flow", "parent-flow") if r["parameters"] == {"n": n})


def test_inspect_shows_history_parameters_and_children(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    run = _parent_run(capsys, 3)
    code, out, err = _run_main(capsys, "runs", "inspect", run["id"])
    assert code == 0, err
    assert out.startswith(f"Flow run {run['name']!r}")
    assert "parent-flow" in out and "none (top-level run)" in out
    assert "Parameters\n  n = 3" in out
    history_lines = out.split("State history\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[2] for line in history_lines] == ["Pending", "Running", "Completed"]
    children = out.split("Children\n")[1]
    assert "task 'add-0' [add]  Completed" in children
    assert "task 'child-flow-0' [child-flow]" in children
    assert "flow " in children and "[child-flow]" in children  # the subflow, under its task

    code, out, _ = _run_main(capsys, "runs", "inspect", run["id"], "--json")
    data = json.loads(out)
    assert [s["name"] for s in data["states"]] == ["Pending", "Running", "Completed"]
    assert all(datetime.datetime.fromisoformat(s["timestamp"]) for s in data["states"])
    assert data["parameters"] == {"n": 3}
    assert [c["name"] for c in data["children"]] == ["add-0", "child-flow-0"]
    subflow = data["children"][1]["children"][0]
    assert subflow["kind"] == "flow" and subflow["spec_name"] == "child-flow"
    assert subflow["parameters"] == {"x": 6}


def test_inspect_failed_run_shows_error_and_retries(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    failed = _ls_json(capsys, "--state", "failed")[0]
    code, out, _ = _run_main(capsys, "runs", "inspect", failed["id"])
    assert code == 0
    assert "Failed (FAILED)" in out
    assert "always flaky" in out.split("Message\n")[1]
    code, out, _ = _run_main(capsys, "runs", "inspect", failed["id"], "--json")
    flaky = json.loads(out)["children"][0]
    assert flaky["name"] == "flaky-0" and flaky["state_type"] == "FAILED"
    assert flaky["run_count"] == 2
    code, out, _ = _run_main(capsys, "runs", "inspect", flaky["id"], "--json")
    names = [s["name"] for s in json.loads(out)["states"]]
    assert names == ["Pending", "Running", "Failed", "AwaitingRetry", "Retrying", "Failed"]
    code, out, _ = _run_main(capsys, "runs", "inspect", flaky["id"])
    assert "AwaitingRetry (SCHEDULED)" in out and "Retrying (RUNNING)" in out
    assert f"flow run {failed['name']!r}" in out  # the parent link


def test_inspect_subflow_links_to_its_parent(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    parent = _parent_run(capsys, 2)
    child = next(
        r
        for r in _ls_json(capsys, "--flow", "child-flow")
        if r["parent_flow_run_id"] == parent["id"]
    )
    assert child["parent_task_run_id"] is not None
    code, out, _ = _run_main(capsys, "runs", "inspect", child["id"])
    assert code == 0
    assert f"flow run {parent['name']!r} {parent['id']} via task run 'child-flow-0'" in out


def test_tree_nests_subflows_under_their_task_run(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    run = _parent_run(capsys, 2)
    code, out, err = _run_main(capsys, "runs", "tree", run["id"][:36])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"flow {run['name']!r} [parent-flow]  Completed")
    assert len(lines) == 5
    assert "task 'add-0' [add]" in lines[1]
    assert "task 'child-flow-0' [child-flow]" in lines[2]
    assert "flow " in lines[3] and "[child-flow]" in lines[3]
    assert "task 'add-0' [add]" in lines[4]
    # each level is indented further than its parent
    depth = [len(line) - len(line.lstrip(" │├└─|`-")) for line in lines]
    assert depth[0] < depth[1] == depth[2] < depth[3] < depth[4]

    code, out, _ = _run_main(capsys, "runs", "tree", run["id"], "--json")
    data = json.loads(out)
    assert data["id"] == run["id"]
    assert [c["name"] for c in data["children"]] == ["add-0", "child-flow-0"]
    sub = data["children"][1]["children"][0]
    assert sub["kind"] == "flow"
    assert [c["name"] for c in sub["children"]] == ["add-0"]
    assert sub["children"][0]["children"] == []


def test_tree_of_a_task_run(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    code, out, _ = _run_main(capsys, "runs", "ls", "--kind", "task", "--json", "--flow", "add")
    task_id = json.loads(out)[0]["id"]
    code, out, _ = _run_main(capsys, "runs", "tree", task_id)
    assert code == 0 and out.splitlines() == [out.strip()]
    assert out.startswith("task 'add-0' [add]  Completed")


# -- runs: errors --------------------------------------------------------------------------
def test_unknown_and_ambiguous_run_ids(
    history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_home(history)
    code, _, err = _run_main(capsys, "runs", "inspect", "ffffffff-ffff")
    assert code == 2 and "ffffffff-ffff" in _error_line(err)
    code, _, err = _run_main(capsys, "runs", "tree", "not-a-run")
    assert code == 2 and "not a run id" in _error_line(err)
    # runs of one process share a long id prefix: a short one names several runs
    prefix = _ls_json(capsys)[0]["id"][:8]
    code, _, err = _run_main(capsys, "runs", "inspect", prefix)
    assert code == 2 and "ambiguous" in _error_line(err).lower()


def test_bad_ls_options(history: Path, use_home: Any, capsys: pytest.CaptureFixture[str]) -> None:
    use_home(history)
    code, _, err = _run_main(capsys, "runs", "ls", "--state", "happy")
    assert code == 2 and "unknown state 'happy'" in _error_line(err) and "failed" in err
    code, _, err = _run_main(capsys, "runs", "ls", "--limit", "0")
    assert code == 2 and "--limit" in _error_line(err)
    code, _, err = _run_main(capsys, "runs", "ls", "--since", "yesterday-ish")
    assert code == 2 and "--since" in _error_line(err)
    code, _, err = _run_main(capsys, "runs", "ls", "--kind", "dag")
    assert code == 2 and "invalid choice" in err


def test_corrupt_database_is_a_clear_error(
    tmp_path: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "garbage.db"
    content = b"this is not a SQLite database" * 100
    db.write_bytes(content)
    code, _, err = _run_main(capsys, "--store", str(db), "runs", "ls")
    line = _error_line(err)
    assert code == 2 and str(db) in line
    assert db.read_bytes() == content  # nothing overwritten
    # --store also works after the subcommand
    code, _, err = _run_main(capsys, "runs", "ls", "--store", str(db))
    assert code == 2 and str(db) in _error_line(err)


def test_newer_schema_is_a_clear_error(
    history: Path, tmp_path: Path, use_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    db = _store_file(history)
    copy = tmp_path / "newer.db"
    shutil.copy(db, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("PRAGMA user_version = 9999")
    conn.close()
    code, _, err = _run_main(capsys, "--store", str(copy), "runs", "ls")
    line = _error_line(err)
    assert code == 2 and str(copy) in line and "newer" in line.lower()


def test_missing_store_file_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "typo" / "runs.db"
    code, out, _ = _run_main(capsys, "runs", "ls", "--store", str(db))
    assert code == 0 and out.strip() == f"No runs recorded yet: {db} does not exist."
    code, out, _ = _run_main(capsys, "runs", "ls", "--store", str(db), "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = _run_main(capsys, "runs", "inspect", "abcd", "--store", str(db))
    assert code == 2 and f"no run history at {db} (no such file)" in _error_line(err)
    assert not db.parent.exists()


def test_memory_and_unknown_stores_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_main(capsys, "--store", "memory", "runs", "ls")
    assert code == 2 and "memory" in _error_line(err)
    code, _, err = _run_main(capsys, "--store", "nosuch:thing", "runs", "ls")
    assert code == 2 and "nosuch:thing" in _error_line(err)


def _store_file(home: Path) -> Path:
    files = [p for p in home.rglob("*") if p.suffix in {".db", ".sqlite", ".sqlite3"}]
    assert len(files) == 1, files
    return files[0]


# -- run -------------------------------------------------------------------------------------
def test_run_coerces_params(flows_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{flows_dir / 'flows.py'}:typed"
    code, out, err = _run_main(
        capsys, "run", target, "--param", "n=5", "-p", "items=[1, 2]", "-p", "label=123"
    )
    assert code == 0, err
    # n: JSON 5; items: JSON list; label: JSON 123 is not a str, so the raw string is used
    assert out.strip() == "{'n': 6, 'sum': 3, 'label': '123', 'double': 10}"
    code, out, err = _run_main(capsys, "run", target, "-p", "n=7", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["state"]["type"] == "COMPLETED" and data["flow"] == "typed"
    assert data["result"] == {"n": 8, "sum": 0, "label": "x", "double": 14}
    assert len(data["flow_run_id"]) == 36 and data["flow_run_name"]


def test_run_async_flow_by_flow_name(flows_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{flows_dir / 'flows.py'}:Async Greeting"
    code, out, err = _run_main(capsys, "run", target, "-p", "name=Marvin")
    assert code == 0, err
    assert out.strip() == "hello Marvin"
    code, out, err = _run_main(capsys, "run", target, "-p", "name=Arthur", "--backend", "trio")
    assert code == 0, err
    assert out.strip() == "hello Arthur"


def test_run_positional_only_and_var_keyword(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "odd.py").write_text(
        "from asyncflow import flow\n\n"
        "@flow\n"
        "def odd(a: int, /, b: str = 'b', **extra: int) -> str:\n"
        "    return f'{a!r} {b!r} {extra!r}'\n"
    )
    target = str(tmp_path / "odd.py")  # the file's only flow
    code, out, err = _run_main(capsys, "run", target, "-p", "a=1", "-p", "c=2", "-p", "d=3")
    assert code == 0, err
    assert out.strip() == "1 'b' {'c': 2, 'd': 3}"
    code, _, err = _run_main(capsys, "run", target, "-p", "a=1", "-p", "c=x")
    assert code == 2 and "extra.c: Input should be a valid integer" in _error_line(err)


def test_run_generator_flows_collect_their_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gens.py").write_text(
        "from asyncflow import flow\n\n"
        "@flow\n"
        "def count(n: int):\n"
        "    yield from range(n)\n\n"
        "@flow\n"
        "async def acount(n: int):\n"
        "    for i in range(n):\n"
        "        yield i\n"
    )
    for name in ("count", "acount"):
        code, out, err = _run_main(capsys, "run", f"{tmp_path / 'gens.py'}:{name}", "-p", "n=3")
        assert code == 0, err
        assert out.strip() == "[0, 1, 2]"


def test_run_failing_flow_exits_1(flows_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_main(capsys, "run", f"{flows_dir / 'flows.py'}:broken", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["state"]["type"] == "FAILED" and "flow body failed" in data["state"]["message"]
    assert "ended in state Failed" in err and "flow body failed" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.py:x"], "no such file: {d}/missing.py"),
        (["{d}:x"], "is a directory"),
        (["{d}/flows.py:nope"], "no flow 'nope' in {d}/flows.py; flows there: typed ('typed')"),
        (["{d}/flows.py:plain"], "'plain' in {d}/flows.py is not a flow: it is a plain function"),
        (["{d}/flows.py:inc"], "is not a flow: it is a task (@task)"),
        (["{d}/flows.py:NUMBER"], "is not a flow: it is a value of type int"),
        (["{d}/flows.py"], "which flow in {d}/flows.py?"),
        (["{d}/flows.py:typed", "-p", "n"], "bad --param 'n': expected NAME=VALUE"),
        (["{d}/flows.py:typed", "-p", "=5"], "bad --param '=5'"),
        (["{d}/flows.py:typed", "-p", "n=1", "-p", "n=2"], "--param 'n' given more than once"),
        (["{d}/flows.py:typed"], "missing a required argument: 'n'"),
        (["{d}/flows.py:typed", "-p", "n=1", "-p", "zzz=1"], "unexpected keyword argument 'zzz'"),
        (
            ["{d}/flows.py:typed", "-p", "n=abc"],
            "invalid parameters for flow 'typed': n: Input should be a valid integer",
        ),
        (["{d}/flows.py:typed", "-p", "n=1", "-p", 'items=[1,"x"]'], "items.1: Input should"),
        (["{d}/bad_syntax.py:f"], "SyntaxError"),
        (["{d}/raises.py:f"], "importing {d}/raises.py failed: ZeroDivisionError"),
    ],
)
def test_run_errors(
    flows_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (flows_dir / "bad_syntax.py").write_text("def f(:\n")
    (flows_dir / "raises.py").write_text("x = 1 / 0\n")
    d = str(flows_dir)
    argv = [a.replace("{d}", d) if "{d}" in a else a for a in args]
    if argv[0].startswith("missing.py"):
        argv[0] = f"{d}/{argv[0]}"
    code, out, err = _run_main(capsys, "run", *argv)
    assert code == 2, err
    assert expected.replace("{d}", d) in _error_line(err)
    assert out == ""


def test_run_records_to_the_given_store(
    flows_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "chosen.db"
    target = f"{flows_dir / 'flows.py'}:typed"
    code, out, err = _run_main(capsys, "run", target, "-p", "n=1", "--store", str(db), "--json")
    assert code == 0, err
    run_id = json.loads(out)["flow_run_id"]
    assert os.environ["ASYNCFLOW_STORE"] == "sqlite"  # main() leaves the environment as it was
    code, out, err = _run_main(capsys, "runs", "tree", run_id, "--store", str(db), "--json")
    assert code == 0, err
    tree = json.loads(out)
    assert tree["spec_name"] == "typed" and tree["parameters"] == {
        "n": 1,
        "items": [],
        "label": "x",
    }
    assert [c["name"] for c in tree["children"]] == ["inc-0"]


def test_run_with_a_corrupt_store_does_not_run(
    flows_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"\x00garbage" * 500)
    target = f"{flows_dir / 'flows.py'}:typed"
    code, out, err = _run_main(capsys, "run", target, "-p", "n=1", "--store", str(db))
    assert code == 2 and str(db) in _error_line(err)
    assert out == "" and db.read_bytes() == b"\x00garbage" * 500


@pytest.fixture
def postgres_url() -> Any:
    """A fresh schema on the test PostgreSQL server (ASYNCFLOW_TEST_POSTGRES_URL, set by
    .ci/run); skipped without one, except under CI=true where that is a failure."""
    from urllib.parse import quote

    url = os.environ.get("ASYNCFLOW_TEST_POSTGRES_URL")
    reason = "no PostgreSQL server: ASYNCFLOW_TEST_POSTGRES_URL is not set (.ci/run sets it)"
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    import psycopg

    schema = f"test_cli_{os.getpid()}_{id(url) % 100000}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_run_and_read_on_postgres(
    flows_dir: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{flows_dir / 'flows.py'}:typed"
    code, out, err = _run_main(capsys, "--store", postgres_url, "run", target, "-p", "n=4")
    assert code == 0, err
    code, out, err = _run_main(capsys, "--store", postgres_url, "runs", "ls", "--json")
    assert code == 0, err
    [run] = json.loads(out)
    assert run["spec_name"] == "typed" and run["parameters"]["n"] == 4
    code, out, err = _run_main(capsys, "--store", postgres_url, "runs", "inspect", run["id"])
    assert code == 0, err
    assert "Parameters\n  n = 4" in out and "task 'inc-0' [inc]  Completed" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: asyncflow" in capsys.readouterr().err
    assert main(["runs", "inspect"]) == 2
    assert main(["--help"]) == 0
    assert "runs" in capsys.readouterr().out


# -- end to end: the console script, with the writer persisting runs --------------------------
def test_run_then_ls_in_separate_processes(flows_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = _cli(
        home, "run", "flows.py:typed", "-p", "n=2", "-p", "label=persisted", cwd=flows_dir
    )
    assert result.returncode == 0, result.stderr
    result = _cli(home, "run", "flows.py:greet", "-p", "name=x", cwd=flows_dir)
    assert result.returncode == 0, result.stderr
    result = _cli(home, "runs", "ls", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["spec_name"] for r in runs] == ["Async Greeting", "typed"]
    assert runs[1]["parameters"] == {"n": 2, "items": [], "label": "persisted"}
    result = _cli(home, "runs", "tree", runs[1]["id"])
    assert result.returncode == 0, result.stderr
    assert "task 'inc-0' [inc]  Completed" in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("asyncflow")
    assert script.exists(), "run `pip install -e .` to install the console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "runs" in result.stdout
