"""Deployments: flows served from a process, on schedules, over the run store.

`schedules` (also `asyncflow.schedules`): Cron, Interval, RRule. `deployment`:
`flow.to_deployment(...)`, `RunnerDeployment.apply()`. `serve`: `serve` / `aserve` (also
`from asyncflow import serve`). `runs`: `run_deployment` / `arun_deployment`, `FlowRun`,
importable from here as in Prefect (`from asyncflow.deployments import run_deployment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncflow.deployments.runs import FlowRun, arun_deployment, run_deployment


def __getattr__(name: str) -> Any:
    # loaded on first use: `import asyncflow.deployments.schedules` stays light
    if name in ("run_deployment", "arun_deployment", "FlowRun"):
        from asyncflow.deployments import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'asyncflow.deployments' has no attribute {name!r}")


__all__ = ["FlowRun", "arun_deployment", "run_deployment"]
