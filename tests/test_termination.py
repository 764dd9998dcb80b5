"""SIGTERM: the runs of the process end in recorded states (issue 13: `TerminationSignal`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asyncflow.store import open_store

SYNC_SCRIPT = """
    import time
    from asyncflow import flow, task

    @task
    def step(i):
        return i

    @flow(on_crashed=[lambda f, r, s: print("on_crashed:", s.message, flush=True)])
    def long_flow():
        for i in range(3):
            step(i)
        print("ready", flush=True)
        time.sleep(60)

    long_flow()
"""

ASYNC_SCRIPT = """
    import sys
    import anyio
    from asyncflow import flow, task

    @task
    async def step(i):
        return i

    @flow
    async def long_flow():
        for i in range(3):
            await step(i)
        print("ready", flush=True)
        await anyio.sleep(60)

    anyio.run(long_flow, backend=sys.argv[1])
"""

OWN_HANDLER_SCRIPT = """
    import signal, sys, time
    from asyncflow import flow

    signal.signal(signal.SIGTERM, lambda *a: (print("mine", flush=True), sys.exit(7)))

    @flow
    def long_flow():
        print("ready", flush=True)
        time.sleep(60)

    long_flow()
"""


def _terminate(source: str, home: Path, *args: str) -> tuple[int, str, str]:
    """Run `source`, send it SIGTERM once it printed 'ready'; (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFLOW_")}
    env.update(ASYNCFLOW_HOME=str(home), ASYNCFLOW_LOGGING_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", first + proc.stderr.read()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, out, err


def _runs(home: Path, kind: str) -> list[Any]:
    store: Any = open_store(f"sqlite:///{home}/runs.db")
    try:
        return store.list_runs_sync(kind=kind, limit=100)  # type: ignore[no-any-return]
    finally:
        store.close()


def test_sigterm_in_a_sync_flow_raises_termination_signal(tmp_path: Path) -> None:
    code, out, err = _terminate(SYNC_SCRIPT, tmp_path)
    assert code == 1
    assert "asyncflow.exceptions.TerminationSignal: the process received signal 15" in err
    assert "on_crashed: Execution was interrupted by TerminationSignal" in out
    (run,) = _runs(tmp_path, "flow")
    assert run.state_type.value == "CRASHED"
    assert "TerminationSignal" in (run.state_message or "")
    assert [t.state_type.value for t in _runs(tmp_path, "task")] == ["COMPLETED"] * 3


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_in_an_async_flow_ends_the_process_with_its_runs_recorded(
    tmp_path: Path, backend: str
) -> None:
    code, _, err = _terminate(ASYNC_SCRIPT, tmp_path, backend)
    assert code == -signal.SIGTERM, err  # ended by the signal, as without asyncflow
    (run,) = _runs(tmp_path, "flow")
    assert run.state_type.value == "CRASHED"
    assert "exited before it finished" in (run.state_message or "")
    assert [t.state_type.value for t in _runs(tmp_path, "task")] == ["COMPLETED"] * 3


def test_a_handler_of_the_programs_own_is_left_alone(tmp_path: Path) -> None:
    code, out, _ = _terminate(OWN_HANDLER_SCRIPT, tmp_path)
    assert (code, out) == (7, "mine\n")


def test_sigterm_where_it_must_not_land_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside logging or asyncflow's bookkeeping the signal is sent again 2 ms later, and
    raised once the main thread is in the run's own code."""
    import time

    from asyncflow import flow
    from asyncflow.engine import interrupts, termination
    from asyncflow.exceptions import TerminationSignal

    asked: list[bool] = []

    def unsafe_the_first_time(thread_id: int, frame: Any) -> bool:
        asked.append(not asked)
        return asked[-1]

    monkeypatch.setattr(interrupts, "_unsafe", unsafe_the_first_time)

    @flow
    def waits() -> None:
        if signal.getsignal(signal.SIGTERM) is not termination._on_sigterm:
            pytest.skip("SIGTERM has a handler of its own in this process")
        termination._on_sigterm(signal.SIGTERM, sys._getframe())  # as if it arrived now
        time.sleep(10)  # the second delivery lands here

    started = time.monotonic()
    with pytest.raises(TerminationSignal):
        waits()
    assert asked == [True, False]
    assert time.monotonic() - started < 5


CHILDREN_SCRIPT = """
    import time
    from asyncflow import flow, task

    @task
    def sleeps():
        time.sleep(30)

    @task
    async def waits():
        import anyio
        print("ready", flush=True)  # both children run now
        await anyio.sleep(30)

    @flow
    def parent():
        future = sleeps.submit()
        waits()  # an async task on the kernel loop, from a sync flow

    parent()
"""

DEFERRED_SCRIPT = """
    import time
    from asyncflow import flow, task

    def condition(task, run, state):
        print("ready", flush=True)
        time.sleep(0.5)  # SIGTERM arrives here: code the engine calls, not a run's body
        return True

    @task(retries=1, retry_condition_fn=condition)
    def flaky():
        if flaky_calls.append(1) or len(flaky_calls) == 1:
            raise ValueError("first")
        time.sleep(30)  # ... and lands here, in the body of the next attempt

    flaky_calls = []

    @flow
    def parent():
        flaky()

    parent()
"""


def test_sigterm_does_not_wait_for_the_children_of_a_sync_flow(tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    code, _, err = _terminate(CHILDREN_SCRIPT, tmp_path)
    assert code == 1 and "TerminationSignal" in err
    assert time.monotonic() - started < 15  # the children sleep 30 s
    (run,) = _runs(tmp_path, "flow")
    assert run.state_type.value == "CRASHED"
    states = {t.spec_name: t.state_type.value for t in _runs(tmp_path, "task")}
    assert states["waits"] in ("CANCELLED", "CRASHED")
    assert states["sleeps"] in ("CANCELLED", "CRASHED")


def test_sigterm_in_code_the_engine_calls_waits_for_the_body(tmp_path: Path) -> None:
    code, _, err = _terminate(DEFERRED_SCRIPT, tmp_path)
    assert code == 1 and "TerminationSignal" in err
    (task_run,) = _runs(tmp_path, "task")
    assert task_run.state_type.value == "CRASHED" and task_run.run_count == 2
