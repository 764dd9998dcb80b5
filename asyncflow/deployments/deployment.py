"""A deployment: a flow, a name, default parameters and schedules, registered in the run
store under `"flow name/deployment name"` (Prefect's `RunnerDeployment` and
`flow.to_deployment`).

`deployment.apply()` registers it; the store's `deployments` table is what `asyncflow
deployments ls / inspect` read (with each schedule's next slots), what `run_deployment`
checks parameters against, and what `serve` (asyncflow.deployments.serve) serves.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from asyncflow.deployments.schedules import Cron, Interval, RRule, _Schedule

Strategy = Literal["ENQUEUE", "CANCEL_NEW"]


@dataclass(frozen=True)
class ConcurrencyLimitConfig:
    """At most `limit` runs of a deployment at once, across its serving processes; a run
    over the limit waits (`ENQUEUE`) or ends Cancelled (`CANCEL_NEW`)."""

    limit: int
    collision_strategy: Strategy = "ENQUEUE"

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise ValueError(f"concurrency_limit must be a positive int, got {self.limit!r}.")
        if self.collision_strategy not in ("ENQUEUE", "CANCEL_NEW"):
            raise ValueError(
                "collision_strategy must be 'ENQUEUE' or 'CANCEL_NEW', got "
                f"{self.collision_strategy!r}."
            )


@dataclass
class RunnerDeployment:
    """A deployment of `flow` (made by `flow.to_deployment(...)`)."""

    name: str
    flow: Any = field(repr=False)
    schedules: list[_Schedule] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    version: str | None = None
    paused: bool | None = None  # None: as stored (not paused when new)
    concurrency_limit: ConcurrencyLimitConfig | None = None

    @property
    def flow_name(self) -> str:
        return str(self.flow.name)

    @property
    def full_name(self) -> str:
        """`"flow name/deployment name"`, as runs and the CLI name it."""
        return f"{self.flow_name}/{self.name}"

    def to_row(self) -> dict[str, Any]:
        """The deployment as a row of the store's `deployments` table."""
        limit = self.concurrency_limit
        schema = self.flow.signature.json_schema()
        if not self.flow.signature.has_var_keyword:  # (what run_deployment checks names by)
            schema["additionalProperties"] = False
        return {
            "name": self.full_name,
            "flow_name": self.flow_name,
            "entrypoint": self.flow.entrypoint,
            "description": self.description,
            "version": self.version,
            "tags": json.dumps(sorted(self.tags)),
            "parameters": _json(self.parameters),
            "parameter_schema": json.dumps(schema),
            "schedules": json.dumps([schedule_to_dict(s) for s in self.schedules]),
            "paused": None if self.paused is None else int(self.paused),
            "concurrency_limit": None if limit is None else limit.limit,
            "collision_strategy": None if limit is None else limit.collision_strategy,
        }

    def apply(self) -> str:
        """Register (or update) the deployment in the configured run store; returns its
        full name. StoreError without a store (ASYNCFLOW_STORE=memory)."""
        from asyncflow.exceptions import StoreError
        from asyncflow.store import connect, recording_url

        url = recording_url()
        if url is None:
            raise StoreError(
                f"Deployment {self.full_name!r} needs a run store to be registered in: "
                "ASYNCFLOW_STORE is 'memory'."
            )
        store = connect(url)
        try:
            store.save_deployment(self.to_row())
        finally:
            store.close()
        return self.full_name


def to_deployment(
    flow: Any,
    name: str | None = None,
    *,
    cron: str | list[str] | None = None,
    interval: float | datetime.timedelta | list[Any] | None = None,
    rrule: str | list[str] | None = None,
    schedules: list[_Schedule] | None = None,
    parameters: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
    version: str | None = None,
    paused: bool | None = None,
    concurrency_limit: int | ConcurrencyLimitConfig | None = None,
    timezone: str | None = None,
    catchup: Any = "latest",
    max_catchup: int = 100,
    overlap: Any = "allow",
) -> RunnerDeployment:
    """A deployment of `flow` (see `Flow.to_deployment`); ValueError for bad options."""
    name = flow.name if name is None else name
    if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
        raise ValueError(
            f"Deployment name {name!r} is not valid: a non-empty name without '/' or "
            "surrounding spaces."
        )
    options = {"catchup": catchup, "max_catchup": max_catchup, "overlap": overlap}
    made: list[_Schedule] = []
    for value in _listed(cron):
        made.append(Cron(value, timezone, **options))
    for value in _listed(interval):
        made.append(Interval(value, timezone=timezone, **options))
    for value in _listed(rrule):
        made.append(RRule(value, timezone, **options))
    for schedule in schedules or ():
        if not isinstance(schedule, _Schedule):
            raise ValueError(
                f"schedules must hold Cron, Interval or RRule objects, got {schedule!r}."
            )
        made.append(schedule)
    defaults = dict(parameters or {})
    _check_parameters(flow, defaults, f"Deployment {flow.name}/{name}")
    for schedule in made:
        _check_parameters(flow, schedule.parameters, f"A schedule of {flow.name}/{name}")
    if isinstance(concurrency_limit, int) and not isinstance(concurrency_limit, bool):
        concurrency_limit = ConcurrencyLimitConfig(concurrency_limit)
    elif concurrency_limit is not None and not isinstance(
        concurrency_limit, ConcurrencyLimitConfig
    ):
        raise ValueError(
            "concurrency_limit must be an int or a ConcurrencyLimitConfig, got "
            f"{concurrency_limit!r}."
        )
    return RunnerDeployment(
        name=name,
        flow=flow,
        schedules=made,
        parameters=defaults,
        tags=[str(t) for t in tags or ()],
        description=description,
        version=version,
        paused=None if paused is None else bool(paused),
        concurrency_limit=concurrency_limit,
    )


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_parameters(flow: Any, parameters: dict[str, Any], what: str) -> None:
    """Known names, values valid for their annotations (a run gets the rest when made)."""
    signature = flow.signature
    unknown = sorted(set(parameters) - signature.names)
    if unknown and not signature.has_var_keyword:
        raise ValueError(
            f"{what}: flow {flow.name!r} has no parameter(s) {', '.join(map(repr, unknown))}."
        )
    signature.validate(parameters, frozenset(parameters), what)  # ParameterTypeError
    _json(parameters)


def _json(value: Any) -> str:
    from pydantic_core import to_jsonable_python

    try:
        return json.dumps(to_jsonable_python(value), allow_nan=False)
    except Exception as exc:
        raise ValueError(f"Deployment parameters must be JSON-serializable ({exc}).") from None


#: Next slots shown per schedule.
NEXT_SLOTS = 3


def describe(row: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """A deployment's stored row as JSON data (what `deployments inspect --json` and the
    API show): its schedules each with their next slots from `now`, and the deployment's
    next slots over all of them (ISO 8601, UTC)."""
    schedules = []
    for data in json.loads(row["schedules"]):
        try:
            slots = schedule_from_dict(data).next_slots(NEXT_SLOTS, now)
            data["next_slots"] = [s.isoformat() for s in slots]
        except ValueError as exc:  # a schedule that ended, or one this version cannot read
            data["next_slots"] = []
            data["error"] = str(exc)
        schedules.append(data)
    return {
        "name": row["name"],
        "flow": row["flow_name"],
        "entrypoint": row["entrypoint"],
        "description": row["description"],
        "version": row["version"],
        "tags": json.loads(row["tags"]),
        "parameters": json.loads(row["parameters"]),
        "parameter_schema": json.loads(row["parameter_schema"]),
        "schedules": schedules,
        "next_slots": sorted({s for d in schedules if d.get("active") for s in d["next_slots"]})[
            :NEXT_SLOTS
        ],
        "paused": bool(row["paused"]),
        "concurrency_limit": row["concurrency_limit"],
        "collision_strategy": row["collision_strategy"],
        "created": datetime.datetime.fromtimestamp(
            row["created"], datetime.timezone.utc
        ).isoformat(),
        "updated": datetime.datetime.fromtimestamp(
            row["updated"], datetime.timezone.utc
        ).isoformat(),
    }


# -- schedules as data ----------------------------------------------------------------------------
def schedule_to_dict(schedule: _Schedule) -> dict[str, Any]:
    """A schedule as JSON-able data (the store keeps a deployment's schedules so)."""
    data: dict[str, Any] = {
        "parameters": schedule.parameters,
        "active": schedule.active,
        "catchup": schedule.catchup,
        "max_catchup": schedule.max_catchup,
        "overlap": schedule.overlap,
        "slug": schedule.slug,
    }
    if isinstance(schedule, Cron):
        data.update(kind="cron", cron=schedule.cron, timezone=schedule.timezone)
        data["day_or"] = schedule.day_or
    elif isinstance(schedule, Interval):
        step = schedule.interval
        seconds = step.total_seconds() if isinstance(step, datetime.timedelta) else float(step)
        anchor = schedule._anchor  # type: ignore[attr-defined]
        data.update(kind="interval", interval=seconds, anchor_date=anchor.isoformat())
        data["timezone"] = schedule.timezone
    elif isinstance(schedule, RRule):
        data.update(kind="rrule", rrule=schedule.rrule, timezone=schedule.timezone)
    else:
        raise ValueError(f"Not a schedule: {schedule!r}.")
    return data


def schedule_from_dict(data: dict[str, Any]) -> _Schedule:
    """The schedule `schedule_to_dict` made `data` from."""
    options = {
        k: data[k] for k in ("parameters", "active", "catchup", "max_catchup", "overlap", "slug")
    }
    kind = data.get("kind")
    if kind == "cron":
        return Cron(data["cron"], data.get("timezone"), data.get("day_or", True), **options)
    if kind == "interval":
        anchor = datetime.datetime.fromisoformat(data["anchor_date"])
        return Interval(data["interval"], anchor, data.get("timezone"), **options)
    if kind == "rrule":
        return RRule(data["rrule"], data.get("timezone"), **options)
    raise ValueError(f"Unknown schedule kind {kind!r}.")


__all__ = [
    "NEXT_SLOTS",
    "ConcurrencyLimitConfig",
    "RunnerDeployment",
    "describe",
    "schedule_from_dict",
    "schedule_to_dict",
    "to_deployment",
]
