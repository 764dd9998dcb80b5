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
an exception must not land (`_unsafe`): holding or taking one of `logging`'s locks, or inside
logging at all (a handler takes its lock before the `try` that releases it, so an exception
between the two left the lock held and every later log call hung; `emit` and `LogRecord`
swallow exceptions, so the run went on), or in asyncflow's own bookkeeping (a run
half-recorded). Frames of the standard library are looked through to the code that called
them. A worker thread held back raises the exception itself as it releases a handler's lock
(`Handler.release` is wrapped, once, on first need), when it releases it back to code where
the exception may land: under heavy logging a thread is almost always in logging, and a retry
alone might never find it outside.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import logging
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asyncflow._signals import sigterm_blocked

F = TypeVar("F", bound=Callable[..., Any])
_lock = threading.RLock()
_counter = itertools.count()
_RETRY = 0.002  # seconds between attempts while the thread is in code an interrupt must not enter
_WALK = 16  # frames looked at, innermost first
# (site-packages below these paths is not the standard library: `_stdlib`)
_STDLIB = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
#: asyncflow functions that wait in a C call on purpose, to be interrupted there
_INTERRUPTIBLE: set[Any] = set()


#: asyncflow functions that call a run's own code (its body): a signal may stop that code
_BODY_CALLERS: set[Any] = set()


def calls_body(fn: F) -> F:
    """Mark an asyncflow function that calls a run's body: what it calls is the run's own
    code, where SIGTERM may land (`asyncflow.engine.termination`)."""
    _BODY_CALLERS.add(fn.__code__)
    return fn


def interruptible(fn: F) -> F:
    """Mark an asyncflow function that blocks (e.g. in `time.sleep`) as a place where an
    interrupt may land."""
    _INTERRUPTIBLE.add(fn.__code__)
    return fn


def _unsafe(thread_id: int, frame: Any) -> bool:
    """Whether an exception raised now in thread `thread_id`, whose innermost Python frame
    is `frame`, could leave a lock held, be swallowed, or leave a run half-recorded."""
    return _holds_logging_lock(thread_id) or _unsafe_code(frame, logging_ok=False)


def _unsafe_code(frame: Any, logging_ok: bool) -> bool:
    """Walk out from `frame` through the standard library: True at logging (unless
    `logging_ok`) or at asyncflow code not marked interruptible, False at the first other
    frame (the run's own code, or a library's)."""
    for _ in range(_WALK):
        if frame is None:
            return False
        code = frame.f_code
        name = frame.f_globals.get("__name__", "")
        if name == "asyncflow" or name.startswith("asyncflow."):
            return code not in _INTERRUPTIBLE
        if name == "logging" or name.startswith("logging."):
            if not logging_ok:
                return True
        elif not _stdlib(code.co_filename):
            return False
        frame = frame.f_back
    return False


def _stdlib(filename: str) -> bool:
    # (`<frozen importlib._bootstrap>`: the import system, stdlib too)
    return (filename.startswith(_STDLIB) and "-packages" not in filename) or filename.startswith(
        "<frozen "
    )


def _holds_logging_lock(thread_id: int) -> bool:
    """Whether the thread holds logging's module lock or a handler's lock (an RLock's repr
    names its owner: no other API tells another thread's ownership)."""
    locks = [getattr(logging, "_lock", None)]
    for ref in list(getattr(logging, "_handlerList", ())):
        handler = ref()
        if handler is not None:
            locks.append(getattr(handler, "lock", None))
    owner = f"owner={thread_id} "
    return any(lock is not None and owner in repr(lock) for lock in locks)


class _Target:
    """One guarded stretch of sync code in one thread (the context manager `guard` returns)."""

    __slots__ = ("active", "exc", "held", "in_main", "lock", "thread_id")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.in_main = self.thread_id == _MAIN_ID
        # Main-thread targets share `_lock` with the SIGALRM handler. A worker thread's
        # target has its own: a lock every worker takes per task run would make a convoy.
        self.lock = _lock if self.in_main else threading.Lock()
        self.active = True
        self.exc: BaseException | None = None  # set when an interrupt was sent
        self.held: BaseException | None = None  # an interrupt held back (worker threads)

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
                if _held.get(self.thread_id) is self:
                    del _held[self.thread_id]
            if self.exc is not None and not self.in_main:
                _set_async_exc(self.thread_id, None)  # withdraw an undelivered interrupt
            self.exc = None
            if self.in_main:
                _main_targets.remove(self)
                if not _main_targets and _rearmed:
                    signal.setitimer(signal.ITIMER_REAL, 0)  # no one left to retry for


_MAIN_ID = threading.main_thread().ident
_main_targets: list[_Target] = []  # innermost last
_previous_handler: Any = None
_handler_installed = False
_rearmed = False  # a retry SIGALRM is on its way (setitimer)


def _install_handler() -> None:
    """Install the SIGALRM handler once, for good: swapping it per run cost microseconds.

    It passes signals it was not expecting on to the handler it replaced.
    """
    global _previous_handler, _handler_installed
    _previous_handler = signal.signal(signal.SIGALRM, _on_sigalrm)
    _handler_installed = True


def _on_sigalrm(signum: int, frame: Any) -> None:
    global _rearmed
    with _lock:
        retry, _rearmed = _rearmed, False
        for target in reversed(_main_targets):
            if target.active and target.exc is not None:
                if _unsafe(target.thread_id, frame):  # not here: SIGALRM comes again soon
                    _rearmed = True
                    signal.setitimer(signal.ITIMER_REAL, _RETRY)
                    return
                exc, target.exc = target.exc, None
                target.active = False
                raise exc
        if retry:
            return  # our own retry, after its run left the guard: nobody else's signal
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
    held_back = False
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
            tid = target.thread_id
            if _unsafe(tid, sys._current_frames().get(tid)):
                held_back = True
            else:
                target.held = None
                if _held.get(tid) is target:
                    del _held[tid]
                target.exc = exc
                # The C API takes an exception class; a subclass per interrupt carries `.run`.
                cls = type(type(exc).__name__, (type(exc),), {"run": getattr(exc, "run", None)})
                cls.__module__ = type(exc).__module__
                _set_async_exc(target.thread_id, cls)
                # The thread may have moved on between the look and the send: look again,
                # and withdraw the exception if it is now where it must not land.
                if _unsafe(tid, sys._current_frames().get(tid)):
                    _set_async_exc(target.thread_id, None)
                    target.exc = None
                    held_back = True
            if held_back:
                target.held = exc
                _held[tid] = target
    if held_back:  # (outside `target.lock`, which is never held while taking `_lock`)
        _wrap_logging_release()
        at_deadline(time.monotonic() + _RETRY, target, functools.partial(_same, exc))
    return True


#: worker thread id -> its target with an interrupt held back
_held: dict[int, _Target] = {}
_original_release: Any = None


def _wrap_logging_release() -> None:
    """Make `logging.Handler.release` deliver a held-back interrupt once the thread holds
    none of logging's locks and returns to code where it may land: the earliest safe moment."""
    global _original_release
    with _lock:
        if _original_release is not None:
            return
        original = logging.Handler.release

        def release(self: logging.Handler) -> None:
            original(self)
            if _held:
                target = _held.get(threading.get_ident())
                if (
                    target is not None
                    and not _holds_logging_lock(target.thread_id)
                    and not _unsafe_code(sys._getframe(1), logging_ok=True)
                ):
                    _deliver_held(target)

        release.__wrapped__ = original  # type: ignore[attr-defined]
        _original_release = original
        logging.Handler.release = release  # type: ignore[method-assign]


def _deliver_held(target: _Target) -> None:
    with target.lock:
        exc, target.held = target.held, None
        if _held.get(target.thread_id) is target:
            del _held[target.thread_id]
        if exc is None or not target.active or target.exc is not None:
            return
        target.exc = exc
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
            with sigterm_blocked():
                _timer_thread.start()


def _timer_loop() -> None:
    while True:
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
                break
        # Outside `_lock`: `interrupt` takes a worker's target lock, and a thread holding that
        # one may be waiting for `_lock` (the main thread's SIGALRM handler).
        if target.active:
            interrupt(target, make_exc())
