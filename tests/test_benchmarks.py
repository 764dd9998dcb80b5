"""Smoke test of the benchmark harness: `--quick` runs every workload and gets numbers.

Not a timing test: the machine is shared and noisy, so figures are only required to exist
(and be positive). Budgets are checked by `python -m benchmarks --check`, not here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORE_READY = importlib.util.find_spec("asyncflow.store.sqlite") is not None


def test_quick_run_produces_numbers_for_every_workload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    rows: dict[str, dict[str, Any]] = {row["id"]: row for row in data["rows"]}

    monkeypatch.syspath_prepend(str(ROOT))  # also when pytest is not run from the repo root
    from benchmarks.workloads import WORKLOADS

    assert {w.name for w in WORKLOADS} <= set(rows), "a workload produced no row"
    for row_id, row in rows.items():
        if row_id.startswith(("task_runs_sqlite", "store_sqlite")) and not STORE_READY:
            # The SQLite store is not built yet: the harness must say so, not crash.
            assert row["asyncflow"] is None
            assert "store not available" in (row["note"] or ""), row
            continue
        assert row["asyncflow"] is not None and row["asyncflow"] > 0, (row_id, row["note"])
        assert not row["note"], (row_id, row["note"])
        if row["floor_name"] is not None:
            assert row["floor"] is not None and row["floor"] > 0, (row_id, row)
            assert row["ratio"] is not None
    assert data["meta"]["mode"] == "quick"
    assert "workload" in result.stdout  # the console table was printed


@pytest.mark.skipif(sys.version_info < (3, 11), reason="budgets.toml is read with tomllib (3.11+)")
def test_budgets_name_only_known_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in budgets.toml would otherwise silently never be checked."""
    import tomllib

    monkeypatch.syspath_prepend(str(ROOT))

    from benchmarks.harness import ROW_IDS

    budgets = tomllib.loads((ROOT / "benchmarks" / "budgets.toml").read_text())
    assert set(budgets) <= ROW_IDS, set(budgets) - ROW_IDS


def test_the_server_benchmark_runs(tmp_path: Path) -> None:
    """`benchmarks/server.py` on a small store: every page and the load give numbers."""
    out = tmp_path / "server.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.server", "--runs", "2000", "--tasks", "50",
         "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())["sqlite"]
    assert data["runs"] == 2000 and set(data["pages"]) >= {"runs", "run_5000_tasks", "flows"}
    assert all(page["p50_ms"] > 0 for page in data["pages"].values())
    for load in (data["api_concurrent"], data["floor_http"]):
        assert load["errors"] == 0 and load["requests_per_second"] > 0
