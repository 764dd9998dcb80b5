"""The event-loop backend, behind one door: which library runs the current loop, how to call
into that loop from another thread, and its cheapest cancel scope. Lowest floor: it imports
nothing of asyncflow."""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import sniffio


def current_library() -> str:
    """"asyncio" or "trio" (sniffio's answer); sniffio's error outside any loop."""
    return sniffio.current_async_library()


def threadsafe_caller() -> Callable[[Callable[[], object]], object]:
    """A function that schedules a callback on the current event loop from any thread."""
    if current_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe


class _Coalescer:
    """Callbacks for one asyncio loop from other threads: those queued while a wake-up of
    the loop is on its way share it (asyncio writes to its wake-up pipe for every
    `call_soon_threadsafe`: a system call each, for each of thousands of completions)."""

    def __init__(self, loop: Any) -> None:
        self._call_soon = loop.call_soon_threadsafe
        self._queued: deque[Callable[[], object]] = deque()
        self._armed = False

    def call(self, fn: Callable[[], object]) -> None:
        self._queued.append(fn)
        if not self._armed:
            self._armed = True
            self._call_soon(self._drain)

    def _drain(self) -> None:
        self._armed = False  # (before taking the queue: what comes later wakes it again)
        queued = self._queued
        while queued:
            try:
                queued.popleft()()
            except BaseException:  # (the loop reports it; the rest still get their turn)
                if queued and not self._armed:
                    self._armed = True
                    self._call_soon(self._drain)
                raise


_coalescers: weakref.WeakKeyDictionary[Any, _Coalescer] = weakref.WeakKeyDictionary()


def coalescing_caller() -> Callable[[Callable[[], object]], object]:
    """`threadsafe_caller()`, but on asyncio callbacks that come while the loop has not
    woken for an earlier one yet wait for that same wake-up."""
    if current_library() == "trio":
        return threadsafe_caller()
    import asyncio

    loop = asyncio.get_running_loop()
    coalescer = _coalescers.get(loop)
    if coalescer is None:
        coalescer = _coalescers[loop] = _Coalescer(loop)
    return coalescer.call


def cancel_scope_type() -> Callable[[], Any]:
    """The cheapest cancel scope class for the current loop.

    Under trio, trio's own: anyio's wrapper around it adds half again to its cost. Under
    asyncio, the class of anyio's scope for this backend: `anyio.CancelScope()` finds the
    backend on every call and then initializes the new scope twice.
    """
    if current_library() == "trio":
        import trio

        return trio.CancelScope
    return type(anyio.CancelScope())


__all__ = ["cancel_scope_type", "coalescing_caller", "current_library", "threadsafe_caller"]
