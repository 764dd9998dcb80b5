"""Typed user code that mypy --strict must accept (tests/test_codebase.py checks it)."""

from __future__ import annotations

from typing import Any

from asyncflow import Flow, State, Task, flow, task


def hook(spec: Any, run: Any, state: State[Any]) -> None:
    return None


@flow(name="typed", retries=1, on_completion=[hook], on_failure=[hook], on_crashed=[hook])
def typed_flow(n: int) -> int:
    return n


@task(tags=["a"], retries=2, retry_jitter_factor=0.5, on_failure=[hook])
def typed_task(x: str) -> str:
    return x


faster: Flow[[int], int] = typed_flow.with_options(retries=0, timeout_seconds=5.0)
renamed: Task[[str], str] = typed_task.with_options(name="renamed")
result: int = typed_flow(3)
