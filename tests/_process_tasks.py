"""Module-level tasks for ProcessPoolTaskRunner tests (workers import them by reference)."""

from __future__ import annotations

import os

from asyncflow import task


@task
def cpu_bound(n: int) -> tuple[int, int]:
    """Sum of squares below n, with the pid of the process that computed it."""
    return os.getpid(), sum(i * i for i in range(n))


@task
def echo(value):
    return value


@task
def fail_in_worker(message: str) -> None:
    raise ValueError(message)


@task
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds
