"""`tags(...)`: add tags to the flow and task runs started inside a `with` block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from asyncflow.engine.context import tags_var


@contextmanager
def tags(*new_tags: str) -> Iterator[set[str]]:
    """Add `new_tags` to every flow run and task run started inside the block, on top of
    the tags of enclosing blocks (and of the task itself); yields the current tags."""
    for tag in new_tags:
        if not isinstance(tag, str):
            raise TypeError(f"Tags must be strings, got {tag!r} ({type(tag).__name__}).")
    current = tags_var.get().union(new_tags)
    token = tags_var.set(current)
    try:
        yield set(current)
    finally:
        tags_var.reset(token)


__all__ = ["tags"]
