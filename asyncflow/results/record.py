"""`ResultRecord`: where a persisted result is and how to read it back."""

from __future__ import annotations

import time
from typing import Any

from asyncflow import states


class ResultRecord:
    """A persisted result: its storage and key, the serializer that wrote it, its size in
    bytes and when it was written. `load()` reads the value back (`MissingResult` when
    the file is gone)."""

    __slots__ = ("created", "key", "serializer", "size", "storage")

    def __init__(self, storage: Any, key: str, serializer: Any, size: int) -> None:
        self.storage = storage
        self.key = key
        self.serializer = serializer
        self.size = size
        self.created = time.time()

    def load(self) -> Any:
        return self.serializer.loads(self.storage.read(self.key))

    def __repr__(self) -> str:
        return (
            f"ResultRecord(key={self.key!r}, serializer={self.serializer.type!r}, "
            f"size={self.size}, storage={self.storage!r})"
        )


states.register_result_record_type(ResultRecord)

__all__ = ["ResultRecord"]
