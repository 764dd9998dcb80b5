"""Results: serializers (a result to bytes and back), storage (where the bytes are kept),
records (where a persisted result is) and persistence (the hook that writes them)."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CompressedSerializer": "serializers",
    "JSONSerializer": "serializers",
    "PickleSerializer": "serializers",
    "Serializer": "serializers",
    "resolve_serializer": "serializers",
    "LocalFileSystem": "storage",
    "RemoteFileSystem": "storage",
    "ResultStorage": "storage",
    "ResultRecord": "record",
}


def __getattr__(name: str) -> Any:  # imported when first used: `import asyncflow` stays light
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncflow.results' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"asyncflow.results.{module}"), name)


__all__ = sorted(_EXPORTS)
