"""Variables: small named JSON values kept in the run store, shared by every process that
uses the same store (Prefect 3's `Variable` API).

With `ASYNCFLOW_STORE=memory` there is no store: variables then live in this process only.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, Field

#: Longest value, as JSON text; longest name.
MAX_VALUE_LENGTH = 5000
MAX_NAME_LENGTH = 255
_NAME = re.compile(r"^[a-z0-9_-]+$")
_NOT_SET: Any = object()


class Variable(BaseModel):
    """A named JSON value: `Variable.set(name, value)`, `Variable.get(name)`,
    `Variable.unset(name)`, and `aset` / `aget` / `aunset` in async code."""

    name: str
    value: Any = None
    tags: list[str] = Field(default_factory=list)

    @classmethod
    def set(
        cls, name: str, value: Any, tags: list[str] | None = None, overwrite: bool = False
    ) -> Variable:
        """Set variable `name` to `value` (JSON-able, at most 5,000 characters as JSON).

        ValueError for a bad name or value, or when it exists and `overwrite` is False.
        """
        _check_name(name)
        text = _value_json(name, value)
        tag_list = sorted({str(t) for t in tags or ()})
        store = _store()
        if store is None:
            with _memory_lock:
                if name in _memory and not overwrite:
                    raise _exists(name)
                _memory[name] = (text, tag_list)
        elif not _retrying(
            store, lambda s: s.set_variable(name, text, json.dumps(tag_list), overwrite)
        ):
            raise _exists(name)
        return cls(name=name, value=json.loads(text), tags=tag_list)

    @classmethod
    def get(cls, name: str, default: Any = None) -> Any:
        """The value of variable `name`, or `default` when it is not set."""
        _check_name(name)
        store = _store()
        if store is None:
            with _memory_lock:
                found = _memory.get(name)
            return default if found is None else json.loads(found[0])
        row = _retrying(store, lambda s: s.get_variable(name))
        return default if row is None else json.loads(row[0])

    @classmethod
    def unset(cls, name: str) -> bool:
        """Delete variable `name`; False when it was not set."""
        _check_name(name)
        store = _store()
        if store is None:
            with _memory_lock:
                return _memory.pop(name, None) is not None
        return bool(_retrying(store, lambda s: s.unset_variable(name)))

    @classmethod
    async def aset(
        cls, name: str, value: Any, tags: list[str] | None = None, overwrite: bool = False
    ) -> Variable:
        """`set`, from async code (the store is written on a worker thread)."""
        return await anyio.to_thread.run_sync(lambda: cls.set(name, value, tags, overwrite))

    @classmethod
    async def aget(cls, name: str, default: Any = None) -> Any:
        """`get`, from async code."""
        return await anyio.to_thread.run_sync(lambda: cls.get(name, default))

    @classmethod
    async def aunset(cls, name: str) -> bool:
        """`unset`, from async code."""
        return await anyio.to_thread.run_sync(lambda: cls.unset(name))


def list_variables() -> list[Variable]:
    """Every variable, by name."""
    store = _store()
    if store is None:
        with _memory_lock:
            items = sorted(_memory.items())
        return [Variable(name=n, value=json.loads(v), tags=t) for n, (v, t) in items]
    rows = _retrying(store, lambda s: s.list_variables())
    return [Variable(name=n, value=json.loads(v), tags=json.loads(t)) for n, v, t, _, _ in rows]


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"Variable name {name!r} is not valid: use 1 to {MAX_NAME_LENGTH} lowercase "
            "letters, digits, '_' and '-'."
        )


def _value_json(name: str, value: Any) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        from pydantic_core import to_jsonable_python

        try:  # pydantic models, datetimes, UUIDs...: their JSON form
            text = json.dumps(to_jsonable_python(value), separators=(",", ":"), allow_nan=False)
        except Exception as exc:
            raise ValueError(
                f"Variable {name!r}: its value must be JSON-serializable ({exc})."
            ) from None
    if len(text) > MAX_VALUE_LENGTH:
        raise ValueError(
            f"Variable {name!r}: its value is {len(text):,} characters as JSON; at most "
            f"{MAX_VALUE_LENGTH:,} are allowed."
        )
    return text


def _exists(name: str) -> ValueError:
    return ValueError(f"Variable {name!r} already exists; pass overwrite=True to replace it.")


_memory: dict[str, tuple[str, list[str]]] = {}
_memory_lock = threading.Lock()
_opened: dict[str, Any] = {}  # store URL -> the store this process reads variables from
_opened_lock = threading.Lock()


def _store() -> Any:
    """The configured run store (opened once per process and URL), None for memory."""
    import os

    from asyncflow.store import connect, recording_url

    url = recording_url()
    if url is None:
        return None
    key = f"{os.getpid()}:{url}"  # (a forked child opens its own connection)
    with _opened_lock:
        store = _opened.get(key)
        if store is None:
            store = _opened[key] = connect(url)
    return store


def _retrying(store: Any, call: Any) -> Any:
    """`call(store)`; after a store error, once more on a new connection (a PostgreSQL
    server that restarted, say); the second error goes to the caller."""
    from asyncflow.exceptions import StoreError

    try:
        return call(store)
    except StoreError:
        with _opened_lock:
            for key, opened in list(_opened.items()):
                if opened is store:
                    del _opened[key]
        try:
            store.close()
        except Exception:
            pass
        return call(_store())


__all__ = ["MAX_NAME_LENGTH", "MAX_VALUE_LENGTH", "Variable", "list_variables"]
