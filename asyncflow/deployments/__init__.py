"""Deployments: flows served from a process, on schedules, over the run store (issue 15).

So far: schedules (`asyncflow.deployments.schedules`, also `asyncflow.schedules`).
"""

from __future__ import annotations

__all__: list[str] = []
