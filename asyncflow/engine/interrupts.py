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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_MAIN = threading.main_thread()
_lock = threading.RLock()
_counter = itertools.count()


class _Target:
    """One guarded stretch of sync code in one thread."""

    __slots__ = ("active", "exc", "thread_id")

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.active = True
        self.exc: BaseException | None = None  # set when an interrupt was sent


_main_targets: list[_Target] = []  # innermost last
_previous_handler: Any = None


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


@contextmanager
def guard() -> Iterator[_Target]:
    """Mark the current thread as interruptible by `interrupt(target, ...)` while inside."""
    global _previous_handler
    target = _Target(threading.get_ident())
    in_main = threading.current_thread() is _MAIN
    if in_main:
        with _lock:
            if not _main_targets:
                _previous_handler = signal.signal(signal.SIGALRM, _on_sigalrm)
            _main_targets.append(target)
    try:
        yield target
    finally:
        with _lock:
            target.active = False
            if target.exc is not None and not in_main:
                _set_async_exc(target.thread_id, None)  # withdraw an undelivered interrupt
            target.exc = None
            if in_main:
                _main_targets.remove(target)
                if not _main_targets:
                    signal.signal(signal.SIGALRM, _previous_handler or signal.SIG_DFL)
                    _previous_handler = None


def interrupt(target: _Target, exc: BaseException) -> bool:
    """Raise `exc` in the guarded thread, if it is still inside its guard."""
    with _lock:
        if not target.active or target.exc is not None:
            return False
        target.exc = exc
        if target.thread_id == _MAIN.ident:
            signal.pthread_kill(target.thread_id, signal.SIGALRM)
        else:
            # The C API takes an exception class; a subclass per interrupt carries `.run`.
            cls = type(type(exc).__name__, (type(exc),), {"run": getattr(exc, "run", None)})
            cls.__module__ = type(exc).__module__
            _set_async_exc(target.thread_id, cls)
    return True


def _set_async_exc(thread_id: int, exc_class: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_class) if exc_class else None
    )


# -- deadlines ----------------------------------------------------------------------------------
_heap: list[tuple[float, int, _Target, Callable[[], BaseException]]] = []
_wakeup = threading.Condition(_lock)
_timer_thread: threading.Thread | None = None


def at_deadline(deadline: float, target: _Target, make_exc: Callable[[], BaseException]) -> None:
    """Interrupt `target` with `make_exc()` at `deadline` (time.monotonic) if still guarded."""
    global _timer_thread
    with _wakeup:
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
