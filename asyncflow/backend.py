"""The event-loop backend, behind one door: which library runs the current loop, how to call
into that loop from another thread, and its cheapest cancel scope. Lowest floor: it imports
nothing of asyncflow."""

from __future__ import annotations

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


__all__ = ["cancel_scope_type", "current_library", "threadsafe_caller"]
