"""Spill files: run history that could not reach its store yet, kept on local disk.

The writer spills when its store has failed for so long that the backlog held in memory
passes `ASYNCFLOW_STORE_BACKLOG` states, and at exit when the final flush could not finish
within `ASYNCFLOW_STORE_EXIT_TIMEOUT`. A file holds encoded write batches for one store and
one process, under `$ASYNCFLOW_HOME/spill/`. They are written to the store in order:

- by the process that spilled them, as soon as its store works again (before anything newer
  of its own, so a state never lands before the run it belongs to);
- by the next process on this host that opens that store, once the spilling process is gone
  (before crash detection, so a run that finished is not marked Crashed). Runs the dead
  process left open are then marked Crashed, as crash detection would have.

Writing a batch twice is harmless (the stores' writes are idempotent), so a replay cut short
by a crash is simply done again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

from asyncflow.store.base import WriteBatch, crash_reason

if TYPE_CHECKING:
    from asyncflow.store._sql_store import SqlStore

logger = logging.getLogger("asyncflow.store")

#: 2: new runs' rows carry tags and an entrypoint (version 1 files are still read).
SPILL_VERSION = 2
_SUFFIX = ".spill"
_replay_lock = threading.Lock()  # one replay at a time in this process


@dataclass(slots=True)
class Spill:
    """What one spill file holds: one process's batches for one store."""

    process_id: str
    pid: int
    hostname: str
    started: float
    #: (id prefix of the registry, its session in the store if it has one, the batch)
    batches: list[tuple[str, int | None, WriteBatch]] = field(default_factory=list)
    #: set at exit: the runs its process left open are then marked Crashed with this reason
    end_reason: str | None = None

    @property
    def runs(self) -> int:
        return sum(b.run_end - b.run_start for _, _, b in self.batches)

    @property
    def states(self) -> int:
        return sum(b.transition_end - b.transition_start for _, _, b in self.batches)


def spill_dir() -> Path:
    from asyncflow.settings import get_settings

    return get_settings().home / "spill"


def _tag(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def save(url: str, spill: Spill, seq: int) -> Path:
    """Write `spill` atomically (temp file, fsync, rename); returns its path. OSError when
    the disk refuses it too."""
    directory = spill_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{_tag(url)}.{spill.pid}.{int(spill.started * 1000)}.{seq:06d}{_SUFFIX}"
    path = directory / name
    temp = directory / f".{name}.tmp"
    data = pickle.dumps((SPILL_VERSION, spill), protocol=pickle.HIGHEST_PROTOCOL)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _files(url: str) -> list[tuple[int, int, int, Path]]:
    """(pid, started ms, seq, path) of the spill files for `url`, oldest first per process."""
    directory = spill_dir()
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    tag = _tag(url) + "."
    found = []
    for name in names:
        if not (name.startswith(tag) and name.endswith(_SUFFIX)):
            continue
        try:
            pid, started, seq = (int(part) for part in name[len(tag) : -len(_SUFFIX)].split("."))
        except ValueError:
            continue
        found.append((pid, started, seq, directory / name))
    found.sort()
    return found


def has_files(url: str) -> bool:
    return bool(_files(url))


def _load(path: Path) -> Spill | None:
    try:
        with open(path, "rb") as f:
            version, spill = pickle.load(f)
    except FileNotFoundError:
        return None  # replayed by another process meanwhile
    except Exception as exc:
        logger.error("Run history: spill file %s cannot be read (%s); left in place.", path, exc)
        return None
    if version not in (1, SPILL_VERSION) or not isinstance(spill, Spill):
        logger.error("Run history: spill file %s is from another asyncflow; left in place.", path)
        return None
    return spill


def replay(store: SqlStore, url: str, own: tuple[int, float] | None = None) -> tuple[int, int]:
    """Write the spill files for `url` into `store`; returns (runs, states) written.

    Files of processes that are gone are written (and their open runs crashed); those of live
    processes are left to them, except this process's own when `own` = (pid, started) is
    given. Raises the store's error when a write fails (the file stays for next time).
    """
    runs = states = 0
    here, now = socket.gethostname(), time.time()
    with _replay_lock:
        files = _files(url)
        for (pid, started_ms), group in groupby(files, key=lambda f: (f[0], f[1])):
            paths = [f[3] for f in group]
            mine = own is not None and pid == own[0] and started_ms == int(own[1] * 1000)
            if pid == os.getpid() and not mine:
                continue  # this process's, but not the writer's turn
            claim: Path | None = None
            if not mine:
                reason = crash_reason(pid, here, started_ms / 1000, now, here, now)
                if reason is None:
                    continue  # alive: it writes its own files, in its own order
                # one claim for the process's files (named without the file's sequence)
                claim = _claim(paths[0].with_name(paths[0].name.rsplit(".", 2)[0] + ".claim"))
                if claim is None:
                    continue  # another process on this host is writing them
            try:
                runs, states = _replay_group(store, paths, here, pid, mine, runs, states)
            finally:
                if claim is not None:
                    claim.unlink(missing_ok=True)
    if runs or states:
        logger.info(
            "Run history: wrote %d run(s) and %d state(s) from spill files into %s.",
            runs,
            states,
            store.url,
        )
    return runs, states


def _replay_group(
    store: SqlStore, paths: list[Path], here: str, pid: int, mine: bool, runs: int, states: int
) -> tuple[int, int]:
    """Write one process's files, in order; then, if it is gone, crash what it left open."""
    sessions: dict[str, int] = {}
    last: Spill | None = None
    for path in paths:
        spill = _load(path)
        if spill is None or spill.hostname != here:
            break  # unreadable (kept for a person), or another host's: the rest must wait
        for id_prefix, _, batch in spill.batches:
            session = sessions.get(id_prefix)
            if session is None:
                session = sessions[id_prefix] = store.session_for(
                    spill.process_id, id_prefix, spill.pid, spill.hostname, spill.started
                )
            store.write(batch, session)
        runs += spill.runs
        states += spill.states
        last = spill
        path.unlink(missing_ok=True)
    if last is not None and not mine:
        why = last.end_reason or (
            f"The process that ran it (pid {pid} on {here}) died before it finished."
        )
        store.end_process(last.process_id, why, force=True)
    return runs, states


def _claim(path: Path) -> Path | None:
    """Take the claim file `path` (O_EXCL), or None when a live process holds it. A claim
    left by a process that died is taken over."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                holder = int(path.read_text() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                return None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def iter_spills(url: str) -> Iterator[tuple[Path, Spill]]:
    """Every readable spill file for `url` (tests, diagnostics)."""
    for _, _, _, path in _files(url):
        spill = _load(path)
        if spill is not None:
            yield path, spill


__all__ = ["Spill", "has_files", "iter_spills", "replay", "save", "spill_dir"]
