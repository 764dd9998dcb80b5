"""Deployments (issue 15, registration): `flow.to_deployment(...)` checks its options and
parameters, `.apply()` registers it in the run store (SQLite and PostgreSQL), and `asyncflow
deployments ls / inspect / pause / resume / delete` read and change it, with each schedule's
next slots."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow import flow
from asyncflow.cli import main
from asyncflow.deployments.deployment import (
    ConcurrencyLimitConfig,
    schedule_from_dict,
    schedule_to_dict,
)
from asyncflow.exceptions import ParameterTypeError, StoreError
from asyncflow.schedules import Cron, Interval, RRule
from asyncflow.settings import reload_settings

__all__ = ["recording", "server_url", "store_url"]


@flow
def report(region: str, days: int = 7, verbose: bool = False) -> str:
    return f"{region}:{days}"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_deployment_is_registered_and_listed_with_its_next_slots(
    recording: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = report.to_deployment(
        "nightly",
        cron="30 2 * * *",
        timezone="America/New_York",
        parameters={"region": "eu"},
        tags=["b", "a"],
        description="The nightly report",
        concurrency_limit=ConcurrencyLimitConfig(2, "CANCEL_NEW"),
    )
    assert deployment.full_name == "report/nightly"
    assert deployment.apply() == "report/nightly"
    hourly = report.to_deployment(interval=dt.timedelta(hours=1), parameters={"region": "us"})
    hourly.apply()  # named as the flow: 'report/report'

    code, out, err = _cli(capsys, "--store", recording, "deployments", "ls", "--json")
    assert code == 0, err
    listed = {d["name"]: d for d in json.loads(out)}
    assert sorted(listed) == ["report/nightly", "report/report"]
    nightly = listed["report/nightly"]
    assert nightly["flow"] == "report" and nightly["tags"] == ["a", "b"]
    assert nightly["parameters"] == {"region": "eu"}
    assert nightly["concurrency_limit"] == 2 and nightly["collision_strategy"] == "CANCEL_NEW"
    assert nightly["entrypoint"].endswith("test_deployments.py:report")
    schema = nightly["parameter_schema"]
    assert schema["required"] == ["region"]
    assert schema["properties"]["days"] == {"default": 7, "title": "Days", "type": "integer"}
    slots = [dt.datetime.fromisoformat(s) for s in nightly["next_slots"]]
    now = dt.datetime.now(dt.timezone.utc)
    assert len(slots) == 3 and all(s > now for s in slots) and slots == sorted(slots)
    assert all(s.astimezone(dt.timezone(dt.timedelta(hours=-5))).minute == 30 for s in slots)
    code, out, _ = _cli(capsys, "--store", recording, "deployments", "ls")
    assert code == 0 and "report/nightly" in out and "30 2 * * * (America/New_York)" in out

    code, out, _ = _cli(capsys, "--store", recording, "deployments", "inspect", "report/report")
    assert code == 0 and "every 3600.0s" in out and out.count("next ") == 3
    # registering again updates it (created stays, parameters change)
    report.to_deployment("nightly", cron="0 3 * * *", parameters={"region": "asia"}).apply()
    code, out, _ = _cli(
        capsys, "--store", recording, "deployments", "inspect", "report/nightly", "--json"
    )
    again = json.loads(out)
    assert again["parameters"] == {"region": "asia"} and again["created"] == nightly["created"]
    assert again["schedules"][0]["cron"] == "0 3 * * *"


def test_pause_resume_and_delete(recording: str, capsys: pytest.CaptureFixture[str]) -> None:
    report.to_deployment("weekly", cron="@weekly", parameters={"region": "eu"}).apply()
    store = ("--store", recording)
    assert _cli(capsys, *store, "deployments", "pause", "report/weekly")[0] == 0
    code, out, _ = _cli(capsys, *store, "deployments", "inspect", "report/weekly", "--json")
    assert json.loads(out)["paused"] is True
    assert _cli(capsys, *store, "deployments", "resume", "report/weekly")[0] == 0
    code, out, _ = _cli(capsys, *store, "deployments", "inspect", "report/weekly", "--json")
    assert json.loads(out)["paused"] is False
    code, _, err = _cli(capsys, *store, "deployments", "delete", "report/weekly")
    assert code == 2 and "needs --yes" in err
    assert _cli(capsys, *store, "deployments", "delete", "report/weekly", "--yes")[0] == 0
    code, _, err = _cli(capsys, *store, "deployments", "inspect", "report/weekly")
    assert code == 2 and "no deployment 'report/weekly'" in err


def test_bad_deployments_are_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="Deployment name 'a/b' is not valid"):
        report.to_deployment("a/b")
    with pytest.raises(ValueError, match="has no parameter\\(s\\) 'region_name'"):
        report.to_deployment("x", parameters={"region_name": "eu"})
    with pytest.raises(ParameterTypeError, match="days"):
        report.to_deployment("x", parameters={"days": "many"})
    with pytest.raises(ValueError, match="Invalid cron expression"):
        report.to_deployment("x", cron="every day")
    with pytest.raises(ValueError, match="schedules must hold Cron, Interval or RRule"):
        report.to_deployment("x", schedules=["0 * * * *"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="concurrency_limit must be a positive int"):
        report.to_deployment("x", concurrency_limit=0)
    with pytest.raises(ValueError, match="collision_strategy must be 'ENQUEUE' or 'CANCEL_NEW'"):
        ConcurrencyLimitConfig(1, "DROP")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="A schedule of report/x: flow 'report' has no"):
        report.to_deployment("x", schedules=[Cron("0 * * * *", parameters={"nope": 1})])
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    reload_settings()
    try:
        with pytest.raises(StoreError, match="needs a run store"):
            report.to_deployment("x").apply()
    finally:
        monkeypatch.undo()
        reload_settings()


@pytest.mark.parametrize(
    "schedule",
    [
        Cron("0 9 * * 1-5", "Europe/Paris", day_or=False, parameters={"days": 1}),
        Interval(
            dt.timedelta(minutes=90),
            anchor_date=dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.timezone.utc),
            catchup="all",
            max_catchup=5,
        ),
        RRule("FREQ=WEEKLY;BYDAY=MO", "UTC", overlap="skip", active=False, slug="mondays"),
    ],
)
def test_schedules_survive_the_store(schedule: Any) -> None:
    again = schedule_from_dict(json.loads(json.dumps(schedule_to_dict(schedule))))
    after = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    assert again.next_slots(4, after) == schedule.next_slots(4, after)
    for option in ("parameters", "active", "catchup", "max_catchup", "overlap", "slug"):
        assert getattr(again, option) == getattr(schedule, option)
