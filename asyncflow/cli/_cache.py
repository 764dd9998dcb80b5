"""`asyncflow cache ls | clear`: the cache records (and other persisted results) the run
store knows of, listed and deleted without walking the storage directories."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import clip, dumps, local_time, table
from asyncflow.cli._runs import parse_since
from asyncflow.store.base import RunStore, StoredResult


def _older_than(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    if text.strip()[:1].isdigit() and text.strip()[-1:].lower() in "smhdw":
        return parse_since(text)  # an age: that long ago
    raise CLIError(f"bad --older-than {text!r}: use an age like 30m, 12h, 7d or 2w")


async def _matching(store: RunStore, args: argparse.Namespace) -> list[StoredResult]:
    """The records the filters select: one per storage location, judged by its newest row
    (a key written again later is as old as its last write, and belongs to its last writer)."""
    rows = await store.list_results(key_prefix=args.key, cache_only=not args.all)
    older_than = _older_than(args.older_than)
    seen: set[tuple[str, str]] = set()
    records = []
    for row in rows:  # newest first: the first row of a location is its latest writer
        if (row.storage, row.key) in seen:
            continue
        seen.add((row.storage, row.key))
        if args.task is not None and (row.kind != "task" or row.spec_name != args.task):
            continue
        if args.flow is not None and row.flow_name != args.flow:
            continue
        if older_than is not None and row.created >= older_than:
            continue
        records.append(row)
    return records


def _record_dict(record: StoredResult) -> dict[str, Any]:
    return {
        "key": record.key,
        "storage": record.storage,
        "task": record.spec_name if record.kind == "task" else None,
        "flow": record.flow_name,
        "run_id": str(record.run_id),
        "serializer": record.serializer,
        "size": record.size,
        "created": record.created.isoformat(),
        "expires": None if record.expires is None else record.expires.isoformat(),
        "expired": record.expired,
        "cache": record.cache,
    }


async def ls(store: RunStore, args: argparse.Namespace) -> int:
    records = await _matching(store, args)
    if args.json:
        print(dumps([_record_dict(r) for r in records]))
        return 0
    if not records:
        print(f"No {'results' if args.all else 'cache records'} found in {store.url}.")
        return 0
    rows = [
        [
            clip(r.key, 24),
            clip(r.spec_name if r.kind == "task" else f"(flow) {r.spec_name}", 30),
            clip(r.flow_name or "-", 30),
            f"{r.size:,}",
            local_time(r.created),
            "expired" if r.expired else local_time(r.expires) if r.expires else "never",
        ]
        for r in records
    ]
    print(table(["KEY", "TASK", "FLOW", "BYTES", "WRITTEN", "EXPIRES"], rows))
    return 0


async def clear(store: RunStore, args: argparse.Namespace) -> int:
    import anyio.to_thread

    records = await _matching(store, args)
    what = "result(s)" if args.all else "cache record(s)"
    if not records:
        print(f"No {what.replace('(s)', 's')} to clear in {store.url}.")
        return 0
    size = sum(r.size for r in records)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(
                f"clearing {len(records)} {what} needs confirmation: pass --yes (stdin is not "
                "a terminal)"
            )
        prompt = f"Delete {len(records)} {what} ({size:,} bytes)? [y/N] "
        answer = await anyio.to_thread.run_sync(input, prompt)
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    failed = await anyio.to_thread.run_sync(_delete_files, records)
    gone = [(r.storage, r.key) for r in records if (r.storage, r.key) not in failed]
    await anyio.to_thread.run_sync(store.forget_results, gone)
    freed = sum(r.size for r in records if (r.storage, r.key) not in failed)
    print(f"Deleted {len(gone)} {what} ({freed:,} bytes).")
    for (storage, key), error in failed.items():
        print(f"{key!r} in {storage} could not be deleted: {error}", file=sys.stderr)
    return 1 if failed else 0


def _delete_files(records: list[StoredResult]) -> dict[tuple[str, str], str]:
    """Delete each record's file; a file already gone counts as deleted. Returns the
    locations that could not be deleted, with why (their rows are kept)."""
    from asyncflow.results.storage import storage_for

    failed: dict[tuple[str, str], str] = {}
    storages: dict[str, Any] = {}
    for record in records:
        try:
            storage = storages.get(record.storage)
            if storage is None:
                storage = storages[record.storage] = storage_for(record.storage)
            storage.delete(record.key)
        except Exception as exc:
            failed[(record.storage, record.key)] = f"{type(exc).__name__}: {exc}"
    return failed
