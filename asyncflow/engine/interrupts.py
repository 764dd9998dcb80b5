"""Stopping sync code from the outside: timeouts and cancellation of runs in threads.

Async runs are stopped by cancel scopes; sync code has no such checkpoints, so a run that
must stop (deadline passed, run cancelled) gets an exception raised in the thread running it:

- the main thread receives a real SIGALRM, so even a blocking `time.sleep` is interrupted,
  and the handler raises the exception;
- other threads get it through ``PyThreadState_SetAsyncExc``, delivered at their next
  bytecode (a thread blocked inside a C call is stopped when the call returns).

Every delivery is bounded by `guard()`: once the guarded call returns, a not-yet-delivered
exception is withdrawn, so it can never surface in unrelated code. Each exception carries
`.run`, the engine it was aimed at, so an ancestor's timeout is told apart from the run's own.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_lock = threading.RLock()
_counter = itertools.count()


class _Target:
    """One guarded stretch of sync code in one thread (the context manager `guard` returns)."""

    __slots__ = ("active", "exc", "in_main", "lock", "thread_id")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.in_main = self.thread_id == _MAIN_ID
        # Main-thread targets share `_lock` with the SIGALRM handler. A worker thread's
        # target has its own: a lock every worker takes per task run would make a convoy.
        self.lock = _lock if self.in_main else threading.Lock()
        self.active = True
        self.exc: BaseException | None = None  # set when an interrupt was sent

    def __enter__(self) -> _Target:
        if self.in_main:
            if not _handler_installed:
                _install_handler()
            with _lock:
                _main_targets.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self.lock:
            self.active = False
            if self.exc is not None and not self.in_main:
                _set_async_exc(self.thread_id, None)  # withdraw an undelivered interrupt
            self.exc = None
            if self.in_main:
                _main_targets.remove(self)


_MAIN_ID = threading.main_thread().ident
_main_targets: list[_Target] = []  # innermost last
_previous_handler: Any = None
_handler_installed = False


def _install_handler() -> None:
    """Install the SIGALRM handler once, for good: swapping it per run cost microseconds.

    It passes signals it was not expecting on to the handler it replaced.
    """
    global _previous_handler, _handler_installed
    _previous_handler = signal.signal(signal.SIGALRM, _on_sigalrm)
    _handler_installed = True


def _on_sigalrm(signum: int, frame: Any) -> None:
    with _lock:
        for target in reversed(_main_targets):
            if target.active and target.exc is not None:
                exc, target.exc = target.exc, None
                target.active = False
                raise exc
    handler = _previous_handler
    if callable(handler):
        handler(signum, frame)
    elif handler in (signal.SIG_DFL, None):  # what SIGALRM did before: end the process
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


def guard() -> _Target:
    """Mark the current thread as interruptible by `interrupt(target, ...)` while inside."""
    return _Target()


def interrupt(target: _Target, exc: BaseException) -> bool:
    """Raise `exc` in the guarded thread, if it is still inside its guard."""
    with target.lock:
        if not target.active or target.exc is not None:
            return False
        if target.in_main:
            if signal.getsignal(signal.SIGALRM) is not _on_sigalrm:
                return False  # the program took SIGALRM over; the run stops at its next call
            target.exc = exc
            signal.pthread_kill(target.thread_id, signal.SIGALRM)
        else:
            if _traced():
                # Under a tracer (coverage, a debugger, a profiler) an asynchronous exception
                # can be delivered into the tracer's own code and wedge the thread for good:
                # the run is stopped at its next task or subflow call instead, and its outcome
                # is TimedOut / Cancelled all the same (the drivers check the deadline).
                return False
            target.exc = exc
            # The C API takes an exception class; a subclass per interrupt carries `.run`.
            cls = type(type(exc).__name__, (type(exc),), {"run": getattr(exc, "run", None)})
            cls.__module__ = type(exc).__module__
            _set_async_exc(target.thread_id, cls)
    return True


def _traced() -> bool:
    """Whether a tracer is installed for threads (what coverage and debuggers do)."""
    return threading.gettrace() is not None or sys.gettrace() is not None


def _set_async_exc(thread_id: int, exc_class: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_class) if exc_class else None
    )


# -- deadlines ----------------------------------------------------------------------------------
_heap: list[tuple[float, int, _Target, Callable[[], BaseException]]] = []
_wakeup = threading.Condition(_lock)
_timer_thread: threading.Thread | None = None
_PURGE_MIN = 1024
_purge_at = _PURGE_MIN


def at_deadline(deadline: float, target: _Target, make_exc: Callable[[], BaseException]) -> None:
    """Interrupt `target` with `make_exc()` at `deadline` (time.monotonic) if still guarded."""
    global _timer_thread, _purge_at
    with _wakeup:
        if len(_heap) >= _purge_at:  # guards that ended long before their deadline
            _heap[:] = [entry for entry in _heap if entry[2].active]
            heapq.heapify(_heap)
            _purge_at = max(_PURGE_MIN, 2 * len(_heap))  # amortized O(1) per call
        heapq.heappush(_heap, (deadline, next(_counter), target, make_exc))
        _wakeup.notify()
        if _timer_thread is None:
            _timer_thread = threading.Thread(
                target=_timer_loop, name="asyncflow-deadlines", daemon=True
            )
            _timer_thread.start()


def _timer_loop() -> None:
    with _wakeup:
        while True:
            if not _heap:
                _wakeup.wait()
                continue
            deadline, _, target, make_exc = _heap[0]
            delay = deadline - time.monotonic()
            if delay > 0:
                _wakeup.wait(delay)
                continue
            heapq.heappop(_heap)
            if target.active:
                interrupt(target, make_exc())
