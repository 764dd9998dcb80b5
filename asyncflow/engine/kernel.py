"""The sync bridge: a kernel event loop in a daemon thread, reached through a blocking portal.

Sync flow bodies run in the caller's thread and never touch it unless they start async
work (an async task or subflow, an async task submission). It starts on first use and
stops at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any, TypeVar

import anyio
import sniffio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncflow._signals import sigterm_blocked
from asyncflow.engine.interrupts import interruptible

T = TypeVar("T")

_lock = threading.Lock()
_stack: ExitStack | None = None
_portal: BlockingPortal | None = None


_spawn: Callable[[Callable[[], Awaitable[Any]]], object] | None = None
_host_stop: Callable[[], object] | None = None


def portal() -> BlockingPortal:
    """The kernel loop's portal, started on first use."""
    global _stack, _portal, _spawn, _host_stop
    if _portal is None:
        with _lock:
            if _portal is None:
                stack = ExitStack()
                with sigterm_blocked():  # its thread must leave SIGTERM to the main thread
                    started = stack.enter_context(
                        start_blocking_portal("asyncio", name="asyncflow-kernel")
                    )
                _, (_spawn, _host_stop) = started.start_task(_host)
                _stack, _portal = stack, started
                atexit.register(shutdown)
    return _portal


async def _host(*, task_status: Any) -> None:
    """The task group that `spawn` starts tasks in, until `shutdown`. Spawned functions are
    queued and the loop is woken once for all queued meanwhile."""
    loop = asyncio.get_running_loop()
    queued: deque[tuple[contextvars.Context, Callable[[], Awaitable[Any]]]] = deque()
    wake = asyncio.Event()
    woken = [False]  # a wake-up is on its way (read and set by any thread; cleared here)
    stopping = [False]

    def spawn(fn: Callable[[], Awaitable[Any]]) -> None:
        # (the task runs in a copy of the spawner's context, as a call from its thread
        # would; sniffio's variable there must name this loop, not a trio flow's)
        context = contextvars.copy_context()
        context.run(sniffio.current_async_library_cvar.set, "asyncio")
        queued.append((context, fn))
        if not woken[0]:
            woken[0] = True
            loop.call_soon_threadsafe(wake.set)

    def stop() -> None:
        stopping[0] = True
        wake.set()

    async with anyio.create_task_group() as group:
        task_status.started((spawn, stop))
        while not stopping[0]:
            await wake.wait()
            wake.clear()
            woken[0] = False  # (before taking the queue: what comes later wakes it again)
            while queued:
                context, fn = queued.popleft()
                context.run(group.start_soon, _guarded, fn)


async def _guarded(fn: Callable[[], Awaitable[Any]]) -> None:
    try:
        await fn()
    except Exception:  # (a run's task records its own outcome; the others go on)
        pass


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


def spawn(fn: Callable[[], Awaitable[Any]]) -> None:
    """Start `fn()` on the kernel loop without waiting for it (nor for the loop to take it:
    a flow submitting many runs does not wait for the loop once per run)."""
    if _spawn is None:
        portal()
    assert _spawn is not None
    _spawn(fn)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def shutdown() -> None:
    """Stop the kernel loop (registered with atexit)."""
    global _stack, _portal, _spawn, _host_stop
    with _lock:
        stack, started, stop = _stack, _portal, _host_stop
        _stack, _portal, _spawn, _host_stop = None, None, None, None
    if stack is not None:
        if stop is not None and started is not None:
            started.call(stop)  # (the host ends once the tasks it started have ended)
        stack.close()
