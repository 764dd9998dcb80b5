"""Runtime context (`asyncflow.runtime`), run loggers, log_prints, console format, settings."""

import datetime
import logging
import os
import re
import subprocess
import sys
import textwrap

import anyio.lowlevel
import pytest

from asyncflow import flow, get_run_logger, task
from asyncflow.exceptions import MissingContextError, ParameterSizeError
from asyncflow.logging import RunFormatter
from asyncflow.runtime import flow_run, task_run
from asyncflow.settings import get_settings, reload_settings

FLOW_RUN_FIELDS = (
    "id",
    "name",
    "flow_name",
    "parameters",
    "run_count",
    "parent_flow_run_id",
    "scheduled_start_time",
)


def snapshot_flow_run() -> dict:
    return {field: getattr(flow_run, field) for field in FLOW_RUN_FIELDS}


# -- runtime.flow_run -------------------------------------------------------------------------


def test_flow_run_fields_inside_a_run(registry):
    """Inside a flow run, runtime.flow_run exposes the run's id, names, parameters and counts."""

    @flow(flow_run_name="run-{x}")
    def observed(x: int, y: str = "d"):
        return snapshot_flow_run()

    before = datetime.datetime.now(datetime.timezone.utc)
    seen = observed("3")
    after = datetime.datetime.now(datetime.timezone.utc)
    (record,) = registry.runs(kind="flow")
    assert seen["id"] == record.id
    assert seen["name"] == "run-3" == record.name
    assert seen["flow_name"] == "observed"
    assert seen["parameters"] == {"x": 3, "y": "d"}
    assert seen["run_count"] == 1
    assert seen["parent_flow_run_id"] is None
    start = seen["scheduled_start_time"]
    assert isinstance(start, datetime.datetime)
    assert start.tzinfo is not None
    assert before - datetime.timedelta(seconds=1) <= start <= after


def test_flow_run_fields_outside_a_run_are_empty():
    """Outside any run, runtime.flow_run fields are None / {} / 0 and never raise; the
    scheduled start time is now, as in Prefect."""
    fields = snapshot_flow_run()
    assert isinstance(fields.pop("scheduled_start_time"), datetime.datetime)
    assert fields == {
        "id": None,
        "name": None,
        "flow_name": None,
        "parameters": {},
        "run_count": 0,
        "parent_flow_run_id": None,
    }


def test_flow_run_unknown_attribute_is_attribute_error():
    """Asking runtime.flow_run for an unknown field raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_field"):
        _ = flow_run.no_such_field


def test_flow_run_in_nested_flow_points_to_parent(registry):
    """In a nested flow, runtime.flow_run is the child, with parent_flow_run_id set."""

    @flow
    def child():
        return snapshot_flow_run()

    @flow
    def parent():
        return flow_run.id, child()

    parent_id, seen = parent()
    parent_record, child_record = registry.runs(kind="flow")
    assert parent_id == parent_record.id
    assert seen["id"] == child_record.id
    assert seen["parent_flow_run_id"] == parent_record.id
    assert seen["flow_name"] == "child"
    assert flow_run.id is None  # back outside: empty again


def test_flow_run_run_count_counts_retries():
    """runtime.flow_run.run_count is 1, 2, ... over retry attempts."""
    counts = []

    @flow(retries=2)
    def flaky():
        counts.append(flow_run.run_count)
        if len(counts) < 3:
            raise RuntimeError("again")

    flaky()
    assert counts == [1, 2, 3]


@pytest.mark.anyio
async def test_flow_run_fields_in_async_flow(registry):
    """runtime.flow_run works in async flows on asyncio and trio, and is empty afterwards."""

    @flow
    async def observed(n: int):
        await anyio.lowlevel.checkpoint()
        return snapshot_flow_run()

    seen = await observed("2")
    (record,) = registry.runs(kind="flow")
    assert seen["id"] == record.id
    assert seen["parameters"] == {"n": 2}
    assert seen["run_count"] == 1
    assert flow_run.id is None


# -- runtime.task_run -------------------------------------------------------------------------


def test_task_run_fields_inside_a_task(registry):
    """Inside a task run, runtime.task_run has its id, name, task_name, parameters, counts."""

    @task
    def observed_task(a: int, b: int = 5):
        return {
            "id": task_run.id,
            "name": task_run.name,
            "task_name": task_run.task_name,
            "parameters": task_run.parameters,
            "run_count": task_run.run_count,
            "flow_run_id": task_run.flow_run_id,
        }

    @flow
    def host():
        return observed_task(1)

    seen = host()
    (flow_record,) = registry.runs(kind="flow")
    (task_record,) = registry.runs(kind="task")
    assert seen == {
        "id": task_record.id,
        "name": "observed_task-0",
        "task_name": "observed_task",
        "parameters": {"a": 1, "b": 5},
        "run_count": 1,
        "flow_run_id": flow_record.id,
    }


def test_task_run_fields_outside_are_empty():
    """Outside a task run (even inside a flow run), runtime.task_run fields are empty."""

    @flow
    def host():
        return task_run.id, task_run.name, task_run.parameters, task_run.run_count

    assert host() == (None, None, {}, 0)
    assert (task_run.id, task_run.name, task_run.task_name) == (None, None, None)
    assert (task_run.parameters, task_run.run_count) == ({}, 0)


# -- get_run_logger ---------------------------------------------------------------------------


def test_get_run_logger_in_flow_labels_lines(registry, logs):
    """get_run_logger() in a flow logs `Flow run '<name>' - message`."""

    @flow
    def chatty():
        get_run_logger().info("hello from the flow")
        get_run_logger().warning("careful")

    chatty()
    (record,) = registry.runs(kind="flow")
    assert f"Flow run '{record.name}' - hello from the flow" in logs.lines
    warning = next(r for r in logs.records if r.getMessage() == "careful")
    assert warning.levelname == "WARNING"
    assert warning.run_id == record.id


def test_get_run_logger_in_task_labels_lines(logs):
    """get_run_logger() in a task logs `Task run '<task>-0' - message`."""

    @task
    def chatty_task():
        get_run_logger().info("hello from the task")

    @flow
    def host():
        chatty_task()

    host()
    assert "Task run 'chatty_task-0' - hello from the task" in logs.lines


@pytest.mark.anyio
async def test_get_run_logger_in_async_flow(registry, logs):
    """get_run_logger() works in async flows on both backends."""

    @flow
    async def chatty():
        await anyio.lowlevel.checkpoint()
        get_run_logger().info("async hello")

    await chatty()
    (record,) = registry.runs(kind="flow")
    assert f"Flow run '{record.name}' - async hello" in logs.lines


def test_get_run_logger_outside_a_run_raises_clearly():
    """get_run_logger() outside a run raises MissingContextError explaining why."""
    with pytest.raises(MissingContextError, match="outside of a flow or task run"):
        get_run_logger()
    assert issubclass(MissingContextError, RuntimeError)


# -- log_prints -------------------------------------------------------------------------------


def test_log_prints_routes_print_to_run_logger(registry, logs, capsys):
    """Seed: with log_prints=True, print() inside the flow becomes a run log line."""

    @flow(name="My Flow", description="My flow with a name and description", log_prints=True)
    def my_flow():
        print("Hello, I'm a flow")

    my_flow()
    (record,) = registry.runs(kind="flow")
    assert f"Flow run '{record.name}' - Hello, I'm a flow" in logs.lines
    printed = next(r for r in logs.records if r.getMessage() == "Hello, I'm a flow")
    assert printed.levelname == "INFO"
    assert "Hello, I'm a flow" not in capsys.readouterr().out


def test_log_prints_survives_another_library_replacing_print(logs, capsys, monkeypatch):
    """A library that puts its own print in (Ray's progress bars do) does not turn
    log_prints off: the next such run installs asyncflow's again."""
    import builtins

    @flow(log_prints=True)
    def chatty():
        print("said in a run")

    chatty()
    theirs: list[tuple[object, ...]] = []
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: theirs.append(args))
    chatty()
    assert sum("said in a run" in line for line in logs.lines) == 2
    assert theirs == [] and "said in a run" not in capsys.readouterr().out


def test_without_log_prints_print_goes_to_stdout(logs, capsys):
    """Without log_prints, print() writes to stdout and is not logged."""

    @flow
    def plain():
        print("just printed")

    plain()
    assert capsys.readouterr().out == "just printed\n"
    assert "just printed" not in logs.messages


def test_log_prints_leaves_print_alone_outside_runs(capsys):
    """After a log_prints flow has run, print() outside runs behaves normally."""

    @flow(log_prints=True)
    def logged():
        print("inside")

    logged()
    print("outside", 1, sep="-")
    assert capsys.readouterr().out == "outside-1\n"


def test_log_prints_inherited_by_tasks(logs):
    """Tasks in a log_prints flow route their prints to the task run logger too."""

    @task
    def noisy():
        print("task says hi")

    @flow(log_prints=True)
    def host():
        noisy()

    host()
    assert "Task run 'noisy-0' - task says hi" in logs.lines


# -- console format ---------------------------------------------------------------------------

LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (?P<level>[A-Z]+ *) \| (?P<rest>.*)$", re.S)


def test_console_line_format(registry, logs):
    """Console lines are `HH:MM:SS.mmm | LEVEL   | Flow run 'name' - message` (level width 7)."""

    @flow
    def formatted():
        return 1

    formatted()
    (record,) = registry.runs(kind="flow")
    formatter = RunFormatter()
    lines = [formatter.format(r) for r in logs.records]
    assert len(lines) == 3
    created, beginning, finished = (LINE.match(line) for line in lines)
    assert beginning["rest"] == (
        f"Flow run '{record.name}' - Beginning flow run '{record.name}' for flow 'formatted'"
    )
    assert created["level"] == "INFO   "
    assert created["rest"] == (
        f"asyncflow.engine - Created flow run '{record.name}' for flow 'formatted'"
    )
    assert finished["level"] == "INFO   "
    assert finished["rest"] == f"Flow run '{record.name}' - Finished in state Completed()"


def test_console_failure_lines_have_error_level_and_traceback(registry, logs):
    """A failing flow logs ERROR lines, the exception one with its traceback."""

    @flow
    def failing():
        raise ValueError("I fail successfully")

    with pytest.raises(ValueError):
        failing()
    (record,) = registry.runs(kind="flow")
    formatter = RunFormatter()
    text = "\n".join(formatter.format(r) for r in logs.records)
    assert re.search(
        rf"\| ERROR   \| Flow run '{record.name}' - Encountered exception during execution:\n"
        r"Traceback \(most recent call last\):\n.*ValueError: I fail successfully",
        text,
        re.S,
    )
    assert re.search(rf"\| ERROR   \| Flow run '{record.name}' - Finished in state Failed\(", text)


def _run_script(source: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFLOW_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SCRIPT = """
    from asyncflow import flow

    @flow(name="Hello Flow")
    def hello():
        print("stdout line")

    @flow
    def broken():
        raise ValueError("nope")

    hello()
    try:
        broken()
    except ValueError:
        pass
"""


def test_console_output_on_stderr_in_a_fresh_process():
    """In a fresh process, log lines go to stderr in the console format, prints to stdout."""
    proc = _run_script(SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stdout line\n"
    lines = [line for line in proc.stderr.splitlines() if LINE.match(line)]
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} \| INFO    \| asyncflow\.engine - Created flow run "
        r"'[a-z-]+' for flow 'Hello Flow'",
        lines[0],
    )
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} \| INFO    \| Flow run '[a-z-]+' - Finished in state Completed\(\)",
        lines[2],
    )
    assert any(" | ERROR   | Flow run '" in line for line in lines)


def test_logging_level_from_environment():
    """ASYNCFLOW_LOGGING_LEVEL=ERROR hides INFO lines and keeps ERROR ones."""
    proc = _run_script(SCRIPT, ASYNCFLOW_LOGGING_LEVEL="ERROR")
    assert proc.returncode == 0, proc.stderr
    assert "| INFO" not in proc.stderr
    assert "| ERROR   | Flow run '" in proc.stderr


def test_logging_setup_false_attaches_no_console_handler():
    """ASYNCFLOW_LOGGING_SETUP=false leaves logging to the application: no console lines."""
    proc = _run_script(SCRIPT, ASYNCFLOW_LOGGING_SETUP="false")
    assert proc.returncode == 0, proc.stderr
    # (Python's own last-resort handler may still print bare WARNING+ messages.)
    assert not [line for line in proc.stderr.splitlines() if LINE.match(line)]
    assert "Finished in state Completed()" not in proc.stderr
    assert proc.stdout == "stdout line\n"


# -- settings ---------------------------------------------------------------------------------


@pytest.fixture
def restore_settings(monkeypatch):
    """Undo ASYNCFLOW_* environment changes, then re-read the real environment."""
    yield
    monkeypatch.undo()
    reload_settings()


def test_settings_read_from_environment(monkeypatch, restore_settings):
    """reload_settings() re-reads ASYNCFLOW_* variables."""
    monkeypatch.setenv("ASYNCFLOW_LOGGING_LEVEL", "warning")
    monkeypatch.setenv("ASYNCFLOW_MAX_PARAMETERS_BYTES", "2048")
    settings = reload_settings()
    assert settings.logging_level == "WARNING"
    assert settings.max_parameters_bytes == 2048
    assert get_settings() is settings
    monkeypatch.delenv("ASYNCFLOW_LOGGING_LEVEL")
    monkeypatch.delenv("ASYNCFLOW_MAX_PARAMETERS_BYTES")
    defaults = reload_settings()
    assert defaults.logging_level == "INFO"
    assert defaults.max_parameters_bytes == 512 * 1024


def test_parameter_size_limit_from_environment(monkeypatch, restore_settings):
    """ASYNCFLOW_MAX_PARAMETERS_BYTES changes the parameter size limit for later runs."""

    @flow
    def sized(data: str):
        return len(data)

    monkeypatch.setenv("ASYNCFLOW_MAX_PARAMETERS_BYTES", "100")
    reload_settings()
    with pytest.raises(ParameterSizeError):
        sized("z" * 200)
    monkeypatch.delenv("ASYNCFLOW_MAX_PARAMETERS_BYTES")
    reload_settings()
    assert sized("z" * 200) == 200


def test_reloaded_logging_level_applies(monkeypatch, restore_settings, logs):
    """After reload_settings() with ASYNCFLOW_LOGGING_LEVEL=ERROR, INFO run lines are dropped."""

    @flow
    def quiet():
        get_run_logger().info("info line")
        get_run_logger().error("error line")

    package_logger = logging.getLogger("asyncflow")
    saved_level = package_logger.level
    monkeypatch.setenv("ASYNCFLOW_LOGGING_LEVEL", "ERROR")
    reload_settings()
    try:
        quiet()
    finally:
        monkeypatch.delenv("ASYNCFLOW_LOGGING_LEVEL")
        reload_settings()
        package_logger.setLevel(saved_level)
    assert "error line" in logs.messages
    assert "info line" not in logs.messages
    assert not any(m.startswith("Finished in state Completed") for m in logs.messages)


def test_console_lines_follow_a_replaced_stderr():
    """The console handler writes to the current sys.stderr, so a stderr replaced after
    logging was set up (notebooks, test runners) receives the run lines."""
    import contextlib
    import io

    from asyncflow import flow
    from asyncflow.logging import setup_logging

    setup_logging()

    @flow
    def speaks() -> int:
        return 1

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        speaks()
    assert "for flow 'speaks'" in buffer.getvalue()
    assert "Finished in state Completed()" in buffer.getvalue()
