"""The caching tests of tests/test_results_caching.py again, recording to a SQLite file and
to PostgreSQL (issue 14 asks for both stores): a cache hit, a miss, expiration, refresh and
the unhashable-input warning do not depend on which store records the runs, and the result
rows they add are checked here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_results_caching import (  # run here with each store recording
    test_a_persisting_task_caches_within_its_flow_run_as_in_prefect,
    test_an_unhashable_input_warns_once_and_runs_uncached,
    test_async_tasks_cache_too,
    test_each_policy_hits_and_misses,
    test_expiration_and_refresh,
)
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow.store import open_store, writer

__all__ = [
    "recording",
    "server_url",
    "store_url",
    "test_a_persisting_task_caches_within_its_flow_run_as_in_prefect",
    "test_an_unhashable_input_warns_once_and_runs_uncached",
    "test_async_tasks_cache_too",
    "test_each_policy_hits_and_misses",
    "test_expiration_and_refresh",
]


@pytest.fixture(autouse=True)
def _recorded(recording: str) -> str:
    """Every test of this module records to the store of `recording` (both of them)."""
    return recording


def test_each_cached_run_has_a_result_row(recording: str, tmp_path: Path) -> None:
    from asyncflow import flow, task
    from asyncflow.cache_policies import INPUTS

    @task(cache_policy=INPUTS, result_storage=tmp_path)
    def once(x: int) -> int:
        return x

    @flow
    def uses() -> list[Any]:
        return [once(1), once(1), once(2)]

    assert uses() == [1, 1, 2]
    writer.flush()
    store = open_store(recording)
    try:
        runs = store.list_runs_sync(kind="task", spec_name="once")
        rows = store.list_results_sync(task="once")
    finally:
        store.close()
    assert sorted(r.state_name for r in runs) == ["Cached", "Completed", "Completed"]
    assert len(rows) == 3 and len({r.key for r in rows}) == 2 and all(r.cache for r in rows)
