"""Caching (issue 14): cache policies, keys, expiration, refresh, and the unhashable warning."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from asyncflow import flow, task
from asyncflow.cache_policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    NONE,
    RUN_ID,
    TASK_SOURCE,
)
from asyncflow.exceptions import InvalidDefinitionError


def _names(states: list[Any]) -> list[str]:
    return [s.name for s in states]


def test_a_persisting_task_caches_within_its_flow_run_as_in_prefect(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(persist_result=True, result_storage=tmp_path)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @flow
    def runs() -> Any:
        return [
            double(1, return_state=True),
            double(1, return_state=True),
            double(2, return_state=True),
        ]

    first = runs()
    assert _names(first) == ["Completed", "Cached", "Completed"]
    assert [s.result() for s in first] == [2, 2, 4] and calls == [1, 2]
    assert _names(runs()) == ["Completed", "Cached", "Completed"]  # RUN_ID: a new flow run
    assert calls == [1, 2, 1, 2]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (INPUTS, ["Completed", "Cached", "Completed", "Cached"]),  # across flow runs
        (INPUTS - "y", ["Completed", "Cached", "Cached", "Cached"]),  # y left out
        (TASK_SOURCE, ["Completed", "Cached", "Cached", "Cached"]),
        (FLOW_PARAMETERS, ["Completed", "Cached", "Cached", "Completed"]),
        (RUN_ID, ["Completed", "Cached", "Cached", "Completed"]),
        (DEFAULT, ["Completed", "Cached", "Completed", "Completed"]),
        (NO_CACHE, ["Completed", "Completed", "Completed", "Completed"]),
        (INPUTS + FLOW_PARAMETERS, ["Completed", "Cached", "Completed", "Completed"]),
    ],
    ids=repr,
)
def test_each_policy_hits_and_misses(tmp_path: Path, policy: Any, expected: list[str]) -> None:
    @task(cache_policy=policy, result_storage=tmp_path)
    def add(x: int, y: int) -> int:
        return x + y

    @flow
    def runs(p: int) -> Any:
        return (
            add(1, 2, return_state=True),
            add(1, 2, return_state=True),
            add(1, 3, return_state=True),
        )

    one = runs(0)
    two = runs(1)
    seen = [*_names(one), _names(two)[0]]
    # (the 3rd call of the first run and the 1st of the second, per policy)
    assert [seen[0], seen[1], seen[2], seen[3]] == expected
    assert [s.result() for s in one] == [3, 3, 3 if one[2].name == "Cached" else 4]


def test_cache_key_fn_and_its_context(tmp_path: Path) -> None:
    seen: list[Any] = []

    def by_x(context: Any, parameters: dict[str, Any]) -> str | None:
        seen.append((context.task.name, context.flow_run is not None))
        return None if parameters["x"] < 0 else f"x-{parameters['x']}"

    @task(cache_key_fn=by_x, result_storage=tmp_path)
    def ident(x: int, noise: float = 0.0) -> int:
        return x

    @flow
    def runs() -> Any:
        return [
            ident(1, return_state=True),
            ident(1, 0.5, return_state=True),
            ident(-1, return_state=True),
            ident(-1, return_state=True),
        ]

    assert _names(runs()) == ["Completed", "Cached", "Completed", "Completed"]
    assert (tmp_path / "x-1").is_file()
    assert seen[0] == ("ident", True)


def test_expiration_and_refresh(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(
        cache_policy=INPUTS,
        cache_expiration=datetime.timedelta(seconds=0.3),
        result_storage=tmp_path,
    )
    def slow(x: int) -> int:
        calls.append(x)
        return x

    @flow
    def once() -> str:
        return slow(1, return_state=True).name

    assert once() == "Completed"
    assert once() == "Cached"
    time.sleep(0.4)
    assert once() == "Completed"  # the record expired: a miss
    refreshing = slow.with_options(refresh_cache=True)

    @flow
    def refreshed() -> str:
        return refreshing(1, return_state=True).name

    assert refreshed() == "Completed" and once() == "Cached"
    assert calls == [1, 1, 1]


def test_an_unhashable_input_warns_once_and_runs_uncached(tmp_path: Path, logs: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=tmp_path)
    def takes(lock: Any) -> int:
        return 1

    @flow
    def runs() -> Any:
        lock = threading.Lock()
        return [takes(lock, return_state=True) for _ in range(5)]

    assert _names(runs()) == ["Completed"] * 5
    warnings = [r for r in logs.records if "runs uncached" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert warnings[0].name.startswith("asyncflow")
    assert "cache_policy=INPUTS - 'name'" in warnings[0].getMessage()


def test_persist_result_false_turns_caching_off(tmp_path: Path) -> None:
    @task(cache_policy=INPUTS, persist_result=False, result_storage=tmp_path)
    def never(x: int) -> int:
        return x

    @flow
    def runs() -> Any:
        return [never(1, return_state=True), never(1, return_state=True)]

    assert _names(runs()) == ["Completed", "Completed"]
    assert list(tmp_path.iterdir()) == []


def test_a_cache_hit_with_the_value_not_kept_in_memory(tmp_path: Path) -> None:
    @task(cache_policy=INPUTS, cache_result_in_memory=False, result_storage=tmp_path)
    def big(n: int) -> list[int]:
        return list(range(n))

    @flow
    def runs() -> Any:
        return big(5), big(5, return_state=True)

    value, hit = runs()
    assert value == list(range(5)) and hit.name == "Cached" and hit.result() == list(range(5))


@pytest.mark.anyio
async def test_async_tasks_cache_too(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS, result_storage=tmp_path)
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    @flow
    async def runs() -> Any:
        first = await square(3, return_state=True)
        future = square.submit(3)
        await future
        return [first, future.state]

    states = await runs()
    assert _names(states) == ["Completed", "Cached"] and calls == [3]


def test_bad_cache_options() -> None:
    with pytest.raises(InvalidDefinitionError, match="cache_policy must be a cache policy"):
        task(cache_policy="INPUTS")(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(InvalidDefinitionError, match="cache_key_fn must be callable"):
        task(cache_key_fn=3)(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(InvalidDefinitionError, match=r"positive datetime\.timedelta"):
        task(cache_expiration=5)(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(InvalidDefinitionError, match="refresh_cache must be True or False"):
        task(refresh_cache="yes")(lambda: None)  # type: ignore[call-overload]
    assert NONE is NO_CACHE
    assert repr(INPUTS - "a" + TASK_SOURCE) == "INPUTS - 'a' + TASK_SOURCE"


def test_no_policy_no_persistence_means_no_key_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncflow.results import cache_policies

    def fail(*args: Any) -> str:
        raise AssertionError("a key was computed")

    monkeypatch.setattr(cache_policies, "hash_objects", fail)

    @task
    def plain(x: int) -> int:
        return x

    @flow
    def runs() -> int:
        return plain(1) + plain(1)

    assert runs() == 2 and plain.lifecycle == ()


def test_a_corrupt_cache_record_is_a_miss(tmp_path: Path) -> None:
    @task(cache_key_fn=lambda context, parameters: "fixed", result_storage=tmp_path)
    def value() -> int:
        return 5

    @flow
    def runs() -> Any:
        return value(return_state=True)

    assert runs().name == "Completed"
    blob = (tmp_path / "fixed").read_bytes()
    (tmp_path / "fixed").write_bytes(blob[: blob.index(b"\n", 5) + 1] + b"not a pickle")
    again = runs()
    assert again.name == "Completed" and again.result() == 5  # ran again, rewrote it
    assert runs().name == "Cached"


def test_a_retried_flow_attempt_does_not_rerun_its_persisted_tasks(tmp_path: Path) -> None:
    """@flow(retries=...): tasks that completed and persisted in the first attempt are
    restored in the second (named Restored: see tests/test_results_restart.py)."""
    executed: list[str] = []

    @task(persist_result=True, result_storage=tmp_path)
    def step(name: str) -> str:
        executed.append(name)
        return name

    attempts: list[int] = []

    @flow(retries=1)
    def pipeline() -> list[str]:
        attempts.append(1)
        done = [step("a"), step("b")]
        if len(attempts) == 1:
            raise RuntimeError("fails after b, the first time")
        return [*done, step("c")]

    state = pipeline(return_state=True)
    assert state.is_completed() and state.result() == ["a", "b", "c"]
    assert executed == ["a", "b", "c"]  # a and b ran once: the retry restored them
    from asyncflow.registry import get_registry

    names = [r.states[-1].name for r in get_registry().runs(kind="task", spec_name="step")]
    assert names == ["Completed", "Completed", "Restored", "Restored", "Completed"]


def test_a_policy_of_ones_own_may_hash_inputs_of_its_own(tmp_path: Path) -> None:
    """INPUTS.compute_key called by a policy with dicts of its own digests those dicts (the
    per-run digest shared by the cache and restore keys is for the run's inputs only)."""
    from asyncflow.cache_policies import INPUTS, CachePolicy

    class SortedItems(CachePolicy):
        def compute_key(self, run: Any, inputs: dict[str, Any]) -> str | None:
            return INPUTS.compute_key(run, {"items": sorted(inputs["items"])})

    calls: list[list[int]] = []

    @task(cache_policy=SortedItems(), result_storage=tmp_path)
    def total(items: list[int]) -> int:
        calls.append(items)
        return sum(items)

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return str(INPUTS.compute_key(context, parameters))  # a context has no hook data

    @task(cache_key_fn=key_fn, result_storage=tmp_path)
    def doubled(x: int) -> int:
        return 2 * x

    @flow
    def sums() -> list[int]:
        return [total([1, 2]), total([2, 1]), total([1, 3]), doubled(4), doubled(4)]

    assert sums() == [3, 3, 4, 8, 8]
    assert calls == [[1, 2], [1, 3]]
