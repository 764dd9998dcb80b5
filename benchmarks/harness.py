"""Running the workloads on all sides and turning their results into table rows."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.children import REPO, Outcome, run_child
from benchmarks.workloads import WORKLOADS, Workload

AF_TIMEOUT = {True: 180.0, False: 900.0}  # asyncflow and floor children, quick / full
PREFECT_TIMEOUT = {True: 30.0, False: 120.0}

# Every row a run can produce: one per workload, plus these extra figures.
ROW_IDS = {w.name for w in WORKLOADS} | {
    "hello_flow.peak_rss",
    "task_runs_batched.peak_rss",
    "task_runs_batched.rss_after_drop",
    "task_runs_batched.retained_rss",
    "task_runs_sqlite.transitions_per_s",
    "store_sqlite.transitions_per_s",
}


@dataclass
class Row:
    """One line of the table: a figure for asyncflow, its floor and Prefect's."""

    id: str  # the key budgets use
    unit: str  # "us" (per item), "s", "B" (per item), "MB", "/s"
    n: int | None
    asyncflow: float | None
    total_s: float | None = None  # asyncflow's whole-workload seconds, where per item
    floor: float | None = None
    floor_name: str | None = None
    prefect: float | None = None
    prefect_n: int | None = None
    note: str = ""  # asyncflow-side problem or unavailability
    prefect_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.asyncflow is None or not self.floor:
            return None
        return self.asyncflow / self.floor

    @property
    def prefect_ratio(self) -> float | None:
        """Prefect / asyncflow (higher: asyncflow is that many times faster or smaller)."""
        if self.prefect is None or not self.asyncflow:
            return None
        return self.prefect / self.asyncflow


def _problem(outcome: Outcome) -> str:
    return outcome.unavailable or outcome.error or "no result"


class Harness:
    """Runs children for one benchmark run and keeps their outcomes (floors are shared)."""

    def __init__(
        self,
        quick: bool,
        prefect_python: str | None,
        prefect_timeout: float | None,
        log: Callable[[str], None],
    ) -> None:
        self.quick = quick
        self.prefect_python = prefect_python
        self.prefect_timeout = prefect_timeout or PREFECT_TIMEOUT[quick]
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="asyncflow-bench-"))
        self.prefect_version: str | None = None
        self._cache: dict[tuple[str, str, int, str], Outcome] = {}
        self._floor_samples: dict[tuple[str, int], list[Outcome]] = {}

    # -- environments -------------------------------------------------------------------------
    def _pythonpath(self) -> str:
        old = os.environ.get("PYTHONPATH")
        return str(REPO) if not old else f"{REPO}{os.pathsep}{old}"

    def asyncflow_env(self, store: str = "memory") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFLOW_")}
        home = Path(tempfile.mkdtemp(prefix="home-", dir=self.tmp))
        env.update(
            PYTHONPATH=self._pythonpath(),
            ASYNCFLOW_LOGGING_LEVEL="WARNING",
            ASYNCFLOW_STORE=store,
            ASYNCFLOW_HOME=str(home),
        )
        return env

    def prefect_env(self) -> dict[str, str]:
        # A clean Prefect: no profile or API URL of the user's, its own home (database) here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PYTHONPATH=self._pythonpath(),
            PREFECT_HOME=str(self.tmp / "prefect-home"),
            PREFECT_LOGGING_LEVEL="WARNING",
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        return env

    # -- children -----------------------------------------------------------------------------
    def _run(self, side: str, name: str, n: int, repeats: int, store: str = "memory") -> Outcome:
        """One child for `side` ("asyncflow", "floor", "prefect"); reused within this run."""
        key = (side, name, n, store)
        if key not in self._cache:
            self._cache[key] = self._child(side, name, n, repeats, store)
        return self._cache[key]

    def _child(self, side: str, name: str, n: int, repeats: int, store: str = "memory") -> Outcome:
        """A fresh child for `side` running workload `name`."""
        args = [name, str(n), str(repeats)]
        return self._fresh_processes(side, args, 1, f"benchmarks.side_{side}", store)[0]

    def _fresh_processes(
        self, side: str, args: list[str], repeats: int, module: str, store: str = "memory"
    ) -> list[Outcome]:
        """Up to `repeats` fresh children (stops at the first that fails)."""
        if side == "prefect":
            assert self.prefect_python is not None
            python, timeout = self.prefect_python, self.prefect_timeout
        else:
            python, timeout = sys.executable, AF_TIMEOUT[self.quick]
        outcomes = []
        for _ in range(repeats):
            # A fresh environment per child: each gets an ASYNCFLOW_HOME of its own.
            env = self.prefect_env() if side == "prefect" else self.asyncflow_env(store)
            outcome = run_child(python, module, args, env, timeout, self.tmp)
            outcomes.append(outcome)
            if not outcome.ok:
                break
        return outcomes

    # -- workloads ----------------------------------------------------------------------------
    def run(self, w: Workload) -> list[Row]:
        start = time.perf_counter()
        if w.name == "import":
            rows = self._import(w)
        elif w.name == "hello_flow":
            rows = self._hello(w)
        elif w.name == "task_runs_batched":
            rows = self._batched(w)
        elif w.name == "task_runs_retained":
            rows = self._retained(w)
        elif w.name == "task_runs_sqlite":
            rows = self._store(w, "task_runs_batched")
        elif w.name == "store_sqlite":
            rows = self._store(w, "store_sequential")
        elif w.name == "flow_calls_flat":
            rows = self._flat(w)
        else:
            rows = [self._per_item(w)]
        self.log(f"  {w.name}: {time.perf_counter() - start:.1f} s")
        return rows

    def _prefect(self, w: Workload, row: Row, key: str = "per_item_us") -> Outcome | None:
        pn = w.prefect_n(self.quick)
        if self.prefect_python is None:
            row.prefect_note = "not run (no --prefect-python)"
            return None
        if pn is None:
            row.prefect_note = w.prefect_note or "not run on Prefect"
            return None
        outcome = self._run("prefect", w.name, pn, 1)
        row.prefect_n = pn
        if outcome.result is not None and key in outcome.result:
            row.prefect = outcome.result[key]
            if outcome.error:  # the figure was written, then something went wrong
                row.prefect_note = f"after the figure: {outcome.error}"
        else:
            row.prefect_note = _problem(outcome)
        return outcome

    def _per_item(self, w: Workload) -> Row:
        """Best per-item figure; in full mode short workloads alternate the two sides' processes.

        Alternating (asyncflow, floor, asyncflow, floor) means a burst of load from other
        users of the machine hits both sides, not just one, so the ratio is steadier. Floor
        samples are pooled across the rows that share a floor.
        """
        n = w.n(self.quick)
        rounds = 1 if w.repeats == 1 or self.quick else 2  # quick: a smoke run, keep it short
        samples: list[Outcome] = []
        floor_samples = self._floor_samples.setdefault((w.floor or "", n), [])
        for _ in range(rounds):
            samples.append(self._child("asyncflow", w.name, n, w.repeats))
            if w.floor is not None:
                floor_samples.append(self._child("floor", w.floor, n, w.repeats))
        af = _best(samples)
        self._cache[("asyncflow", w.name, n, "memory")] = af
        row = Row(w.name, "us", n, af.get("per_item_us"), total_s=af.get("seconds"))
        if not af.ok or af.error:
            row.note = _problem(af)
        if af.result is not None:
            row.extra = {k: v for k, v in af.result.items() if k not in {"emitted_at"}}
            row.extra["processes"] = len(samples)
        if w.floor is not None:
            fl = _best(floor_samples)
            row.floor, row.floor_name = fl.get("per_item_us"), w.floor
            if not fl.ok:
                row.note = (row.note + "; " if row.note else "") + f"floor: {_problem(fl)}"
        self._prefect(w, row)
        return row

    def _import(self, w: Workload) -> list[Row]:
        def best(side: str, modules: str, repeats: int) -> tuple[float | None, Outcome]:
            outcomes = self._fresh_processes(side, [modules], repeats, "benchmarks.side_import")
            figures = [o.get("seconds") for o in outcomes if o.ok]
            return (min(figures) if figures else None), outcomes[-1]

        af, af_outcome = best("asyncflow", "asyncflow", w.repeats)
        floor, _ = best("asyncflow", "anyio,pydantic,sniffio", w.repeats)
        row = Row("import", "s", None, af, floor=floor, floor_name="import anyio,pydantic,sniffio")
        if af is None:
            row.note = _problem(af_outcome)
        if self.prefect_python is None:
            row.prefect_note = "not run (no --prefect-python)"
        else:
            prefect, outcome = best("prefect", "prefect", 3)
            row.prefect = prefect
            self.prefect_version = outcome.get("version")
            if prefect is None:
                row.prefect_note = _problem(outcome)
        return [row]

    def _hello(self, w: Workload) -> list[Row]:
        """Whole-process wall time (best of fresh processes) and that process's peak RSS."""

        def best(side: str, module: str, repeats: int) -> tuple[float | None, float | None, str]:
            outcomes = self._fresh_processes(side, ["hello_flow", "1", "1"], repeats, module)
            good = [o for o in outcomes if o.ok and not o.error]
            if not good:
                return None, None, _problem(outcomes[-1])
            fastest = min(good, key=lambda o: o.wall_s)
            return fastest.wall_s, fastest.get("peak_rss_bytes"), ""

        af, af_rss, problem = best("asyncflow", "benchmarks.side_asyncflow", w.repeats)
        floor, _, _ = best("asyncflow", "benchmarks.side_floor", w.repeats)
        row = Row("hello_flow", "s", None, af, floor=floor, floor_name="process importing deps")
        row.note = problem
        rss = Row("hello_flow.peak_rss", "MB", None, _mb(af_rss))
        if self.prefect_python is None:
            row.prefect_note = rss.prefect_note = "not run (no --prefect-python)"
        else:
            # Two runs: the first also creates Prefect's database; the better one is shown.
            p, p_rss, problem = best("prefect", "benchmarks.side_prefect", 1 if self.quick else 2)
            row.prefect, rss.prefect = p, _mb(p_rss)
            row.prefect_note = rss.prefect_note = problem
        return [row, rss]

    def _batched(self, w: Workload) -> list[Row]:
        row = self._per_item(w)
        ex = row.extra
        peak = Row("task_runs_batched.peak_rss", "MB", row.n, _mb(ex.get("peak_rss_bytes")))
        after = Row("task_runs_batched.rss_after_drop", "MB", row.n, _mb(ex.get("rss_after_bytes")))
        retained = Row(
            "task_runs_batched.retained_rss",
            "B",
            row.n,
            ex.get("retained_rss_bytes_per_task"),
        )
        outcome = self._cache.get(("prefect", w.name, row.prefect_n or -1, "memory"))
        for extra_row, key in (
            (peak, "peak_rss_bytes"),
            (after, "rss_after_bytes"),
            (retained, "retained_rss_bytes_per_task"),
        ):
            extra_row.note = row.note
            extra_row.prefect_note = row.prefect_note
            if outcome is not None and outcome.get(key) is not None:
                value = outcome.get(key)
                extra_row.prefect = value if extra_row.unit == "B" else _mb(value)
                extra_row.prefect_n = row.prefect_n
        return [row, peak, after, retained]

    def _retained(self, w: Workload) -> list[Row]:
        n = w.n(self.quick)
        af = self._run("asyncflow", w.name, n, 1)
        row = Row(w.name, "B", n, af.get("bytes_per_task"))
        row.note = "" if af.ok and not af.error else _problem(af)
        row.prefect_note = w.prefect_note
        return [row]

    def _flat(self, w: Workload) -> list[Row]:
        """RSS growth per flow call once warm, with the SQLite store recording every run."""
        n = w.n(self.quick)
        af = self._run("asyncflow", w.name, n, 1, "sqlite")
        row = Row(w.name, "B", n, af.get("bytes_per_call"), total_s=af.get("seconds"))
        row.note = "" if af.ok and not af.error else _problem(af)
        if af.result is not None:
            row.extra = {k: v for k, v in af.result.items() if k != "emitted_at"}
        row.prefect_note = w.prefect_note
        return [row]

    def _store(self, w: Workload, child: str) -> list[Row]:
        """SQLite store vs memory store on the same child workload, fresh processes each.

        Both are timed from the flow call to the process's exit, so whatever a store leaves
        to be written at exit is counted. Best of `w.repeats` processes per store.
        """
        n = w.n(self.quick)
        row = Row(w.name, "us", n, None, floor_name="memory store")
        tps = Row(f"{w.name}.transitions_per_s", "/s", n, None)
        row.prefect_note = tps.prefect_note = w.prefect_note

        def best(store: str) -> tuple[float | None, Outcome]:
            if w.repeats == 1:  # one big run: share it with the workload that has it
                outcomes = [self._run("asyncflow", child, n, 1, store)]
            else:
                args = [child, str(n), "1"]
                outcomes = self._fresh_processes(
                    "asyncflow", args, w.repeats, "benchmarks.side_asyncflow", store
                )
            timed = [
                (o.get("seconds") + o.exit_s, o)
                for o in outcomes
                if o.ok and not o.error and o.exit_s is not None
            ]
            if not timed:
                return None, outcomes[-1]
            return min(timed, key=lambda pair: pair[0])

        memory_s, memory = best("memory")
        sqlite_s, sqlite = best("sqlite")
        if memory_s is not None:
            row.floor = memory_s / n * 1e6
        else:
            row.note = f"memory store: {_problem(memory)}"
        if sqlite_s is None:
            row.note = tps.note = _problem(sqlite)
            return [row, tps]
        row.asyncflow, row.total_s = sqlite_s / n * 1e6, sqlite_s
        tps.asyncflow = sqlite.get("transitions") / sqlite_s
        from benchmarks.side_asyncflow import count_stored_transitions

        home = sqlite.get("home")
        row.extra = {
            "exit_s": sqlite.exit_s,
            "flow_seconds": sqlite.get("seconds"),
            "transitions": sqlite.get("transitions"),
            "stored_transitions_incl_warm_up": count_stored_transitions(Path(home))
            if home
            else None,
            "store_files": sqlite.get("store_files"),
            "memory_store_exit_s": memory.exit_s,
        }
        return [row, tps]


def _best(outcomes: list[Outcome]) -> Outcome:
    """The outcome with the lowest per-item figure (a failed one if all failed)."""
    good = [o for o in outcomes if o.ok and o.get("per_item_us") is not None]
    return min(good, key=lambda o: o.get("per_item_us")) if good else outcomes[-1]


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 2**20
