"""Text and JSON rendering for the CLI: times, durations, tables, trees, run records."""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asyncflow.store.base import StoredRun, StoredState

_UTC = datetime.timezone.utc


def _aware(ts: datetime.datetime) -> datetime.datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=_UTC)


def local_time(ts: datetime.datetime | None, millis: bool = False) -> str:
    """`YYYY-MM-DD HH:MM:SS` (optionally `.mmm`) in the local time zone; '-' for None."""
    if ts is None:
        return "-"
    local = _aware(ts).astimezone()
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}" if millis else text


def iso(ts: datetime.datetime | None) -> str | None:
    """ISO 8601 with an explicit offset (UTC), for JSON."""
    return None if ts is None else _aware(ts).astimezone(_UTC).isoformat()


def duration(delta: datetime.timedelta | None) -> str:
    """`0.012s`, `12.500s`, `1m02s`, `2h03m04s`; '-' for None."""
    if delta is None:
        return "-"
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.3f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, marking the cut with '...'."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def one_line(text: str) -> str:
    """Collapse a multi-line message to one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned fixed-width columns separated by two spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def short_ids(ids: Sequence[str], minimum: int = 8) -> dict[str, str]:
    """The shortest prefix (at least `minimum` long) telling each id apart from the others."""
    ordered = sorted(set(ids))
    result: dict[str, str] = {}
    for i, full in enumerate(ordered):
        common = 0
        for j in (i - 1, i + 1):  # in sorted order, the nearest neighbours share the most
            if 0 <= j < len(ordered):
                other = ordered[j]
                n = 0
                while n < len(full) and n < len(other) and full[n] == other[n]:
                    n += 1
                common = max(common, n)
        length = max(minimum, common + 1)
        while length < len(full) and full[length - 1] == "-":
            length += 1  # never end a prefix on a dash
        result[full] = full[:length]
    return result


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON data (unknown objects become their repr)."""
    from pydantic_core import to_json

    return json.loads(to_json(value, serialize_unknown=True, inf_nan_mode="constants"))


#: Parameter names that look like secrets: their values are masked unless --show-secrets.
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)|secret|credential|api_?key|private_?key|access_?key"
    r"|(^|_)(token|auth|authorization|pwd|cookie)(_|$)",
    re.IGNORECASE,
)
MASK = "********"
show_secrets = False  # set from the command line


def masked(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Parameters with secret-looking names (at any depth) masked, unless show_secrets."""
    if parameters is None or show_secrets:
        return parameters
    return _mask(parameters)  # type: ignore[no-any-return]


def _snake(name: str) -> str:
    """`accessToken` -> `access_token`: camelCase names match like snake_case ones."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).replace("-", "_")


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and SECRET_NAME.search(_snake(k)) else _mask(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def run_dict(run: StoredRun, with_states: bool = False) -> dict[str, Any]:
    """A run as JSON data: ids as strings, ISO timestamps."""
    delta = run.duration
    data: dict[str, Any] = {
        "id": str(run.id),
        "kind": run.kind,
        "name": run.name,
        "spec_name": run.spec_name,
        "state_type": run.state_type.value,
        "state_name": run.state_name,
        "state_message": run.state_message,
        "created": iso(run.created),
        "start_time": iso(run.start_time),
        "end_time": iso(run.end_time),
        "duration_seconds": None if delta is None else delta.total_seconds(),
        "parent_flow_run_id": _str(run.parent_flow_run_id),
        "parent_task_run_id": _str(run.parent_task_run_id),
        "child_flow_run_id": _str(run.child_flow_run_id),
        "parameters": None if run.parameters is None else to_jsonable(masked(run.parameters)),
        "run_count": run.run_count,
        "tags": list(run.tags),
        "entrypoint": run.entrypoint,
        "deployment": run.deployment,
        "scheduled_time": iso(run.scheduled_time),
    }
    if with_states:
        data["states"] = [state_dict(s) for s in run.states]
    return data


def state_dict(state: StoredState) -> dict[str, Any]:
    return {
        "type": state.type.value,
        "name": state.name,
        "message": state.message,
        "timestamp": iso(state.timestamp),
    }


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


# -- trees --------------------------------------------------------------------------------------
@dataclass
class Node:
    """A run in a tree, with the runs nested under it (a subflow sits under its task run)."""

    run: StoredRun
    children: list[Node] = field(default_factory=list)
    more: int = 0  # children left out of the rendering

    def to_dict(self) -> dict[str, Any]:
        data = run_dict(self.run)
        data["children"] = [c.to_dict() for c in self.children]
        if self.more:
            data["children_left_out"] = self.more
        return data


def _branches() -> tuple[str, str, str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "├└│─".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "|-- ", "`-- ", "|   ", "    "
    return "├── ", "└── ", "│   ", "    "


def node_label(run: StoredRun) -> str:
    text = f"{run.kind} {run.name!r} [{run.spec_name}]  {run.state_name}  {duration(run.duration)}"
    if run.state_message and run.state_type.value != "COMPLETED":
        text += f"  {clip(one_line(run.state_message), 80)}"
    return f"{text}  {run.id}"


def render_tree(root: Node, include_root: bool = True, indent: str = "") -> list[str]:
    """The tree under `root` drawn with branch lines, one run per line."""
    tee, last, pipe, space = _branches()
    lines = [indent + node_label(root.run)] if include_root else []

    def walk(node: Node, indent: str) -> None:
        items: list[Node | int] = [*node.children]
        if node.more:
            items.append(node.more)
        for i, item in enumerate(items):
            is_last = i == len(items) - 1
            branch = last if is_last else tee
            if isinstance(item, int):
                lines.append(f"{indent}{branch}... {item} more")
            else:
                lines.append(indent + branch + node_label(item.run))
                walk(item, indent + (space if is_last else pipe))

    walk(root, indent)
    return lines
