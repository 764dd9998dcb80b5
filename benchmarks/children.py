"""Starting child processes and reading their results.

Every measurement runs in a fresh process, so workloads cannot pollute each other (warm
caches, a grown run registry, leftover threads). A child gets its own session, so when it
hangs or leaves helpers behind (Prefect starts its temporary server as a subprocess) the
whole group is killed and the workload is reported "timed out" instead of a stuck run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._measure import RESULT_MARKER

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """What one child process produced."""

    result: dict[str, Any] | None
    error: str | None  # why there is no result, or a problem after it was written
    wall_s: float  # exec to exit, as seen from here
    exit_s: float | None  # from the result being written to the process having exited
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.result is not None and "unavailable" not in self.result

    @property
    def unavailable(self) -> str | None:
        return None if self.result is None else self.result.get("unavailable")

    def get(self, key: str) -> Any:
        return None if self.result is None else self.result.get(key)


def run_child(
    python: str,
    module: str,
    args: list[str],
    env: dict[str, str],
    timeout: float,
    cwd: Path,
) -> Outcome:
    """Run ``python -m module *args`` and parse its result line."""
    cmd = [python, "-m", module, *args]
    # Files, not pipes: a grandchild that inherits a pipe (Prefect's server) would keep
    # communicate() waiting after the child is gone, and logs can be large.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        wall = time.perf_counter() - start
        ended_at = time.time()
        _kill_group(proc)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = _parse(stdout)
    exit_s = None
    if result is not None and not timed_out and "emitted_at" in result:
        exit_s = max(0.0, ended_at - result["emitted_at"])
    error = None
    if timed_out:
        error = f"timed out after {timeout:.0f} s"
    elif proc.returncode != 0:
        error = f"exit code {proc.returncode}: {_last_error(stderr)}"
    return Outcome(result, error, wall, exit_s, timed_out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (the child and whatever it left running)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _parse(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            parsed: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            return parsed
    return None


def _last_error(stderr: str) -> str:
    """The last line of a traceback (the exception), or the last line at all."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and (
            "Error" in line or "Exception" in line or ": " in line
        ):
            return line[:300]
    return lines[-1][:300]
