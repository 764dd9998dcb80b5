"""Serving deployments (issue 15): scheduled runs are added once per slot and claimed once,
however many processes serve, run in the serving process under the scheduled run's id, and
follow the catch-up policy after a stop. Real processes, a real SQLite file and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow import flow
from asyncflow.deployments.deployment import ConcurrencyLimitConfig
from asyncflow.exceptions import StoreError
from asyncflow.schedules import Interval
from asyncflow.settings import reload_settings
from asyncflow.states import StateType
from asyncflow.store import open_store, writer

__all__ = ["recording", "server_url", "store_url"]
ROOT = Path(__file__).resolve().parent.parent


def _deployment_runs(url: str, name: str) -> list[Any]:
    writer.flush()
    store = open_store(url)
    try:
        runs = [r for r in store.list_runs_sync(limit=10_000) if r.deployment == name]
        return [store.read_run_sync(r.id) for r in runs]
    finally:
        store.close()


def _slot_keys(url: str, name: str) -> list[str]:
    store = open_store(url)
    try:
        return [
            row[0]
            for row in store._query(  # type: ignore[attr-defined]
                lambda c: c.execute(
                    store._sql("SELECT slot_key FROM runs WHERE deployment = ?"),  # type: ignore[attr-defined]
                    (name,),
                ).fetchall()
            )
        ]
    finally:
        store.close()


@flow
def tick(label: str = "x") -> str:
    return label


@pytest.mark.anyio
async def test_aserve_runs_each_slot_once_under_the_scheduled_runs_id(recording: str) -> None:
    with anyio.move_on_after(2.7):
        await tick.aserve("every", interval=1, parameters={"label": "hi"})
    runs = _deployment_runs(recording, "tick/every")
    assert 2 <= len(runs) <= 3
    ran = [r for r in runs if r.start_time is not None]
    assert len(ran) >= 2
    for run in runs:
        names = [s.name for s in run.states]
        if run.start_time is None:  # (claimed as the server stopped: it ends Cancelled)
            assert names == ["Pending", "Scheduled", "Pending", "Cancelled"], names
            assert run is max(runs, key=lambda r: r.scheduled_time)
            continue
        assert names == ["Pending", "Scheduled", "Pending", "Running", "Completed"], names
        assert run.state_type is StateType.COMPLETED and run.run_count == 1
        assert run.scheduled_time is not None and run.start_time is not None
        assert run.start_time >= run.scheduled_time  # never before its time
        assert run.parameters == {"label": "hi"}
    times = sorted(r.scheduled_time for r in runs)
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(times))


def test_two_serving_processes_run_each_slot_exactly_once(store_url: str, tmp_path: Path) -> None:
    script = tmp_path / "served.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            import anyio
            from asyncflow import flow

            @flow
            def work(n: int = 0) -> int:
                time.sleep(0.05)
                return n

            async def main() -> None:
                with anyio.move_on_after(float(sys.argv[1])):
                    await work.aserve("shared", interval=0.5)

            anyio.run(main)
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen([sys.executable, str(script), "4"], env=env, cwd=ROOT) for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    runs = _deployment_runs(store_url, "work/shared")
    keys = _slot_keys(store_url, "work/shared")
    assert len(runs) >= 5 and len(keys) == len(set(keys)) == len(runs)
    for run in runs:  # claimed once: one attempt each, and every one completed
        assert [s.name for s in run.states].count("Running") == 1
        assert run.state_type is StateType.COMPLETED
    times = sorted(r.scheduled_time for r in runs)
    assert all((b - a).total_seconds() == 0.5 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(("catchup", "expected"), [("latest", 1), ("none", 0), ("all", 4)])
def test_catch_up_after_a_stop(recording: str, catchup: str, expected: int) -> None:
    from asyncflow.deployments.deployment import _json
    from asyncflow.deployments.serve import schedule_key

    hourly = tick.to_deployment("hourly", interval=3600, catchup=catchup, max_catchup=4)
    hourly.apply()
    # the schedule last ran 10 slots ago (a server was stopped meanwhile)
    now = time.time()
    last = (now // 3600 - 10) * 3600
    slot = dt.datetime.fromtimestamp(last, dt.timezone.utc).isoformat()
    store = open_store(recording)
    try:
        session = store.session_for("seeder", "00000000-0000-8000-8000-")
        key = f"tick/hourly|{schedule_key(hourly.schedules[0])}|{slot}"
        store.schedule_runs(
            session, [("old-run", "tick", _json({}), "tick/hourly", last, key, None, "[]")]
        )
        store._query(  # type: ignore[attr-defined]
            lambda c: c.execute(
                "UPDATE runs SET state_type = 'COMPLETED', state_name = 'Completed'"
            )
        )
    finally:
        store.close()

    async def serve_briefly() -> None:
        from asyncflow.deployments.serve import aserve

        with anyio.move_on_after(1.0):
            await aserve(hourly)

    anyio.run(serve_briefly)
    runs = [r for r in _deployment_runs(recording, "tick/hourly") if r.name != "old-run"]
    assert len(runs) == expected
    latest = (now // 3600) * 3600
    if catchup == "latest":
        assert runs[0].scheduled_time.timestamp() == latest
    if catchup == "all":  # the 4 most recent missed slots (max_catchup)
        assert sorted(r.scheduled_time.timestamp() for r in runs) == [
            latest - 3 * 3600, latest - 2 * 3600, latest - 3600, latest,
        ]  # fmt: skip


def test_a_paused_deployment_runs_nothing(recording: str) -> None:
    from asyncflow.deployments.serve import aserve

    deployment = tick.to_deployment("paused", interval=0.5, paused=True)

    async def serve_briefly() -> None:
        with anyio.move_on_after(1.5):
            await aserve(deployment)

    anyio.run(serve_briefly)
    assert _deployment_runs(recording, "tick/paused") == []


def test_a_killed_server_leaves_its_run_crashed(store_url: str, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            from pathlib import Path
            from asyncflow import flow

            @flow
            def slow() -> None:
                (Path(__file__).parent / "running").write_text("")
                time.sleep(60)

            slow.serve("slow", interval=0.5)
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "running").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    runs = _deployment_runs(store_url, "slow/slow")  # (opening the store crashes them)
    states = sorted(r.state_name for r in runs)
    assert "Crashed" in states and "Running" not in states
    # slots still waiting for a claim are not the dead server's: they stay Scheduled
    assert all(s in ("Crashed", "Scheduled") for s in states)


def test_a_killed_server_frees_its_slot_and_the_other_server_goes_on(
    store_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "limited_slow.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            from pathlib import Path
            from asyncflow import flow

            @flow
            def slow() -> None:
                (Path(__file__).parent / f"running-{os.getpid()}").write_text("")
                time.sleep(60 if not (Path(__file__).parent / "quick").exists() else 0.1)

            slow.serve("one", interval=0.5, concurrency_limit=1)
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    procs = {}
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT)
        procs[proc.pid] = proc
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("running-*")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = int(next(tmp_path.glob("running-*")).name.split("-")[1])
        (tmp_path / "quick").write_text("")  # (the runs after this one are short)
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        other = next(pid for pid in procs if pid != first)
        while not (tmp_path / f"running-{other}").exists():  # the limit's slot came free
            assert time.monotonic() < deadline + 30 and procs[other].poll() is None
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
    runs = _deployment_runs(store_url, "slow/one")
    crashed = [r for r in runs if r.state_type is StateType.CRASHED]
    assert len(crashed) == 1 and any(r.state_type is StateType.COMPLETED for r in runs)
    assert not _overlaps([r for r in runs if r.state_type is not StateType.CRASHED])


def test_serve_refuses_bad_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncflow.deployments.serve import aserve, serve

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match="use `await aserve"):
            serve(tick.to_deployment("x", interval=1))

    anyio.run(inside_a_loop)
    with pytest.raises(ValueError, match="needs at least one deployment"):
        anyio.run(aserve)
    with pytest.raises(TypeError, match="takes deployments"):
        anyio.run(aserve, tick)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        anyio.run(lambda: aserve(tick.to_deployment("x"), limit=0))
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    reload_settings()
    try:
        with pytest.raises(StoreError, match="serve\\(\\) needs a run store"):
            anyio.run(aserve, tick.to_deployment("x", interval=1))
    finally:
        monkeypatch.undo()
        reload_settings()


def _overlaps(runs: list[Any]) -> bool:
    """Whether two of these runs were going at the same time (from their stored states)."""
    spans = sorted((r.start_time, r.end_time) for r in runs if r.start_time and r.end_time)
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


@flow
def slow_tick() -> None:
    time.sleep(0.6)


@pytest.mark.parametrize(
    ("options", "cancelled"),
    [
        ({"overlap": "skip"}, False),
        ({"overlap": "buffer_one"}, False),
        ({"concurrency_limit": 1}, False),
        ({"concurrency_limit": ConcurrencyLimitConfig(1, "CANCEL_NEW")}, True),
    ],
)
def test_overlap_policies_and_concurrency_limits_keep_one_run_going(
    recording: str, options: dict[str, Any], cancelled: bool
) -> None:
    from asyncflow.deployments.serve import aserve

    deployment = slow_tick.to_deployment("one", interval=0.25, **options)

    async def serve_briefly() -> None:
        with anyio.move_on_after(2.5):
            await aserve(deployment)

    anyio.run(serve_briefly)
    runs = _deployment_runs(recording, deployment.full_name)
    done = [r for r in runs if r.state_name == "Completed"]
    assert len(done) >= 2 and not _overlaps(done)
    # (the run going when serving stops is cancelled too: not one of these)
    dropped = [r for r in runs if "limit (1) was reached" in (r.state_message or "")]
    assert bool(dropped) == cancelled
    assert all(r.state_name == "Cancelled" for r in dropped)


def test_a_concurrency_limit_holds_across_two_serving_processes(
    store_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "limited.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            import anyio
            from asyncflow import flow

            @flow
            def limited() -> None:
                time.sleep(0.3)

            async def main() -> None:
                with anyio.move_on_after(float(sys.argv[1])):
                    await limited.aserve("one", interval=0.1, concurrency_limit=1)

            anyio.run(main)
            """
        )
    )
    env = {**os.environ, "ASYNCFLOW_STORE": store_url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen([sys.executable, str(script), "3"], env=env, cwd=ROOT) for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    runs = _deployment_runs(store_url, "limited/one")
    ran = [r for r in runs if r.start_time is not None]
    # (from the stored states: the other process, polling, found the limit taken each time)
    assert len(ran) >= 3 and not _overlaps(ran)


def test_a_server_keeps_a_pause_and_runs_carry_the_deployments_metadata(
    recording: str,
) -> None:
    from asyncflow.deployments.serve import aserve, schedule_key

    tick.to_deployment("kept", interval=0.3, paused=True).apply()
    again = tick.to_deployment("kept", interval=0.3)  # paused=None: as stored

    async def serve_briefly() -> None:
        with anyio.move_on_after(1.0):
            await aserve(again)

    anyio.run(serve_briefly)
    assert _deployment_runs(recording, "tick/kept") == []  # still paused
    tagged = tick.to_deployment("tagged", interval=0.3, tags=["nightly"])

    async def serve_tagged() -> None:
        with anyio.move_on_after(1.0):
            await aserve(tagged)

    anyio.run(serve_tagged)
    runs = _deployment_runs(recording, "tick/tagged")
    assert runs and all(r.tags == ("nightly",) for r in runs)
    assert all(r.entrypoint and r.entrypoint.endswith("test_serve.py:tick") for r in runs)
    # a schedule's slot key: its slug, else a digest of its timing (not its position)
    assert schedule_key(Interval(5, slug="a|b")) == "a_b"
    assert schedule_key(Interval(5)) == schedule_key(Interval(5, parameters={"n": 1}))
    assert schedule_key(Interval(5)) != schedule_key(Interval(6))


def test_a_store_error_while_serving_loses_no_slot(
    recording: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncflow.deployments.serve import aserve
    from asyncflow.exceptions import StoreLockedError
    from asyncflow.store._sql_store import SqlStore

    original = SqlStore.schedule_runs
    failures = {"left": 2}

    def flaky(self: Any, session: int, runs: list[Any]) -> int:
        if runs and failures["left"]:
            failures["left"] -= 1
            raise StoreLockedError("Run history database: is locked (a test)")
        return original(self, session, runs)

    monkeypatch.setattr(SqlStore, "schedule_runs", flaky)
    deployment = tick.to_deployment("steady", interval=0.5, catchup="all")

    async def serve_briefly() -> None:
        with anyio.move_on_after(3.0):
            await aserve(deployment)

    anyio.run(serve_briefly)
    assert failures["left"] == 0  # it failed twice, and went on serving
    runs = _deployment_runs(recording, "tick/steady")
    times = sorted(r.scheduled_time for r in runs)
    assert len(times) >= 3
    assert all((b - a).total_seconds() == 0.5 for a, b in itertools.pairwise(times))


def test_pause_on_shutdown_resumes_only_its_own_pause(recording: str) -> None:
    from asyncflow.deployments.serve import aserve

    deployment = tick.to_deployment("paused", interval=3600)

    def paused() -> int:
        store = open_store(recording)
        try:
            row = store.read_deployment("tick/paused")  # type: ignore[attr-defined]
            return int(row["paused"])
        finally:
            store.close()

    async def serve_briefly(seen: list[int]) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: aserve(deployment, pause_on_shutdown=True))
            await anyio.sleep(0.5)
            seen.append(paused())
            group.cancel_scope.cancel()

    seen: list[int] = []
    anyio.run(serve_briefly, seen)
    assert seen == [0] and paused() == 2  # (paused as it stopped)
    anyio.run(serve_briefly, seen)
    assert seen == [0, 0] and paused() == 2  # (its own pause: resumed while serving)
    store = open_store(recording)
    try:
        store.set_deployment_paused("tick/paused", True)  # type: ignore[attr-defined]
    finally:
        store.close()
    anyio.run(serve_briefly, seen)
    assert seen == [0, 0, 1] and paused() == 1  # (an operator's pause: kept)
