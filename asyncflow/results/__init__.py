"""Results: how a run's result is turned into bytes (serializers) and kept (storage)."""

from asyncflow.results.serializers import (
    CompressedSerializer,
    JSONSerializer,
    PickleSerializer,
    Serializer,
    resolve_serializer,
)
from asyncflow.results.storage import LocalFileSystem, ResultStorage

__all__ = [
    "CompressedSerializer",
    "JSONSerializer",
    "LocalFileSystem",
    "PickleSerializer",
    "ResultStorage",
    "Serializer",
    "resolve_serializer",
]
