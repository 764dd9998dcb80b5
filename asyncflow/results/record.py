"""`ResultRecord`: where a persisted result is and how to read it back.

A result file is a small header, then the serializer's bytes: `AFR1`, a JSON line of
metadata (the serializer's name, when it was written, when it expires), the payload.
"""

from __future__ import annotations

import json
import time
from typing import Any

from asyncflow import states
from asyncflow.exceptions import MissingResult

_MAGIC = b"AFR1\n"


def encode(serializer: Any, payload: bytes, expires: float | None) -> bytes:
    meta = {"serializer": serializer.type, "created": time.time(), "expires": expires}
    return _MAGIC + json.dumps(meta).encode() + b"\n" + payload


def decode(blob: bytes, where: str) -> tuple[dict[str, Any], bytes]:
    if not blob.startswith(_MAGIC):
        raise MissingResult(f"{where} is not an asyncflow result file.")
    end = blob.index(b"\n", len(_MAGIC))
    return json.loads(blob[len(_MAGIC) : end]), blob[end + 1 :]


class ResultRecord:
    """A persisted result: its storage and key, the serializer that wrote it, its size in
    bytes, when it was written and when it expires (None: never). `load()` reads the value
    back (`MissingResult` when the file is gone)."""

    __slots__ = ("created", "expires", "key", "serializer", "size", "storage")

    def __init__(
        self, storage: Any, key: str, serializer: Any, size: int, expires: float | None = None
    ) -> None:
        self.storage = storage
        self.key = key
        self.serializer = serializer
        self.size = size
        self.created = time.time()
        self.expires = expires

    def load(self) -> Any:
        _, payload = decode(self.storage.read(self.key), f"{self.storage!r} key {self.key!r}")
        return self.serializer.loads(payload)

    @property
    def expired(self) -> bool:
        return self.expires is not None and time.time() >= self.expires

    def __repr__(self) -> str:
        return (
            f"ResultRecord(key={self.key!r}, serializer={self.serializer.type!r}, "
            f"size={self.size}, storage={self.storage!r})"
        )


def read(storage: Any, key: str, serializer: Any) -> tuple[ResultRecord, Any] | None:
    """The record and value stored at `key`, or None when there is none, it expired, or
    it was written by another serializer than `serializer`."""
    if not storage.exists(key):
        return None
    try:
        meta, payload = decode(storage.read(key), f"{storage!r} key {key!r}")
    except MissingResult:
        return None
    expires = meta.get("expires")
    if meta.get("serializer") != serializer.type or (
        expires is not None and time.time() >= expires
    ):
        return None
    record = ResultRecord(storage, key, serializer, len(payload), expires)
    record.created = meta.get("created", record.created)
    return record, serializer.loads(payload)


states.register_result_record_type(ResultRecord)

__all__ = ["ResultRecord", "decode", "encode", "read"]
