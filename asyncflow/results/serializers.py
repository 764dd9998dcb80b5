"""Serializers: a result to bytes and back, by Prefect's names.

`"pickle"` (cloudpickle, the default: any Python object), `"json"` (JSON values, and
pydantic models, datetimes, UUIDs, decimals, paths, sets and bytes, which come back as the
same types), and `"compressed/pickle"` / `"compressed/json"` (the same, zlib-compressed).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import importlib
import json
import pathlib
import pickle
import uuid
import zlib
from typing import Any

from asyncflow.exceptions import SerializationError

_CLASS = "__class__"  # a JSON object {"__class__": "module:Qualname", "data": ...} is a typed value


class Serializer:
    """Turns results into bytes and back; `type` is the name it is chosen by."""

    type: str

    def dumps(self, obj: Any) -> bytes:
        raise NotImplementedError

    def loads(self, blob: bytes) -> Any:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(self.type)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PickleSerializer(Serializer):
    """cloudpickle: any object, functions and classes defined in functions too."""

    type = "pickle"

    def dumps(self, obj: Any) -> bytes:
        import cloudpickle  # type: ignore[import-untyped]

        try:
            return cloudpickle.dumps(obj)  # type: ignore[no-any-return]
        except Exception as exc:
            raise SerializationError(
                f"The result cannot be pickled ({type(exc).__name__}: {exc})."
            ) from exc

    def loads(self, blob: bytes) -> Any:
        return pickle.loads(blob)  # (results are written by this library, not by strangers)


class JSONSerializer(Serializer):
    """JSON; pydantic models, datetimes, UUIDs, decimals, paths, sets and bytes round-trip."""

    type = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, default=_encode, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"The result is not JSON-serializable ({exc}); use result_serializer='pickle'."
            ) from exc

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob, object_hook=_decode)


_TYPED: tuple[type, ...] = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    pathlib.PurePath,
)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(obj: Any) -> Any:
    cls = type(obj)
    if isinstance(obj, bytes):
        return {_CLASS: "builtins:bytes", "data": base64.b64encode(obj).decode()}
    if isinstance(obj, (set, frozenset)):
        return {_CLASS: _name(cls), "data": list(obj)}
    if hasattr(obj, "model_dump") and hasattr(cls, "model_validate"):  # a pydantic model
        return {_CLASS: _name(cls), "data": obj.model_dump(mode="json")}
    if isinstance(obj, _TYPED):
        from pydantic import TypeAdapter

        return {_CLASS: _name(cls), "data": TypeAdapter(cls).dump_python(obj, mode="json")}
    raise TypeError(f"Object of type {cls.__name__} is not JSON serializable")


def _decode(obj: dict[str, Any]) -> Any:
    name = obj.get(_CLASS)
    if name is None or len(obj) != 2 or "data" not in obj or not isinstance(name, str):
        return obj
    data = obj["data"]
    if name == "builtins:bytes":
        return base64.b64decode(data)
    module, _, qualname = name.partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise SerializationError(
            f"The result holds a {name} that cannot be imported here ({exc})."
        ) from exc
    if isinstance(cls, type) and issubclass(cls, (set, frozenset)):
        return cls(data)
    if hasattr(cls, "model_validate"):
        return cls.model_validate(data)
    from pydantic import TypeAdapter

    return TypeAdapter(cls).validate_python(data)


class CompressedSerializer(Serializer):
    """Another serializer's bytes, zlib-compressed."""

    def __init__(self, serializer: Serializer | str = "pickle", level: int = 6) -> None:
        self.serializer = resolve_serializer(serializer)
        if isinstance(self.serializer, CompressedSerializer):
            raise ValueError("A compressed serializer cannot wrap another compressed one.")
        self.level = level
        self.type = f"compressed/{self.serializer.type}"

    def dumps(self, obj: Any) -> bytes:
        return zlib.compress(self.serializer.dumps(obj), self.level)

    def loads(self, blob: bytes) -> Any:
        return self.serializer.loads(zlib.decompress(blob))

    def __hash__(self) -> int:
        return hash(self.type)

    def __repr__(self) -> str:
        return f"CompressedSerializer({self.serializer!r})"


_BY_NAME: dict[str, type[Serializer]] = {"pickle": PickleSerializer, "json": JSONSerializer}


def resolve_serializer(value: Serializer | str | None) -> Serializer:
    """A serializer from its name (`"pickle"`, `"json"`, `"compressed/pickle"`,
    `"compressed/json"`) or itself; None is the default, pickle."""
    if value is None:
        return PickleSerializer()
    if isinstance(value, Serializer):
        return value
    if isinstance(value, str):
        if value.startswith("compressed/"):
            return CompressedSerializer(value.removeprefix("compressed/"))
        cls = _BY_NAME.get(value)
        if cls is not None:
            return cls()
    names = ", ".join(sorted([*_BY_NAME, *(f"compressed/{n}" for n in _BY_NAME)]))
    raise ValueError(f"Unknown result serializer {value!r}: give one of {names}, or a Serializer.")


__all__ = [
    "CompressedSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "resolve_serializer",
]
