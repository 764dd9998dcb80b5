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

An interrupt is held back, and tried again every `_RETRY` seconds, while the thread is where
an exception must not land (`_unsafe`): holding one of `logging`'s locks (a handler takes its
lock before the `try` that releases it, so an exception between the two left the lock held
and every later log call hung; and a handler's `emit` swallows exceptions, so the run went
on), or in asyncflow's own bookkeeping (a run half-finished). A worker thread held back by a
handler's lock raises the exception itself as it releases that lock (`Handler.release` is
wrapped, once, on first need): under heavy logging a thread is almost always holding or
waiting for a lock, and a retry alone might never find it outside. An exception sent to a
thread that is still inside its guard `_RESEND` seconds later was swallowed (by an `except
Exception` in logging's record-making, or in the run's own code) and is sent again.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_lock = threading.RLock()
_counter = itertools.count()
_RETRY = 0.002  # seconds between attempts while the thread is in code an interrupt must not enter
_RESEND = 0.25  # seconds after which an interrupt the thread swallowed is sent again
#: asyncflow functions that wait in a C call on purpose, to be interrupted there
_INTERRUPTIBLE: set[Any] = set()


def interruptible(fn: F) -> F:
    """Mark an asyncflow function that blocks (e.g. in `time.sleep`) as a place where an
    interrupt may land."""
    _INTERRUPTIBLE.add(fn.__code__)
    return fn


def _unsafe(thread_id: int, frame: Any) -> bool:
    """Whether an exception raised now in thread `thread_id`, whose innermost Python frame
    is `frame`, could leave a lock held, be swallowed, or leave a run half-recorded."""
    if frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("asyncflow.") and frame.f_code not in _INTERRUPTIBLE:
            return True
        if frame.f_code in _lock_takers():  # (it may be blocked there, about to hold it)
            return True
    return _holds_logging_lock(thread_id)


def _lock_takers() -> frozenset[Any]:
    """The code of logging's functions that take a lock and return holding it."""
    global _LOCK_TAKERS
    if _LOCK_TAKERS is None:
        import logging

        fns = [logging.Handler.acquire, getattr(logging, "_acquireLock", None)]
        _LOCK_TAKERS = frozenset(fn.__code__ for fn in fns if fn is not None)
    return _LOCK_TAKERS


_LOCK_TAKERS: frozenset[Any] | None = None


def _holds_logging_lock(thread_id: int) -> bool:
    """Whether the thread holds logging's module lock or a handler's lock (an RLock's repr
    names its owner: no other API tells another thread's ownership)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return False
    locks = [getattr(logging, "_lock", None)]
    for ref in list(getattr(logging, "_handlerList", ())):
        handler = ref()
        if handler is not None:
            locks.append(getattr(handler, "lock", None))
    owner = f"owner={thread_id} "
    return any(lock is not None and owner in repr(lock) for lock in locks)


class _Target:
    """One guarded stretch of sync code in one thread (the context manager `guard` returns)."""

    __slots__ = ("active", "exc", "held", "in_main", "lock", "sent_at", "thread_id")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.in_main = self.thread_id == _MAIN_ID
        # Main-thread targets share `_lock` with the SIGALRM handler. A worker thread's
        # target has its own: a lock every worker takes per task run would make a convoy.
        self.lock = _lock if self.in_main else threading.Lock()
        self.active = True
        self.exc: BaseException | None = None  # set when an interrupt was sent
        self.held: BaseException | None = None  # an interrupt held back (worker threads)
        self.sent_at = 0.0

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
            if self.held is not None:
                self.held = None
                _held.pop(self.thread_id, None)
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
                if _unsafe(target.thread_id, frame):  # not here: SIGALRM comes again soon
                    signal.setitimer(signal.ITIMER_REAL, _RETRY)
                    return
                exc, target.exc = target.exc, None  # (sent again if it is swallowed)
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
    """Raise `exc` in the guarded thread, if it is still inside its guard (now, or as soon
    as the thread is out of code an exception must not enter)."""
    held_back = sent = False
    with target.lock:
        if not target.active:
            return False
        if target.exc is not None:  # sent before: swallowed, if it is ours and long enough ago
            if target.exc is not exc or time.monotonic() - target.sent_at < _RESEND:
                return False
            target.exc = None
        if target.in_main:
            if signal.getsignal(signal.SIGALRM) is not _on_sigalrm:
                return False  # the program took SIGALRM over; the run stops at its next call
            target.exc = exc
            target.sent_at = time.monotonic()
            sent = True
            signal.pthread_kill(target.thread_id, signal.SIGALRM)
        else:
            if _traced():
                # Under a tracer (coverage, a debugger, a profiler) an asynchronous exception
                # can be delivered into the tracer's own code and wedge the thread for good:
                # the run is stopped at its next task or subflow call instead, and its outcome
                # is TimedOut / Cancelled all the same (the drivers check the deadline).
                return False
            tid = target.thread_id
            if _unsafe(tid, sys._current_frames().get(tid)):
                held_back = True
            else:
                target.held = None
                _held.pop(tid, None)
                target.exc = exc
                target.sent_at = time.monotonic()
                sent = True
                # The C API takes an exception class; a subclass per interrupt carries `.run`.
                cls = type(type(exc).__name__, (type(exc),), {"run": getattr(exc, "run", None)})
                cls.__module__ = type(exc).__module__
                _set_async_exc(target.thread_id, cls)
                # The thread may have moved on between the look and the send: look again,
                # and withdraw the exception if it is now where it must not land.
                if _unsafe(tid, sys._current_frames().get(tid)):
                    _set_async_exc(target.thread_id, None)
                    target.exc = None
                    held_back, sent = True, False
            if held_back:
                target.held = exc
                _held[tid] = target
    # (Outside `target.lock`: the timer thread takes the two locks the other way round.)
    if held_back:
        _wrap_logging_release()
        at_deadline(time.monotonic() + _RETRY, target, functools.partial(_same, exc))
    elif sent:
        at_deadline(time.monotonic() + _RESEND, target, functools.partial(_same, exc))
    return True


#: worker thread id -> its target with an interrupt held back
_held: dict[int, _Target] = {}
_original_release: Any = None


def _wrap_logging_release() -> None:
    """Make `logging.Handler.release` deliver a held-back interrupt once the thread holds
    none of logging's locks: the earliest moment it can land safely."""
    global _original_release
    if _original_release is not None:
        return
    import logging

    original = logging.Handler.release

    def release(self: logging.Handler) -> None:
        original(self)
        if _held:
            target = _held.get(threading.get_ident())
            if target is not None and not _holds_logging_lock(target.thread_id):
                _deliver_held(target)

    release.__wrapped__ = original  # type: ignore[attr-defined]
    _original_release = original
    logging.Handler.release = release  # type: ignore[method-assign]


def _deliver_held(target: _Target) -> None:
    with target.lock:
        exc, target.held = target.held, None
        _held.pop(target.thread_id, None)
        if exc is None or not target.active or target.exc is not None:
            return
        target.exc = exc
        target.sent_at = time.monotonic()
    at_deadline(target.sent_at + _RESEND, target, functools.partial(_same, exc))
    raise exc


def _same(exc: BaseException) -> BaseException:
    return exc


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
