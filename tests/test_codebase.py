"""The codebase's own checks, so the one test command also gates lint and types."""

from __future__ import annotations

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


def test_hello_example_runs() -> None:
    """The README's example runs and prints the seed's lines plus its recorded history."""
    result = subprocess.run(
        [sys.executable, "examples/hello.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Hello Marvin!" in result.stdout
    assert "Nestedflow says: Hello Marvin!" in result.stdout
    assert "Created flow run" in result.stderr and "for flow 'Hello Flow'" in result.stderr
    assert "Created subflow run" in result.stderr
    assert result.stderr.count("Finished in state Completed()") == 3
    assert "Pending" in result.stdout and "Completed" in result.stdout
