"""The sync bridge: a kernel event loop in a daemon thread, reached through a blocking portal.

Sync flow bodies run in the caller's thread and never touch it unless they start async
work (an async task or subflow, an async task submission). It starts on first use and
stops at interpreter exit.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncflow._signals import sigterm_blocked
from asyncflow.engine.interrupts import interruptible

T = TypeVar("T")

_lock = threading.Lock()
_stack: ExitStack | None = None
_portal: BlockingPortal | None = None


def portal() -> BlockingPortal:
    """The kernel loop's portal, started on first use."""
    global _stack, _portal
    if _portal is None:
        with _lock:
            if _portal is None:
                stack = ExitStack()
                with sigterm_blocked():  # its thread must leave SIGTERM to the main thread
                    _portal = stack.enter_context(
                        start_blocking_portal("asyncio", name="asyncflow-kernel")
                    )
                _stack = stack
                atexit.register(shutdown)
    return _portal


def run(awaitable: Awaitable[T]) -> T:
    """Block this thread until `awaitable` has run to completion on the kernel loop. An
    interrupt of the wait (the run's timeout or cancellation, SIGTERM) cancels it there."""
    # (not interruptible while the task is handed over: an interrupt there would lose its
    # future, and the kernel loop's shutdown would then wait for the task to end)
    return _wait(portal().start_task_soon(_await, awaitable))


@interruptible  # a sync run's timeout or cancellation may stop its wait for the kernel loop
def _wait(future: Future[T]) -> T:
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def spawn(fn: Callable[[], Awaitable[Any]]) -> Future[Any]:
    """Start `fn()` on the kernel loop without waiting for it."""
    return portal().start_task_soon(fn)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def shutdown() -> None:
    """Stop the kernel loop (registered with atexit)."""
    global _stack, _portal
    with _lock:
        stack, _stack, _portal = _stack, None, None
    if stack is not None:
        stack.close()
