"""Variables (issue 14): named JSON values in the run store, shared by processes that use
the same SQLite file or PostgreSQL database; Prefect 3's `Variable` API and its errors."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow.cli import main
from asyncflow.settings import reload_settings
from asyncflow.variables import Variable, list_variables

__all__ = ["recording", "server_url", "store_url"]


def test_set_get_unset_and_overwrite(recording: str) -> None:
    assert Variable.get("missing") is None and Variable.get("missing", 5) == 5
    made = Variable.set("answer", {"n": 42, "items": [1, 2]}, tags=["b", "a"])
    assert made.name == "answer" and made.value == {"n": 42, "items": [1, 2]}
    assert made.tags == ["a", "b"]
    assert Variable.get("answer") == {"n": 42, "items": [1, 2]}
    with pytest.raises(ValueError, match="'answer' already exists; pass overwrite=True"):
        Variable.set("answer", 1)
    assert Variable.get("answer") == {"n": 42, "items": [1, 2]}  # unchanged
    Variable.set("answer", "forty-two", overwrite=True)
    assert Variable.get("answer") == "forty-two"
    Variable.set("when", datetime.date(2026, 12, 1))  # JSON form of a date
    assert Variable.get("when") == "2026-12-01"
    assert [v.name for v in list_variables()] == ["answer", "when"]
    assert Variable.unset("answer") is True and Variable.unset("answer") is False
    assert Variable.get("answer") is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Upper", 1, "is not valid: use 1 to 255 lowercase letters, digits, '_' and '-'"),
        ("has space", 1, "is not valid"),
        ("", 1, "is not valid"),
        ("x" * 256, 1, "is not valid"),
        ("big", "x" * 5000, "5,002 characters as JSON; at most 5,000 are allowed"),
        ("odd", object(), "must be JSON-serializable"),
        ("nan", float("nan"), "must be JSON-serializable"),
    ],
)
def test_bad_names_and_values_are_refused(
    recording: str, name: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Variable.set(name, value)
    if name == "big":
        Variable.set(name, "x" * 4998)  # 5,000 characters with its quotes: allowed
        assert len(Variable.get(name)) == 4998


@pytest.mark.anyio
async def test_async_api(recording: str) -> None:
    await Variable.aset("flag", True)
    assert await Variable.aget("flag") is True
    assert await Variable.aget("other", "d") == "d"
    assert await Variable.aunset("flag") is True


def test_variables_are_shared_between_processes_and_the_cli(
    recording: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "ASYNCFLOW_STORE": recording, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    code = (
        "from asyncflow.variables import Variable\n"
        "Variable.set('from-child', [1, 'two'], tags=['child'])\n"
        "print(Variable.get('from-parent'))\n"
    )
    Variable.set("from-parent", "hello")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"
    assert Variable.get("from-child") == [1, "two"]

    def cli(*args: str) -> tuple[int, str, str]:
        status = main(["--store", recording, "variable", *args])
        out, err = capsys.readouterr()
        return status, out, err

    assert cli("set", "count", "3") == (0, "", "")
    assert Variable.get("count") == 3  # VALUE is read as JSON
    assert cli("set", "word", "not json") == (0, "", "")
    assert cli("get", "word")[1].strip() == "not json"
    assert cli("get", "count", "--json")[1].strip() == "3"
    status, _, err = cli("set", "count", "4")
    assert status == 2 and "already exists" in err
    assert cli("set", "count", "4", "--overwrite", "--tag", "x")[0] == 0
    status, out, _ = cli("ls", "--json")
    listed = {v["name"]: v for v in json.loads(out)}
    assert listed["count"] == {"name": "count", "value": 4, "tags": ["x"]}
    assert "from-child" in cli("ls")[1]
    status, _, err = cli("get", "nothing")
    assert status == 2 and "no variable 'nothing'" in err
    status, _, err = cli("set", "Bad", "1")
    assert status == 2 and "is not valid" in err
    assert cli("unset", "count")[0] == 0
    assert cli("unset", "count")[0] == 2


def test_without_a_store_variables_live_in_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    reload_settings()
    try:
        Variable.set("local", 1)
        assert Variable.get("local") == 1
        with pytest.raises(ValueError, match="already exists"):
            Variable.set("local", 2)
        assert [v.name for v in list_variables()] == ["local"]
        assert Variable.unset("local") and Variable.get("local") is None
    finally:
        monkeypatch.undo()
        reload_settings()
