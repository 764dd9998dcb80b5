"""SIGTERM: end the runs of this process in recorded states instead of vanishing.

Python's default for SIGTERM ends the process at once: the states recorded in the last
moments never reach the store and the runs stay open until crash detection finds them.
Once a top-level flow run starts in the main thread (and SIGTERM still has its default
action), asyncflow handles it:

- while the main thread runs the body of a sync flow or task run (of a sync flow: not on
  an event loop), `TerminationSignal` is raised there, as in Prefect: the run ends
  Crashed, its hooks run, the task runs it left are cancelled (not waited for), and the
  exception ends the program; the exit hook writes the rest;
- anywhere else (async flows on an event loop, no run at all), a helper thread flushes the
  run store and records the runs still open Crashed, then the process ends by SIGTERM as it
  would have (exit status 143). Nothing is raised inside an event loop.

The signal never lands inside logging, inside asyncflow's bookkeeping, or in code
asyncflow calls that is not a run's body (state hooks, retry conditions): there it is sent
again 2 ms later.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from asyncflow._signals import sigterm_blocked
from asyncflow.engine import interrupts
from asyncflow.engine.context import flow_run_var, task_run_var
from asyncflow.exceptions import TerminationSignal

installed = False  # (read by the engine as each top-level flow run starts)
_RETRY = 0.002
_WALK = 200  # frames looked at for the nearest asyncflow frame
#: called before the process ends by SIGTERM (the run store's writer flushes here)
_before_exit: list[Callable[[], None]] = []
_flushing = False  # a helper thread is flushing
_flushed = False  # ... and is done: the next SIGTERM ends the process


def at_termination(fn: Callable[[], None]) -> None:
    """Call `fn()` before the process ends by SIGTERM outside a sync run."""
    if fn not in _before_exit:
        _before_exit.append(fn)


def install() -> None:
    """Handle SIGTERM from now on, if it still has its default action (main thread only)."""
    global installed
    if threading.current_thread() is not threading.main_thread():
        return  # (signal handlers can only be set there: asked again by the next run)
    installed = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    if _flushed:  # the store has everything: end as SIGTERM ends a process
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    main = threading.main_thread().ident
    assert main is not None
    where = _where(frame)
    if where == "engine" or interrupts._unsafe(main, frame):
        _again(main, signum)
        return
    flow = flow_run_var.get()
    run = task_run_var.get() or flow
    on_loop = flow is not None and flow.is_async
    if where == "body" and run is not None and not run.spec.isasync and not on_loop:
        raise TerminationSignal(signum)
    _flush_then_end(main, signum)


def _where(frame: Any) -> str:
    """'body' when the main thread runs a run's own code (or waits where asyncflow may be
    interrupted), 'engine' in asyncflow's code or code it calls that is not a body,
    'outside' when no asyncflow frame is near."""
    f = frame
    for _ in range(_WALK):
        if f is None:
            break
        name = f.f_globals.get("__name__", "")
        if name == "asyncflow" or name.startswith("asyncflow."):
            code = f.f_code
            if code in interrupts._INTERRUPTIBLE or (
                f is not frame and code in interrupts._BODY_CALLERS
            ):
                return "body"
            return "engine"
        f = f.f_back
    return "outside"


def _again(main: int, signum: int) -> None:
    try:
        with sigterm_blocked():
            threading.Timer(_RETRY, signal.pthread_kill, (main, signum)).start()
    except RuntimeError:  # the interpreter is shutting down: its exit hook writes the rest
        pass


def _flush_then_end(main: int, signum: int) -> None:
    global _flushing

    def flush() -> None:
        global _flushed
        try:
            for fn in _before_exit:
                fn()  # the writer: flush, and record the runs left open Crashed
        finally:
            _flushed = True
            signal.pthread_kill(main, signum)  # the handler, in the main thread, ends it

    if _flushing:
        return
    _flushing = True
    try:
        with sigterm_blocked():
            threading.Thread(target=flush, name="asyncflow-sigterm", daemon=True).start()
    except RuntimeError:  # the interpreter is shutting down: its exit hook writes the rest
        pass
