"""The background writer: one thread per process copies the run registry into the store.

Runs record into the in-memory registry only; this thread wakes every `BUSY_INTERVAL`
seconds while runs are recorded (`IDLE_INTERVAL` when none are), takes what was recorded
since its last pass (`MemoryRegistry.export_columns`) and writes it
in one transaction. So the hot path never waits on disk, and one process never holds two
write transactions at once.

Visibility: a top-level flow run's end does not wait for the disk (a commit there cost
~200 µs per flow call). Reads through a store object in this process write what is pending
first (`catch_up`), so a query right after a flow call sees its runs; other processes see them
within one pass; an `atexit` hook writes the rest, so a command run right after a script
sees every run.

Started lazily by the first top-level flow run (`top_level_flow_started`, called by the
engine), from the `ASYNCFLOW_STORE` setting.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING

from asyncflow.exceptions import StoreError

# asyncflow.store.base (and sqlite3, socket...) load with the first writer, not with asyncflow:
# the engine imports this module, and `import asyncflow` must stay fast.
if TYPE_CHECKING:
    from asyncflow.store.base import RecordingStore
    from asyncflow.store.memory import MemoryRegistry

#: Seconds between the writer's passes while runs are recorded, and while none are. Short
#: passes keep the backlog small, so the flush at the end of a big flow run is short too.
BUSY_INTERVAL = 0.05
IDLE_INTERVAL = 0.2
#: Longest an explicit flush (a read's catch-up, exit) waits for the writer's lock (the
#: database's own busy timeout, 2 s, comes on top when another process holds its write lock).
FLUSH_TIMEOUT = 3.0

logger = logging.getLogger("asyncflow.store")


class Writer:
    """Feeds one store from the current registry; see the module docstring."""

    def __init__(self, url: str, registry: MemoryRegistry) -> None:
        self.url = url
        self.registry = registry
        self.process_id = str(uuid.uuid4())
        # Serializes all database work: the thread's passes, explicit flushes, switching.
        self.lock = threading.Lock()
        self.store: RecordingStore | None = None
        self.broken = False  # the store could not be opened: nothing is recorded
        self.session: int | None = None  # processes.pk of the current registry's rows
        self.run_mark = 0
        self.transition_mark = 0
        self.last_beat = 0.0
        self.wake = threading.Event()
        self.stopping = False
        self._failures = 0  # writes that failed in a row
        self._postponed = False  # the last write found the database locked (warned once)
        self.thread = threading.Thread(
            target=self._loop, name="asyncflow-store-writer", daemon=True
        )
        self.thread.start()

    # -- the thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                if self.stopping or self.broken:
                    return
                wrote = self._pass()
            self.wake.wait(BUSY_INTERVAL if wrote else IDLE_INTERVAL)
            self.wake.clear()

    def _open(self) -> bool:
        """Open the store (once); log and stop recording when it cannot be opened."""
        if self.store is None and not self.broken:
            from asyncflow.store import connect

            try:
                self.store = connect(self.url)
            except StoreError as exc:
                self.broken = True
                logger.error("Run history is not recorded: %s", exc)
            except Exception as exc:  # an unexpected failure must not reach the user's flows
                self.broken = True
                logger.error("Run history is not recorded: %r", exc, exc_info=exc)
        return self.store is not None

    def _pass(self) -> bool:
        """Write what was recorded since the last pass, in one transaction (lock held).

        Returns whether there was anything to write.
        """
        if (self.stopping and self.store is None) or not self._open():  # closed: stays closed
            return False
        from asyncflow.store.base import HEARTBEAT_SECONDS, encode_batch

        store = self.store
        assert store is not None
        registry = self.registry
        if self.run_mark < len(registry) or self.transition_mark < registry.transition_count:
            batch = registry.export_columns(self.run_mark, self.transition_mark)
            try:
                encoded = encode_batch(batch)
                if self.session is None:
                    self.session = store.register_process(self.process_id, encoded.id_prefix)
                store.write(encoded, self.session)
            except Exception as exc:
                if isinstance(exc, StoreError) and "locked" in str(exc):
                    # another process held the database too long: retried on the next pass
                    if not self._postponed:
                        logger.warning("Run history write postponed: %s", exc)
                    self._postponed = True
                    return True
                self._failures += 1
                logger.error(
                    "Run history: %d run(s) and %d state(s) could not be written: %s",
                    batch.run_end - batch.run_start,
                    batch.transition_end - batch.transition_start,
                    exc,
                )
                if self._failures >= 3:  # not a passing problem: stop trying
                    logger.error("Run history is no longer recorded in this process.")
                    self.broken = True
            else:
                self._failures = 0
                self._postponed = False
            self.run_mark, self.transition_mark = batch.run_end, batch.transition_end
            self.last_beat = time.monotonic()
            return True
        if time.monotonic() - self.last_beat > HEARTBEAT_SECONDS:
            self.last_beat = time.monotonic()
            try:
                store.heartbeat(self.process_id)
            except Exception as exc:
                logger.warning("Run history heartbeat failed: %s", exc)
        return False

    # -- called from run threads --------------------------------------------------------------
    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Write what is recorded so far; False when the store is busy for `timeout` s."""
        if self.broken or self.stopping:
            return False
        if not self.lock.acquire(timeout=timeout):
            logger.warning("Run history flush timed out after %gs; it continues later.", timeout)
            return False
        try:
            self._pass()
        finally:
            self.lock.release()
        return not self.broken

    def switch(self, registry: MemoryRegistry) -> None:
        """Follow a new registry (after `reset_registry()`): finish the old one first."""
        with self.lock:
            if registry is self.registry:
                return
            if not self.broken:
                self._pass()
            self.registry = registry
            self.session = None
            self.run_mark = self.transition_mark = 0

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write the rest, stop the thread and close the store."""
        self.stopping = True
        self.wake.set()
        if not self.lock.acquire(timeout=timeout):
            return
        try:
            if not self.broken:
                self._pass()
            if self.store is not None:
                import socket

                try:  # runs still open now will never end: say so rather than leave them open
                    self.store.end_process(
                        self.process_id,
                        f"The process that ran it (pid {os.getpid()} on {socket.gethostname()}) "
                        "exited before it finished.",
                    )
                except Exception as exc:
                    logger.warning("Run history: could not close this process's runs: %s", exc)
                self.store.close()
                self.store = None
        finally:
            self.lock.release()


# -- activation ---------------------------------------------------------------------------------
_writer: Writer | None = None
_checked: object = None  # the registry the current decision (a writer, or none) was made for
_start_lock = threading.Lock()
_orphans: list[object] = []  # writers inherited across fork: never touched again, never closed


def top_level_flow_started(registry: MemoryRegistry) -> None:
    """Engine hook: make sure the store writer records `registry` (cheap when it does)."""
    if registry is _checked:
        return
    _activate(registry)


def _activate(registry: MemoryRegistry) -> None:
    global _writer, _checked
    from asyncflow.store import recording_url

    with _start_lock:
        if registry is _checked:
            return
        url = recording_url()
        writer = _writer
        if writer is not None and (url != writer.url or writer.broken):
            writer.close()
            _writer = writer = None
        if url is not None:
            if writer is None:
                _writer = Writer(url, registry)
            else:
                writer.switch(registry)
        _checked = registry


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
    from asyncflow.store.memory import get_registry

    registry = get_registry()
    if registry is not writer.registry:
        _activate(registry)
        writer = _writer
        if writer is None:
            return True
    return writer.flush(timeout)


def stop(timeout: float = FLUSH_TIMEOUT) -> None:
    """Flush and stop the writer (atexit; tests). The next top-level flow starts a new one."""
    global _writer, _checked
    with _start_lock:
        writer, _writer, _checked = _writer, None, None
    if writer is not None:
        writer.close(timeout)


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here and its SQLite connection must not be used
    # (nor closed) in this process: forget the writer; the child starts its own when needed.
    global _writer, _checked, _start_lock
    if _writer is not None:
        _writer.broken = True  # never touched again in this process
        _orphans.append(_writer)
    _writer, _checked = None, None
    _start_lock = threading.Lock()


atexit.register(stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
