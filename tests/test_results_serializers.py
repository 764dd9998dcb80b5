"""Result serializers and storage (issue 14, first slice)."""

from __future__ import annotations

import datetime
import decimal
import pathlib
import threading
import uuid
from typing import Any

import pydantic
import pytest

from asyncflow.exceptions import MissingResult, SerializationError
from asyncflow.results import (
    CompressedSerializer,
    JSONSerializer,
    LocalFileSystem,
    PickleSerializer,
    resolve_serializer,
)


class Point(pydantic.BaseModel):
    x: int
    when: datetime.datetime


VALUES: list[Any] = [
    None,
    1,
    "text",
    [1, 2.5, {"a": [True, None]}],
    datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 12, 1),
    datetime.timedelta(seconds=90),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("1.10"),
    pathlib.PurePosixPath("a/b"),
    {1, 2, 3},
    b"\x00\xffbytes",
    Point(x=1, when=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)),
    {"nested": [Point(x=2, when=datetime.datetime(2026, 1, 2))]},
]


@pytest.mark.parametrize("name", ["json", "compressed/json", "pickle", "compressed/pickle"])
@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_round_trip_with_their_types(name: str, value: Any) -> None:
    serializer = resolve_serializer(name)
    assert serializer.type == name
    back = serializer.loads(serializer.dumps(value))
    assert back == value and type(back) is type(value)


def test_pickle_handles_what_json_cannot() -> None:
    def local(x: int) -> int:
        return x + 1

    assert PickleSerializer().loads(PickleSerializer().dumps(local))(1) == 2
    with pytest.raises(SerializationError, match=r"not JSON-serializable.*pickle"):
        JSONSerializer().dumps(local)
    with pytest.raises(SerializationError, match="cannot be pickled"):
        PickleSerializer().dumps(threading.Lock())


def test_serializer_names_and_errors() -> None:
    assert resolve_serializer(None) == PickleSerializer()
    assert resolve_serializer("compressed/json") == CompressedSerializer("json")
    custom = JSONSerializer()
    assert resolve_serializer(custom) is custom
    with pytest.raises(ValueError, match=r"Unknown result serializer 'yaml'.*compressed/json"):
        resolve_serializer("yaml")
    with pytest.raises(ValueError, match="cannot wrap another compressed"):
        CompressedSerializer("compressed/json")
    text = JSONSerializer().dumps({"__class__": "no.such:Thing", "data": 1})
    with pytest.raises(SerializationError, match="cannot be imported"):
        JSONSerializer().loads(text)


def test_compressed_is_smaller_for_repetitive_values() -> None:
    value = ["same text"] * 1000
    assert (
        len(resolve_serializer("compressed/json").dumps(value))
        < len(JSONSerializer().dumps(value)) / 10
    )


def test_local_storage_writes_atomically_and_reads_back(tmp_path: pathlib.Path) -> None:
    storage = LocalFileSystem(tmp_path / "storage")
    storage.write("flow/run-1", b"one")
    storage.write("flow/run-1", b"two")  # replaced whole
    assert storage.read("flow/run-1") == b"two"
    assert storage.exists("flow/run-1") and not storage.exists("flow/run-2")
    assert [p.name for p in (tmp_path / "storage" / "flow").iterdir()] == ["run-1"]  # no temp
    assert storage.delete("flow/run-1") and not storage.delete("flow/run-1")
    with pytest.raises(MissingResult, match="No result is stored"):
        storage.read("flow/run-1")


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "./a"])
def test_storage_keys_stay_inside_the_directory(tmp_path: pathlib.Path, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        LocalFileSystem(tmp_path).write(key, b"x")


def test_a_storage_path_that_is_a_file_is_an_os_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):  # (what the persisting run turns into one clear warning)
        LocalFileSystem(blocker).write("k", b"x")
