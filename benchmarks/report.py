"""The console table, the JSON file and the budget check."""

from __future__ import annotations

import json
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROW_IDS, Row

UNIT_SUFFIX = {"us": " µs", "s": " s", "B": " B", "MB": " MB", "/s": "/s"}


def fmt_value(value: float | None, unit: str) -> str:
    """A figure with 3 significant digits and its unit (µs grow into ms and s)."""
    if value is None:
        return "-"
    if unit == "us" and value >= 1e6:
        value, unit = value / 1e6, "s"
    elif unit == "us" and value >= 1e3:
        return _digits(value / 1e3) + " ms"
    return _digits(value) + UNIT_SUFFIX.get(unit, "")


def _digits(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.3g}x"


# -- budgets ------------------------------------------------------------------------------------
@dataclass
class Verdict:
    row_id: str
    rule: str  # e.g. "ratio <= 2", "value <= 0.15 s"
    status: str  # "ok", "FAIL", "not measured"
    detail: str = ""


RULES = {"max_ratio", "max_value", "min_value"}


def load_budgets(path: Path, required: bool) -> dict[str, dict[str, Any]] | None:
    """Parse budgets.toml with tomllib: Python 3.11+ (asyncflow itself supports 3.10).

    Without tomllib, a run that only reports skips the budget column (None); `--check`
    (`required`) stops with a clear message instead, since it cannot do its job.
    """
    try:
        import tomllib
    except ModuleNotFoundError:
        if required:
            sys.exit("--check reads budgets.toml with tomllib, which needs Python 3.11 or newer.")
        return None
    with path.open("rb") as f:
        data = tomllib.load(f)
    for key, table in data.items():
        if key not in ROW_IDS:
            sys.exit(f"{path}: [{key}] is not a row this harness produces; see --list.")
        if not isinstance(table, dict) or not set(table) & RULES:
            sys.exit(f"{path}: [{key}] needs one of {', '.join(sorted(RULES))}.")
    return data


def check(rows: list[Row], budgets: dict[str, dict[str, Any]]) -> list[Verdict]:
    """Apply each budget to its row. Rows that were not run this time are not judged."""
    by_id = {row.id: row for row in rows}
    verdicts = []
    for row_id, table in budgets.items():
        row = by_id.get(row_id)
        if row is None:
            continue  # filtered out with --only
        for rule in sorted(set(table) & RULES):
            limit = float(table[rule])
            figure = row.ratio if rule == "max_ratio" else row.asyncflow
            shown = (
                f"ratio <= {limit:g}"
                if rule == "max_ratio"
                else f"{'<=' if rule == 'max_value' else '>='} {fmt_value(limit, row.unit)}"
            )
            if figure is None:
                verdicts.append(Verdict(row_id, shown, "not measured", row.note))
                continue
            passed = figure >= limit if rule == "min_value" else figure <= limit
            got = fmt_ratio(figure) if rule == "max_ratio" else fmt_value(figure, row.unit)
            verdicts.append(Verdict(row_id, shown, "ok" if passed else "FAIL", got))
    return verdicts


def budget_cell(row: Row, verdicts: list[Verdict]) -> str:
    mine = [v for v in verdicts if v.row_id == row.id]
    if not mine:
        return ""
    return "; ".join(f"{v.rule.replace('ratio ', '')} {v.status}" for v in mine)


# -- table ----------------------------------------------------------------------------------------
HEADERS = ("workload", "N", "asyncflow", "total", "floor", "ratio", "budget", "Prefect (N)", "P/af")


def table(rows: list[Row], verdicts: list[Verdict]) -> str:
    """The console table; per-item figures unless the unit says otherwise."""
    lines = []
    for row in rows:
        prefect = fmt_value(row.prefect, row.unit)
        if row.prefect is not None and row.prefect_n is not None:
            prefect += f" ({row.prefect_n:,})"
        lines.append(
            (
                row.id,
                "-" if row.n is None else f"{row.n:,}",
                fmt_value(row.asyncflow, row.unit),
                "-" if row.total_s is None else fmt_value(row.total_s, "s"),
                fmt_value(row.floor, row.unit),
                fmt_ratio(row.ratio),
                budget_cell(row, verdicts),
                prefect,
                fmt_ratio(row.prefect_ratio),
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEADERS)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for line in lines:
        cells = [
            c.ljust(w) if i in (0, 6) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    notes = [f"  {row.id}: {row.note}" for row in rows if row.note] + [
        f"  {row.id} (Prefect): {row.prefect_note}"
        for row in rows
        if row.prefect_note and "no --prefect-python" not in row.prefect_note
    ]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": mem,
    }


def to_json(rows: list[Row], verdicts: list[Verdict], meta: dict[str, Any], path: Path) -> None:
    data = {
        "meta": meta,
        "rows": [
            {
                "id": row.id,
                "unit": row.unit,
                "n": row.n,
                "asyncflow": row.asyncflow,
                "total_s": row.total_s,
                "floor": row.floor,
                "floor_name": row.floor_name,
                "ratio": row.ratio,
                "prefect": row.prefect,
                "prefect_n": row.prefect_n,
                "prefect_over_asyncflow": row.prefect_ratio,
                "note": row.note or None,
                "prefect_note": row.prefect_note or None,
                "extra": row.extra,
            }
            for row in rows
        ],
        "budgets": [vars(v) for v in verdicts],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
