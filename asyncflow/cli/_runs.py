"""`asyncflow runs ls | inspect | tree | result | cancel`: the run history in a store."""

from __future__ import annotations

import argparse
import datetime
import re
from typing import Any, Literal

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import (
    Node,
    clip,
    dumps,
    duration,
    local_time,
    masked,
    one_line,
    render_tree,
    run_dict,
    short_ids,
    table,
)
from asyncflow.states import StateType
from asyncflow.store.base import RunStore, StoredResult, StoredRun

#: Children shown per run by `inspect` (`tree` shows them all).
INSPECT_CHILDREN = 20
_HEX_PREFIX = re.compile(r"^[0-9a-fA-F-]+$")
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_state(text: str) -> StateType:
    """A state type from its name, case-insensitively (`failed` -> FAILED)."""
    try:
        return StateType(text.strip().upper())
    except ValueError:
        valid = ", ".join(t.value.lower() for t in StateType)
        raise CLIError(f"unknown state {text!r} (one of: {valid})") from None


def parse_since(text: str) -> datetime.datetime:
    """`30m`, `2h`, `1d`, `1w` ago, or an ISO date/time (local time unless it has an offset)."""
    match = _SINCE.match(text.strip().lower())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CLIError(
            f"bad --since {text!r}: use an age like 30m, 2h, 1d, or a date like 2024-05-01"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # naive means local time
    return value.astimezone(datetime.timezone.utc)


async def read_run(store: RunStore, run_id: str) -> StoredRun:
    """The run an id or unique id prefix names; CLIError when unknown or ambiguous."""
    text = run_id.strip()
    if not text or not _HEX_PREFIX.match(text):
        raise CLIError(f"{run_id!r} is not a run id (see `asyncflow runs ls` for ids)")
    try:
        return await store.read_run(text)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else f"no run with id {text!r}"
        raise CLIError(one_line(str(message))) from None


# -- ls -----------------------------------------------------------------------------------------
async def ls(store: RunStore, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CLIError("--limit must be at least 1")
    kind: Literal["flow", "task"] | None = None if args.kind == "all" else args.kind
    runs = await store.list_runs(
        kind=kind,
        spec_name=args.flow,
        state=parse_state(args.state) if args.state else None,
        since=parse_since(args.since) if args.since else None,
        limit=args.limit,
    )
    if args.json:
        print(dumps([run_dict(r) for r in runs]))
        return 0
    if not runs:
        what = {"flow": "flow runs", "task": "task runs", "all": "runs"}[args.kind]
        print(f"No {what} found in {store.url}.")
        return 0
    ids = await _display_ids(store, runs)
    headers = ["ID", "NAME", "FLOW", "STATE", "START", "DURATION"]
    if kind != "flow":
        headers = ["ID", "KIND", "NAME", "FLOW/TASK", "STATE", "START", "DURATION"]
    deployed = any(r.deployment for r in runs)  # (a column only when it says something)
    if deployed:
        headers.append("DEPLOYMENT")
    rows = []
    for run in runs:
        cells = [
            ids[str(run.id)],
            clip(run.name, 40),
            clip(run.spec_name, 40),
            run.state_name,
            local_time(run.start_time or run.created),
            duration(run.duration),
        ]
        if kind != "flow":
            cells.insert(1, run.kind)
        if deployed:
            cells.append(clip(run.deployment or "-", 40))
        rows.append(cells)
    print(table(headers, rows))
    return 0


async def _display_ids(store: RunStore, runs: list[StoredRun]) -> dict[str, str]:
    """Short ids for the table, each checked to name exactly its run in the store."""
    shortest = short_ids([str(r.id) for r in runs])
    shown: dict[str, str] = {}
    for full, short in shortest.items():
        if short != full:
            try:
                found = await store.read_run(short)
            except (KeyError, ValueError):
                found = None
            if found is None or str(found.id) != full:
                short = full  # the prefix is shared with a run not in this listing
        shown[full] = short
    return shown


# -- tree ---------------------------------------------------------------------------------------
async def build_tree(store: RunStore, run: StoredRun, max_children: int | None = None) -> Node:
    """`run` with everything under it: task runs, and each subflow under its task run."""
    node = Node(run)
    if run.kind == "task":
        if run.child_flow_run_id is not None:
            child = await store.read_run(run.child_flow_run_id)
            node.children.append(await build_tree(store, child, max_children))
        return node
    kids = await store.children(run.id)
    task_ids = {k.id for k in kids if k.kind == "task"}
    subflow_of_task = {
        k.parent_task_run_id: k
        for k in kids
        if k.kind == "flow" and k.parent_task_run_id in task_ids
    }
    shown = [k for k in kids if not (k.kind == "flow" and k.parent_task_run_id in task_ids)]
    if max_children is not None and len(shown) > max_children:
        node.more = len(shown) - max_children
        shown = shown[:max_children]
    for kid in shown:
        if kid.kind == "task":
            child_node = Node(kid)
            subflow = subflow_of_task.get(kid.id)
            if subflow is not None:
                child_node.children.append(await build_tree(store, subflow, max_children))
            node.children.append(child_node)
        else:
            node.children.append(await build_tree(store, kid, max_children))
    return node


async def tree(store: RunStore, args: argparse.Namespace) -> int:
    root = await build_tree(store, await read_run(store, args.run))
    if args.json:
        print(dumps(root.to_dict()))
    else:
        print("\n".join(render_tree(root)))
    return 0


# -- inspect ------------------------------------------------------------------------------------
async def inspect(store: RunStore, args: argparse.Namespace) -> int:
    run = await read_run(store, args.run)
    root = await build_tree(store, run, None if args.json else INSPECT_CHILDREN)
    if args.json:
        data = run_dict(run, with_states=True)
        stored = await store.result_of(run.id)
        data["result"] = None if stored is None else _result_dict(stored)
        data["children"] = [c.to_dict() for c in root.children]
        print(dumps(data))
        return 0
    lines = [f"{run.kind.capitalize()} run {run.name!r}"]
    fields: list[tuple[str, str]] = [
        ("id", str(run.id)),
        ("flow" if run.kind == "flow" else "task", run.spec_name),
        ("state", f"{run.state_name} ({run.state_type.value})"),
        ("created", local_time(run.created, millis=True)),
        ("started", local_time(run.start_time, millis=True)),
        ("ended", local_time(run.end_time, millis=True)),
        ("duration", duration(run.duration)),
        ("run count", str(run.run_count)),
        ("parent", await _parent_text(store, run)),
    ]
    if run.tags:
        fields.append(("tags", ", ".join(run.tags)))
    if run.deployment:
        fields.append(("deployment", run.deployment))
        fields.append(("scheduled", local_time(run.scheduled_time, millis=True)))
    stored = await store.result_of(run.id)
    if stored is not None:
        fields.append(
            (
                "result",
                f"{stored.serializer}, {stored.size:,} bytes, {stored.key!r} in {stored.storage}",
            )
        )
    lines += [f"  {key:<10} {value}" for key, value in fields]
    if run.state_message:
        lines += ["", "Message", *_indented(run.state_message)]
    lines += ["", "Parameters"]
    parameters = masked(run.parameters)
    if parameters:
        lines += [f"  {k} = {_value_text(v)}" for k, v in parameters.items()]
    else:
        lines.append("  (none)" if run.parameters is not None else "  (not recorded)")
    lines += ["", "State history"]
    for state in run.states:
        line = f"  {local_time(state.timestamp, millis=True)}  {state.name}"
        if state.name.upper() != state.type.value:
            line += f" ({state.type.value})"
        if state.message:
            line += f"  {clip(one_line(state.message), 120)}"
        lines.append(line)
    lines += ["", "Children" if run.kind == "flow" else "Subflow run"]
    children = render_tree(root, include_root=False, indent="  ")
    lines += children or ["  (none)"]
    if root.more:
        lines.append(f"  (first {INSPECT_CHILDREN} shown; `asyncflow runs tree {run.id}` for all)")
    print("\n".join(lines))
    return 0


def _result_dict(stored: StoredResult) -> dict[str, Any]:
    return {
        "storage": stored.storage,
        "key": stored.key,
        "serializer": stored.serializer,
        "size": stored.size,
        "created": stored.created.isoformat(),
        "expires": None if stored.expires is None else stored.expires.isoformat(),
        "cache": stored.cache,
    }


# -- result -------------------------------------------------------------------------------------
async def result(store: RunStore, args: argparse.Namespace) -> int:
    """Print a run's persisted result (its value as text, or as JSON with --json)."""
    import anyio.to_thread

    from asyncflow.exceptions import MissingResult
    from asyncflow.store import missing_result_message

    run = await read_run(store, args.run)
    stored = await store.result_of(run.id)
    if stored is None:
        raise CLIError(missing_result_message(run))
    try:
        value = await anyio.to_thread.run_sync(stored.load)
    except MissingResult as exc:
        raise CLIError(f"the result of {run.kind} run {run.name!r} is gone: {exc}") from None
    except Exception as exc:  # unpickling needs the value's classes importable here
        raise CLIError(
            f"the result of {run.kind} run {run.name!r} cannot be read here "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if args.json:
        from pydantic_core import to_jsonable_python

        print(dumps(to_jsonable_python(value, fallback=repr)))
    else:
        import pprint

        print(value if isinstance(value, str) else pprint.pformat(value, sort_dicts=False))
    return 0


# -- cancel -------------------------------------------------------------------------------------
async def cancel(store: RunStore, args: argparse.Namespace) -> int:
    """Cancel a run, whichever process runs it (see asyncflow.cancel_run)."""
    import anyio.to_thread

    run = await read_run(store, args.run)
    outcome, _ = await anyio.to_thread.run_sync(store.request_cancel, run.id)
    text = {
        "cancelled": "Cancelled (it had not started; it never will).",
        "requested": "Cancel requested: the process running it stops it within a second.",
        "final": f"Not cancelled: it is already {run.state_name}.",
        "task": "Not cancelled: a task run is cancelled with its flow run (cancel that).",
    }[outcome]
    if args.json:
        print(dumps({"id": str(run.id), "name": run.name, "outcome": outcome}))
    else:
        print(f"{run.kind.capitalize()} run {run.name!r} ({run.id}): {text}")
    return 0 if outcome in ("cancelled", "requested") else 1


async def _parent_text(store: RunStore, run: StoredRun) -> str:
    if run.parent_flow_run_id is None:
        return "none (top-level run)" if run.kind == "flow" else "none (called outside a flow)"
    text = await _run_ref(store, "flow run", run.parent_flow_run_id)
    if run.parent_task_run_id is not None:
        text += " via " + await _run_ref(store, "task run", run.parent_task_run_id)
    return text


async def _run_ref(store: RunStore, what: str, run_id: Any) -> str:
    try:
        name = (await store.read_run(run_id)).name
    except (KeyError, ValueError):
        return f"{what} {run_id} (not in the store)"
    return f"{what} {name!r} {run_id}"


def _value_text(value: Any) -> str:
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return clip(text, 200)


def _indented(text: str) -> list[str]:
    return [f"  {line}" for line in text.rstrip().splitlines()]
