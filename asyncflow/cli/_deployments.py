"""`asyncflow deployments ls | inspect | run | pause | resume | delete`: the deployments
the run store knows of, and runs of them on request."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import clip, dumps, local_time, table
from asyncflow.deployments.deployment import describe
from asyncflow.store.base import RunStore


def _schedule_text(data: dict[str, Any]) -> str:
    what = data.get("cron") or data.get("rrule") or f"every {data.get('interval')}s"
    zone = f" ({data['timezone']})" if data.get("timezone") else ""
    return f"{what}{zone}" + ("" if data.get("active", True) else " [inactive]")


async def run(store: RunStore, args: argparse.Namespace) -> int:
    import anyio.to_thread

    command = args.deployments_command
    now = datetime.datetime.now(datetime.timezone.utc)
    if command == "ls":
        rows = await anyio.to_thread.run_sync(store.list_deployments)
        described = [describe(r, now) for r in rows]
        if args.json:
            print(dumps(described))
        elif not described:
            print(f"No deployments in {store.url}.")
        else:
            lines = [
                [
                    clip(d["name"], 50),
                    "; ".join(_schedule_text(s) for s in d["schedules"]) or "-",
                    local_time(datetime.datetime.fromisoformat(d["next_slots"][0]))
                    if d["next_slots"] and not d["paused"]
                    else "-",
                    "yes" if d["paused"] else "no",
                ]
                for d in described
            ]
            print(table(["NAME", "SCHEDULES", "NEXT", "PAUSED"], lines))
        return 0
    name = args.name
    row = await anyio.to_thread.run_sync(store.read_deployment, name)
    if row is None:
        raise CLIError(f"no deployment {name!r} (names are 'flow name/deployment name')")
    if command == "inspect":
        info = describe(row, now)
        if args.json:
            print(dumps(info))
            return 0
        out = [f"Deployment {info['name']!r}"]
        for key in ("flow", "entrypoint", "description", "version", "paused"):
            out.append(f"  {key:<11} {info[key] if info[key] is not None else '-'}")
        out.append(f"  {'parameters':<11} {json.dumps(info['parameters'])}")
        out += ["", "Schedules"]
        for data in info["schedules"] or [{"none": True}]:
            if data.get("none"):
                out.append("  (none)")
                continue
            out.append(f"  {_schedule_text(data)}")
            out += [
                f"    next {local_time(datetime.datetime.fromisoformat(s))}"
                for s in data["next_slots"]
            ]
        print("\n".join(out))
        return 0
    if command in ("pause", "resume"):
        await anyio.to_thread.run_sync(store.set_deployment_paused, name, command == "pause")
        print(f"Deployment {name!r} {'paused' if command == 'pause' else 'resumed'}.")
        return 0
    if not args.yes:
        raise CLIError(f"deleting deployment {name!r} needs --yes (its runs stay in the history)")
    await anyio.to_thread.run_sync(store.delete_deployment, name)
    print(f"Deployment {name!r} deleted.")
    return 0


def run_now(args: argparse.Namespace) -> int:
    """`deployments run NAME --param k=v [--wait]`: queue a run (run_deployment)."""
    from asyncflow.cli._run import parse_params
    from asyncflow.deployments.runs import run_deployment
    from asyncflow.exceptions import ObjectNotFound, ParameterBindError, ParameterTypeError

    raw = parse_params(args.param or [])
    timeout = args.timeout if args.wait else 0
    try:
        parameters = _readings(args.name, raw)
        flow_run = run_deployment(
            args.name, parameters, flow_run_name=args.run_name, timeout=timeout,
            tags=args.tag, idempotency_key=args.idempotency_key, as_subflow=False,
        )  # fmt: skip
    except (ObjectNotFound, ParameterBindError, ParameterTypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    state = flow_run.state
    if args.json:
        print(dumps({
            "id": str(flow_run.id), "name": flow_run.name, "deployment": flow_run.deployment,
            "state_type": state.type.value, "state_name": state.name,
            "state_message": state.message, "parameters": flow_run.parameters,
            "scheduled_time": _iso(flow_run.expected_start_time),
            "start_time": _iso(flow_run.start_time), "end_time": _iso(flow_run.end_time),
        }))  # fmt: skip
    else:
        when = flow_run.expected_start_time
        print(
            f"Flow run {flow_run.name!r} ({flow_run.id}) of {args.name!r}: {state.name}"
            + (f" for {local_time(when)}" if when and not args.wait else "")
            + (f" ({state.message})" if state.message and state.is_final() else "")
        )
    return 0 if not args.wait or state.is_completed() else 1


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _schema(name: str) -> dict[str, Any] | None:
    """The deployment's parameter schema, from the store or through ASYNCFLOW_API_URL."""
    from asyncflow.settings import get_settings
    from asyncflow.store import open_store

    settings = get_settings()
    if settings.api_url is not None and name.count("/") == 1:
        from asyncflow.deployments.remote import ApiClient

        data = ApiClient(settings.api_url, settings.api_key).deployment(name)
        return None if data is None else data["parameter_schema"]
    store: Any = open_store()
    try:
        row = store.read_deployment(name)
    finally:
        store.close()
    return None if row is None else json.loads(row["parameter_schema"])


def _readings(name: str, raw: dict[str, str]) -> dict[str, Any]:
    """Each `--param` value read as JSON when the deployment's schema takes that reading,
    else as the string it is (so `--param label=5` for a str parameter stays "5")."""
    from asyncflow.deployments.parameters import check_parameters
    from asyncflow.exceptions import ParameterTypeError

    schema = _schema(name)
    if schema is None:
        return dict(raw)  # (run_deployment names what is missing)
    chosen: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            value = json.loads(text)
        except ValueError:
            chosen[key] = text
            continue
        one = {**schema, "required": [], "additionalProperties": True}
        try:
            check_parameters(one, {key: value}, "")
            chosen[key] = value
        except ParameterTypeError:
            chosen[key] = text
    return chosen
