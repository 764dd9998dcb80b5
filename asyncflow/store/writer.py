"""The background writer: one thread per process copies the run registries into the store.

Runs record into the in-memory registries only; this thread wakes every `BUSY_INTERVAL`
seconds while runs are recorded (`IDLE_INTERVAL` when none are), takes what each registry
recorded since its last confirmed write (`MemoryRegistry.export_columns`) and writes it in
one transaction per registry. So the hot path never waits on disk, and one process never
holds two write transactions at once.

Nothing taken is dropped. The marks that say how far a registry is written advance only when
the store confirmed the write; a failed write is retried, with capped exponential backoff,
for as long as the process lives (a broken connection is reopened, a locked SQLite file waited
for). Meanwhile the history stays in memory, where it is anyway; past `ASYNCFLOW_STORE_BACKLOG`
states it goes to a spill file (`asyncflow.store.spill`) instead. At exit the writer tries
for `ASYNCFLOW_STORE_EXIT_TIMEOUT` seconds, then spills what is left and says how much and
where. Writes are idempotent, so a batch written twice (a commit whose answer was lost) is
harmless.

Visibility: a top-level flow run's end does not wait for the disk (a commit there cost
~200 µs per flow call). Reads through a store object in this process write what is pending
first (`catch_up`), so a query right after a flow call sees its runs; other processes see them
within one pass; an `atexit` hook writes the rest, so a command run right after a script
sees every run.

Started lazily: the registry calls `on_first_tree` (wired in `install`) when a registry
gets its first top-level run, and the `ASYNCFLOW_STORE` setting then decides where it goes.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING

from asyncflow.exceptions import StoreError, StoreLockedError, StoreReplacedError

# asyncflow.store.base (and sqlite3, socket...) load with the first writer, not with asyncflow:
# `import asyncflow` must stay fast.
if TYPE_CHECKING:
    from pathlib import Path

    from asyncflow.registry import MemoryRegistry
    from asyncflow.store.base import RecordingStore, WriteBatch

#: Seconds between the writer's passes while runs are recorded, and while none are. Short
#: passes keep the backlog small, so the flush at the end of a big flow run is short too.
BUSY_INTERVAL = 0.05
IDLE_INTERVAL = 0.2
#: Seconds between two looks for cancel requests (`cancel_run` from another process) while
#: this process runs flows.
CANCEL_CHECK_SECONDS = 0.5
#: Longest an explicit flush (a read's catch-up) waits for the writer's lock (the
#: database's own busy timeout, 2 s, comes on top when another process holds its write lock).
FLUSH_TIMEOUT = 3.0
#: Backoff between failed attempts: doubles from the first to the last value.
RETRY_FIRST = 0.05
RETRY_MAX = 5.0
#: ...and for a store that cannot work until someone fixes it (corrupt, read-only...).
RETRY_PERMANENT = 30.0
#: A store that is only locked by other processes is not worth a warning before this long.
LOCKED_WARNING_AFTER = 10.0

logger = logging.getLogger("asyncflow.store")


class _Progress:
    """How far one registry is written: its session in the store and its marks."""

    __slots__ = ("fact_mark", "run_mark", "session", "transition_mark")

    def __init__(self) -> None:
        self.session: int | None = None
        self.run_mark = 0
        self.transition_mark = 0
        self.fact_mark = 0

    def behind(self, registry: MemoryRegistry) -> bool:
        """Whether the registry recorded something not written yet."""
        return (
            self.run_mark < len(registry)
            or self.transition_mark < registry.transition_count
            or self.fact_mark < registry.fact_count
        )

    def advance(self, run_end: int, transition_end: int, fact_end: int) -> None:
        self.run_mark, self.transition_mark, self.fact_mark = run_end, transition_end, fact_end


class Writer:
    """Feeds one store from the registries it keeps; see the module docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        # One identity per process, whatever writers come and go: a registry's session in
        # the store is found again by it.
        self.process_id, self.pid, self.hostname, self.started = _process
        # Held by the thread around each pass (so a test, or a stuck-thread exit, can tell).
        self.lock = threading.Lock()
        # Flushes wait here for a pass that started after they asked.
        self.cond = threading.Condition()
        self.started_passes = self.done_passes = 0
        self.force = False  # the next pass ignores the backoff
        self.deadline: float | None = None  # set by close(): finish by then
        self.timeout = 0.0
        self.finished = threading.Event()
        self.abandoned = False  # close() gave up on a stuck thread
        self.store: RecordingStore | None = None
        self.kept: dict[MemoryRegistry, _Progress] = {}  # the thread's (lock held)
        self.incoming: deque[MemoryRegistry] = deque()  # kept from now on: run threads add
        self.last_beat = 0.0
        self.next_cancel_check = 0.0
        self.cancelled: set[uuid.UUID] = set()  # requests acted on (runs not over yet)
        self.wake = threading.Event()
        self.stopping = False
        # failures: when the current run of them began, how many, when to try again
        self.failing_since: float | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.warned = False  # the outage warning was given (the recovery one follows)
        self.permanent = False  # the last failure needs fixing by someone (see StoreError)
        self.spill_seq = itertools.count(1)  # (next() is atomic: close() may spill too)
        # This process's spill files the store has not had yet: unknown until the first
        # pass looks (a writer before this one, for the same store, may have left some).
        self.own_spills = 1
        self.thread = threading.Thread(
            target=self._loop, name="asyncflow-store-writer", daemon=True
        )
        from asyncflow._signals import sigterm_blocked

        with sigterm_blocked():  # the main thread takes SIGTERM (asyncflow.engine.termination)
            self.thread.start()

    def keep(self, registry: MemoryRegistry) -> None:
        """Persist `registry` from now on (called from run threads: never waits)."""
        registry.keeper = self
        self.incoming.append(registry)
        self.wake.set()

    # -- the thread: all store I/O happens here -------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                self.started_passes += 1
                force, self.force = self.force, False
            with self.lock:
                if self.abandoned:
                    return
                if self.stopping:
                    self._finish()
                    self.finished.set()
                    return
                try:
                    busy = self._pass(force)
                except Exception as exc:  # a bug here must not end recording silently
                    logger.error("Run history writer failed: %r", exc, exc_info=exc)
                    busy = True
            with self.cond:
                self.done_passes += 1
                self.cond.notify_all()
            delay = BUSY_INTERVAL if busy else IDLE_INTERVAL
            if self.failing_since is not None:
                delay = max(delay, self.retry_at - time.monotonic())
            self.wake.wait(delay)
            self.wake.clear()

    def _adopt(self) -> None:
        while self.incoming:
            registry = self.incoming.popleft()
            progress = registry.marks.get(self.url)
            if progress is None:  # (a writer before this one may have written some of it)
                progress = registry.marks[self.url] = _Progress()
            self.kept[registry] = progress

    def _backlog(self) -> tuple[int, int]:
        """(runs, states) recorded and not written yet."""
        runs = states = 0
        for registry, progress in self.kept.items():
            runs += len(registry) - progress.run_mark
            states += registry.transition_count - progress.transition_mark
        return runs, states

    def _caught_up(self) -> bool:
        return not any(progress.behind(registry) for registry, progress in self.kept.items())

    def _pass(self, force: bool = False) -> bool:
        """Write what the kept registries recorded since their marks (lock held).

        Returns whether there was anything to write. Between failures it waits out the
        backoff unless `force` (an explicit flush, exit).
        """
        self._adopt()
        pending = [
            (registry, progress)
            for registry, progress in self.kept.items()
            if progress.behind(registry)
        ]
        if not force and self.failing_since is not None and time.monotonic() < self.retry_at:
            return bool(pending) or self.own_spills > 0
        try:
            store = self._open()
            if self.own_spills:
                from asyncflow.store import spill

                spill.replay(store, self.url, own=(self.pid, self.started))  # type: ignore[arg-type]
                self.own_spills = 0
            for registry, progress in pending:
                self._write(store, registry, progress)
        except Exception as exc:
            self._failed(exc)
            return True
        self._succeeded()
        self._retire()
        if time.monotonic() >= self.next_cancel_check and any(r.open_trees for r in self.kept):
            self.next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
            self._act_on_cancel_requests(store)
        if not pending and time.monotonic() - self.last_beat > _heartbeat_seconds():
            self.last_beat = time.monotonic()
            try:
                store.heartbeat(self.process_id)
            except Exception as exc:
                logger.debug("Run history heartbeat failed: %s", exc)
        return bool(pending)

    def _act_on_cancel_requests(self, store: RecordingStore) -> None:
        """Cancel the runs of this process that another one asked to cancel."""
        from asyncflow.engine.cancellation import cancel_local

        try:
            asked = store.cancel_requests(self.process_id)
        except Exception as exc:  # (the next pass asks again)
            logger.debug("Run history: reading cancel requests failed: %s", exc)
            return
        for run_id in asked:  # (one not running here yet is tried again next time)
            if run_id not in self.cancelled and cancel_local(run_id):
                self.cancelled.add(run_id)
        self.cancelled.intersection_update(asked)

    def _open(self) -> RecordingStore:
        if self.store is None:
            from asyncflow.store import connect

            self.store = connect(self.url)
        return self.store

    def _write(self, store: RecordingStore, registry: MemoryRegistry, progress: _Progress) -> None:
        from asyncflow.store.base import encode_batch, run_id_prefix

        batch = registry.export_columns(
            progress.run_mark, progress.transition_mark, progress.fact_mark
        )
        encoded = encode_batch(batch)
        if progress.session is None:
            progress.session = store.session_for(
                self.process_id, run_id_prefix(registry.prefix), self.pid, self.hostname,
                self.started,
            )  # fmt: skip
        store.write(encoded, progress.session)
        progress.advance(batch.run_end, batch.transition_end, batch.fact_end)
        self.last_beat = time.monotonic()  # a write marks the process alive too

    def _retire(self) -> None:
        """Drop the registries that are finished and fully written (they are in the store)."""
        from asyncflow.registry import retire

        for registry, progress in list(self.kept.items()):
            if registry.retirable and not progress.behind(registry):
                retire(registry)
                del self.kept[registry]

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        self.permanent = isinstance(exc, StoreError) and exc.permanent
        cap = RETRY_PERMANENT if self.permanent else RETRY_MAX
        self.retry_at = now + min(RETRY_FIRST * 2 ** min(self.failures - 1, 20), cap)
        if isinstance(exc, StoreReplacedError):
            # The file went away under us: start a new one with everything still in memory.
            logger.warning(
                "%s. Recording goes on in a new file, which gets every run still in this "
                "process's memory; runs written before that and since dropped from memory "
                "are only in the old file.",
                exc,
            )
            for registry, progress in self.kept.items():
                progress.session = None
                progress.advance(0, 0, 0)
                # a restarted run's key is the old file's: in the new one it is a new run
                registry.aliases_stored = False
        locked = isinstance(exc, StoreLockedError)
        if not locked and self.store is not None:
            # Reconnect next time: a PostgreSQL server that restarted, a file that moved...
            try:
                self.store.close()
            except Exception:
                pass
            self.store = None
        if not isinstance(exc, StoreError):
            logger.debug("Run history write failed", exc_info=exc)
        if not self.warned and (not locked or now - self.failing_since > LOCKED_WARNING_AFTER):
            self.warned = True
            runs, states = self._backlog()
            logger.log(
                logging.ERROR if self.permanent else logging.WARNING,
                "Run history is not recorded in %s for now: %s. What runs record (%d run(s) "
                "and %d state(s) so far) is held in memory and written when it works again "
                "(tried every %gs at most); at exit, what is left goes to a spill file.",
                _redact(self.url),
                _one_line(exc),
                runs,
                states,
                cap,
            )
        self._check_backlog()

    def _succeeded(self) -> None:
        if self.failing_since is not None and self.warned:
            logger.warning(
                "Run history is written to %s again, after %.1fs; nothing was lost.",
                _redact(self.url),
                time.monotonic() - self.failing_since,
            )
        self.failing_since = None
        self.failures = 0
        self.warned = False

    def _check_backlog(self) -> None:
        """Past ASYNCFLOW_STORE_BACKLOG states held back, move them to a spill file."""
        from asyncflow.settings import get_settings

        limit = get_settings().store_backlog
        if self._backlog()[1] <= limit:
            return
        path, runs, states = self._spill(None)
        if path is not None:
            logger.warning(
                "Run history: %d run(s) and %d state(s) held back for %s passed "
                "ASYNCFLOW_STORE_BACKLOG=%d; moved to %s. They are written when the store "
                "works again.",
                runs,
                states,
                _redact(self.url),
                limit,
                path,
            )
        self._retire()

    def _spill(self, end_reason: str | None, adopt: bool = True) -> tuple[Path | None, int, int]:
        """Move everything not written yet to a spill file; advances the marks.

        Returns its path (None when there was nothing) and the runs and states in it; when
        the file cannot be written either, says how much is lost and returns None.
        """
        from asyncflow.store import spill
        from asyncflow.store.base import encode_batch, run_id_prefix

        if adopt:
            self._adopt()
            items = list(self.kept.items())
        else:  # from close(), past a stuck thread: read its registries, change nothing of it
            items = list(self.kept.items())
            items += [
                (r, r.marks.setdefault(self.url, _Progress()))
                for r in list(self.incoming)
                if r not in self.kept
            ]
        record = spill.Spill(self.process_id, self.pid, self.hostname, self.started)
        record.end_reason = end_reason
        advanced: list[tuple[_Progress, int, int, int]] = []
        for registry, progress in items:
            if not progress.behind(registry):
                continue
            batch = registry.export_columns(
                progress.run_mark, progress.transition_mark, progress.fact_mark
            )
            try:
                encoded: WriteBatch = encode_batch(batch)
            except Exception as exc:
                logger.error(
                    "Run history: %d run(s) and %d state(s) are lost (they cannot be encoded: "
                    "%r).",
                    batch.run_end - batch.run_start,
                    batch.transition_end - batch.transition_start,
                    exc,
                )
                advanced.append((progress, batch.run_end, batch.transition_end, batch.fact_end))
                continue
            # No session key: a key is only good in the database it came from (the file may
            # be replaced before the replay); the replay finds or makes the session by name.
            record.batches.append((run_id_prefix(registry.prefix), None, encoded))
            advanced.append((progress, batch.run_end, batch.transition_end, batch.fact_end))
        if not record.batches and end_reason is None:
            for progress, *ends in advanced:
                progress.advance(*ends)
            return None, 0, 0
        try:
            path = spill.save(self.url, record, next(self.spill_seq))
        except Exception as exc:
            logger.error(
                "Run history: %d run(s) and %d state(s) for %s are lost: the store cannot be "
                "written and neither can a spill file in %s (%s).",
                record.runs,
                record.states,
                _redact(self.url),
                spill.spill_dir(),
                _one_line(exc),
            )
            path = None
        else:
            self.own_spills += 1
        for progress, *ends in advanced:
            progress.advance(*ends)
        return path, record.runs, record.states

    def _finish(self) -> None:
        """The exit: write the rest until `deadline`, then close this process's runs (or
        spill what is left), and close the store (lock held)."""
        deadline = self.deadline or time.monotonic()
        while True:
            try:
                self._pass(force=True)
            except Exception as exc:
                logger.error("Run history writer failed: %r", exc, exc_info=exc)
            if self.failing_since is None and self._caught_up():
                break
            remaining = deadline - time.monotonic()
            if self.permanent or remaining <= 0:
                break  # (waiting cannot help a permanent failure: straight to the spill file)
            time.sleep(min(remaining, 0.1))
        if self.abandoned:
            return  # close() gave up waiting and spilled what was left
        if self.failing_since is None and self._caught_up() and not self.own_spills:
            store = self.store
            if store is not None:
                try:  # runs still open now will never end: say so rather than leave them open
                    store.end_process(self.process_id, self._exit_reason())
                except Exception as exc:
                    logger.warning("Run history: could not close this process's runs: %s", exc)
        else:
            self._give_up(self._exit_reason(), self.timeout)
        self._retire()
        for registry in self.kept:
            registry.keeper = None
        if self.store is not None:
            try:
                self.store.close()
            except Exception:
                pass
            self.store = None

    def _exit_reason(self) -> str:
        return (
            f"The process that ran it (pid {self.pid} on {self.hostname}) exited before it "
            "finished."
        )

    # -- called from other threads --------------------------------------------------------------
    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Have the thread write what is recorded so far; False when that did not succeed
        within `timeout` (the store failing, or busy)."""
        if self.stopping:
            return False
        with self.cond:
            want = self.started_passes + 1  # a pass that starts after this call
            self.force = True
            self.wake.set()
            done = self.cond.wait_for(lambda: self.done_passes >= want, timeout)
        return done and self.failing_since is None

    def close(self, timeout: float) -> None:
        """Write the rest (for up to `timeout` s), stop the thread and close the store.

        What could not be written goes to a spill file, and the log says how much and where.
        """
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.stopping = True
        self.wake.set()
        if self.finished.wait(timeout + 1.0):
            return
        # The thread is stuck in a store call (a server that stopped answering on an open
        # connection): what it has not confirmed goes to a spill file from here. Writes are
        # idempotent: if its call lands after all, replaying the file changes nothing.
        self.abandoned = True  # the thread, if it ever gets out of its call, spills nothing
        self._give_up(self._exit_reason(), timeout, adopt=False)

    def _give_up(self, reason: str, timeout: float, adopt: bool = True) -> None:
        path, runs, states = self._spill(reason, adopt)
        if path is not None:
            logger.warning(
                "Run history: %d run(s) and %d state(s) could not be written to %s within "
                "ASYNCFLOW_STORE_EXIT_TIMEOUT=%gs; saved to %s. The next process that opens "
                "this store writes them.",
                runs,
                states,
                _redact(self.url),
                timeout,
                path,
            )


def _heartbeat_seconds() -> float:
    from asyncflow.store.base import HEARTBEAT_SECONDS

    return HEARTBEAT_SECONDS


def _redact(url: str) -> str:
    from asyncflow.store.base import redact

    return redact(url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- activation ---------------------------------------------------------------------------------
def _identity() -> tuple[str, int, str, float]:
    return str(uuid.uuid4()), os.getpid(), socket.gethostname(), time.time()


_process = _identity()  # (process id, pid, hostname, start time): what the store knows us by
_writer: Writer | None = None
_start_lock = threading.Lock()
_orphans: list[object] = []  # writers inherited across fork: never touched again, never closed


def process_identity() -> tuple[str, int, str, float]:
    """(process id, pid, hostname, start time): what the store knows this process by."""
    return _process


def on_first_tree(registry: MemoryRegistry) -> None:
    """Registry hook: its first top-level run decides where (and whether) it is persisted."""
    from asyncflow.store import recording_url

    with _start_lock:
        if registry.decided:
            return
        writer = _writer_for(recording_url())
        if writer is not None:
            writer.keep(registry)
        registry.decided = True


def _writer_for(url: str | None) -> Writer | None:
    """The writer of `url`, started if new (the one of another URL is closed); lock held."""
    global _writer
    writer = _writer
    if writer is not None and url != writer.url:
        _writer = None
        writer.close(_exit_timeout())
        writer = None
    if url is not None and writer is None:
        from asyncflow.store.base import before_read

        if catch_up not in before_read:
            before_read.append(catch_up)
        _writer = writer = Writer(url)
    return writer


def warm(url: str) -> None:
    """Start the writer of `url` now, so that it connects before the first run (a serving
    process: its first scheduled run is not late by a connection's time)."""
    with _start_lock:
        if _writer is None or _writer.url == url:
            _writer_for(url)


def install() -> None:
    """Subscribe the writer to the registries (done once, by `import asyncflow`)."""
    from asyncflow import registry as memory

    memory.set_tree_listener(on_first_tree)
    from asyncflow.engine import termination

    termination.at_termination(stop)


def catch_up(url: str) -> None:
    """Read-your-writes: before a read of `url`, write what this process recorded for it."""
    current = _writer
    if (
        current is not None
        and current.url == url
        and threading.current_thread() is not (current.thread)
    ):
        flush()


def current_writer() -> Writer | None:
    """The process's writer, if one was started."""
    return _writer


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Write everything recorded so far to the store now (True when done or nothing to do)."""
    writer = _writer
    if writer is None:
        return True
    return writer.flush(timeout)


def stop(timeout: float | None = None) -> None:
    """Flush and stop the writer (atexit; tests). The next new registry starts a new one.

    `timeout` defaults to ASYNCFLOW_STORE_EXIT_TIMEOUT.
    """
    global _writer
    with _start_lock:
        writer, _writer = _writer, None
    if writer is not None:
        writer.close(_exit_timeout() if timeout is None else timeout)
    from asyncflow import registry as memory

    for registry in memory.live_registries():  # their next tree decides again
        if registry.keeper is None:
            registry.decided = False


def _exit_timeout() -> float:
    from asyncflow.settings import get_settings

    try:
        return get_settings().store_exit_timeout
    except ValueError as exc:
        logger.error("%s; using 5s.", exc)
        return 5.0


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here and its connection must not be used (nor
    # closed) in this process: forget the writer; the child starts its own when needed.
    global _writer, _start_lock, _process
    _process = _identity()
    if _writer is not None:
        _writer.stopping = True  # never touched again in this process
        _orphans.append(_writer)
    _writer = None
    _start_lock = threading.Lock()


atexit.register(stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
