"""Whether the caller awaits the call it is making.

Prefect's `State.result()` returns a coroutine in async code, so code written for it says
`await state.result()`; code written for asyncflow says `state.result()`. Both work because
`result()` looks at its call site: when the next instruction there awaits the returned
object, it returns an awaitable, otherwise the value. Only coroutine code can await, so a
call from a plain function costs one flag test; a call site in a coroutine is decoded once.
"""

from __future__ import annotations

import dis
import inspect
import sys
from types import CodeType

_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
# (id(code), offset of the call) -> (code, awaited). The code object is kept so an id
# reused by another code object after this one was freed is not taken for it.
_SITES: dict[tuple[int, int], tuple[CodeType, bool]] = {}
_MAX_SITES = 10_000


def awaited_by_caller(depth: int = 2) -> bool:
    """True when the frame `depth` levels up awaits what the current call returns
    (`depth=2`: the caller of the function that asks)."""
    frame = sys._getframe(depth)
    code = frame.f_code
    if not code.co_flags & _ASYNC_CODE:
        return False
    key = (id(code), frame.f_lasti)
    site = _SITES.get(key)
    if site is None or site[0] is not code:
        if len(_SITES) >= _MAX_SITES:  # (code made at run time, e.g. exec'd in a notebook)
            _SITES.clear()
        site = _SITES[key] = (code, _awaits_after(code, frame.f_lasti))
    return site[1]


def _awaits_after(code: CodeType, offset: int) -> bool:
    # `f_lasti` is the call's offset, or (3.11) that of its last inline-cache unit: the
    # next instruction is the first one past it (`get_instructions` skips cache units).
    for instruction in dis.get_instructions(code):
        if instruction.offset > offset:
            return instruction.opname == "GET_AWAITABLE"
    return False
