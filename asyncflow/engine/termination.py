"""SIGTERM: end the runs of this process in recorded states instead of vanishing.

Python's default for SIGTERM ends the process at once: the states recorded in the last
moments never reach the store and the runs stay open until crash detection finds them.
Once a top-level flow run starts in the main thread (and SIGTERM still has its default
action), asyncflow handles it:

- in a sync flow or task run in the main thread, `TerminationSignal` is raised there, as
  in Prefect: the run ends Crashed, its hooks run, the exception ends the program and the
  exit hook writes the rest;
- anywhere else (async flows on an event loop, no run at all), the run store is flushed,
  the runs still open are recorded Crashed, and the process then ends by SIGTERM as it
  would have (exit status 143), without raising inside an event loop.

Like an interrupt, it never lands inside logging or asyncflow's bookkeeping: there it is
tried again 2 ms later.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from asyncflow.engine import interrupts
from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.exceptions import TerminationSignal

_installed = False
_RETRY = 0.002
#: called before the process ends by SIGTERM (the run store's writer flushes here)
_before_exit: list[Callable[[], None]] = []


def at_termination(fn: Callable[[], None]) -> None:
    """Call `fn()` before the process ends by SIGTERM outside a sync run."""
    if fn not in _before_exit:
        _before_exit.append(fn)


def install() -> None:
    """Handle SIGTERM from now on, if it still has its default action (main thread only)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return  # (signal handlers can only be set there: asked again by the next run)
    _installed = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def installed() -> bool:
    return _installed


def _on_sigterm(signum: int, frame: Any) -> None:
    main = threading.main_thread().ident
    assert main is not None
    if interrupts._unsafe(main, frame):  # not here: the signal comes again soon
        threading.Timer(_RETRY, signal.pthread_kill, (main, signum)).start()
        return
    run = task_run_var.get() or flow_run_var.get()
    if run is not None and not run.spec.isasync:
        raise TerminationSignal(signum)
    for fn in _before_exit:
        fn()  # the writer: flush, and record the runs left open Crashed
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
