"""Schedules for deployments, under Prefect's module name (`from asyncflow.schedules import
Cron`): see `asyncflow.deployments.schedules`."""

from __future__ import annotations

from asyncflow.deployments.schedules import Cron, Interval, RRule, Schedule

__all__ = ["Cron", "Interval", "RRule", "Schedule"]
