"""Wrappers that change how a task argument is treated: `unmapped`, `allow_failure`, `quote`."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class _Annotation(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class unmapped(_Annotation[T]):
    """Pass the same value to every mapped call instead of iterating over it."""

    __slots__ = ()


class allow_failure(_Annotation[T]):
    """Run the downstream task even when this upstream future/state failed.

    The downstream receives the upstream's result, or its exception if it failed.
    """

    __slots__ = ()


class opaque(_Annotation[T]):
    """Resolve a future or state to its result, but do not look inside the result (nor
    inside any other value) for more futures: for large values, where that walk costs."""

    __slots__ = ()


class quote(_Annotation[T]):
    """Pass the value through untouched: futures and states inside it are not resolved."""

    __slots__ = ()

    def unquote(self) -> T:
        """The quoted value (Prefect's name for `unwrap`)."""
        return self.value


__all__ = [
    "allow_failure",
    "opaque",
    "quote",
    "unmapped",
]
