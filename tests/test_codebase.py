"""The codebase's own checks, so the one test command also gates lint and types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_clean() -> None:
    """ruff finds nothing in the package, tests, benchmarks and examples."""
    result = _run("ruff", "check", "asyncflow", "tests", "benchmarks", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    """mypy --strict (configured in pyproject.toml) passes on asyncflow/."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hello_example_runs(tmp_path: Path) -> None:
    """The README's command: the example prints the seed's lines and its recorded history,
    then `asyncflow runs ls` lists its runs from the SQLite store."""
    env = {**os.environ, "ASYNCFLOW_HOME": str(tmp_path), "ASYNCFLOW_STORE": "sqlite"}
    result = subprocess.run(
        [sys.executable, "examples/hello.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Hello Marvin!" in result.stdout
    assert "Nestedflow says: Hello Marvin!" in result.stdout
    assert "Created flow run" in result.stderr and "for flow 'Hello Flow'" in result.stderr
    assert "Created subflow run" in result.stderr
    assert result.stderr.count("Finished in state Completed()") == 3
    assert "Pending" in result.stdout and "Completed" in result.stdout

    script = Path(sys.executable).with_name("asyncflow")  # the console script pip installs
    command = [str(script)] if script.exists() else [sys.executable, "-m", "asyncflow.cli"]
    ls = subprocess.run(
        [*command, "runs", "ls"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "FLOW", "STATE", "START", "DURATION"]
    rows = lines[1:]  # the flow run and its subflow run, both Completed
    assert len(rows) == 2, ls.stdout
    assert any(" Hello Flow " in row and " Completed " in row for row in rows), ls.stdout
    assert any(" Nestedflow " in row and " Completed " in row for row in rows), ls.stdout


def test_decorator_options_type_check_for_users() -> None:
    """Every option of @flow/@task/with_options is typed (on_completion=... was a mypy error),
    and a misspelled one is a type error."""
    ok = _run("mypy", "--strict", "--config-file=/dev/null", "tests/_typing_usage.py")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = ROOT / "tests" / "_typing_misspelled.py"
    bad.write_text(
        "from asyncflow import flow\n\n"
        "@flow(retires=3)\n"
        "def f() -> None: ...\n"
    )
    try:
        wrong = _run("mypy", "--strict", "--config-file=/dev/null", str(bad))
    finally:
        bad.unlink()
    assert wrong.returncode != 0 and "retires" in wrong.stdout, wrong.stdout
