"""Threads asyncflow starts do not take SIGTERM.

The kernel hands a process-directed signal to any thread that does not block it. Python
runs its handler in the main thread only, and only once that thread runs bytecode: when the
signal lands in a worker thread while the main thread waits in a system call (an event
loop's `select`), the handler waits with it. Threads started inside `sigterm_blocked()`
inherit a mask that blocks SIGTERM, so the kernel hands it to the main thread, whose wait
it interrupts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
    """Block SIGTERM in this thread for the block (a signal arriving meanwhile waits, and
    is delivered when it ends); threads started inside keep it blocked."""
    if not hasattr(signal, "pthread_sigmask"):  # (not on Windows)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Put back the SIGTERM handler set before the block (asyncflow's or the user's, or an
    ignored SIGTERM) if code inside replaced it: ray.init installs one that exits at once,
    without the runs' states being recorded. A default action is left as code set it."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if (
            (callable(before) or before is signal.SIG_IGN)
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is not before
        ):
            signal.signal(signal.SIGTERM, before)


__all__ = ["sigterm_blocked", "sigterm_handler_kept"]
