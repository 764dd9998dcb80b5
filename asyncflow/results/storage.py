"""Where persisted results are kept: a directory (the default, `$ASYNCFLOW_HOME/storage`).

Writes are atomic: the bytes go to a temporary file in the same directory, which is then
renamed over the key's file, so a reader sees the old result or the new one, never half.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path, PurePosixPath

from asyncflow.exceptions import MissingResult


class ResultStorage:
    """Keeps result bytes by key (a relative, `/`-separated path)."""

    url: str

    def write(self, key: str, blob: bytes) -> None:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        raise NotImplementedError


def check_key(key: str) -> PurePosixPath:
    """A storage key as a relative path: no empty, `.` or `..` parts, not absolute."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"A result storage key must be a non-empty string, got {key!r}.")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(
            f"Result storage key {key!r} must be a relative '/'-separated path without "
            "empty, '.' or '..' parts."
        )
    if "\\" in key or (os.name == "nt" and ":" in key):  # (Windows separators and drives)
        raise ValueError(f"Result storage key {key!r} must not contain '\\' (use '/').")
    return path


_temp_names = itertools.count()
_NT = os.name == "nt"  # (keys are checked in full there: drives)


class LocalFileSystem(ResultStorage):
    """Results as files under `basepath` (created when first written to)."""

    def __init__(self, basepath: str | os.PathLike[str]) -> None:
        # absolute: the store records where a result is, for processes in other directories
        self.basepath = Path(basepath).expanduser().absolute()
        self.url = str(self.basepath)
        self._made: set[str] = set()  # directories known to exist (made once, not per write)

    def _path(self, key: str) -> str:
        """The key's file (plain strings: pathlib costs ~40 µs a write on this path)."""
        if not isinstance(key, str) or not key or key[0] == "/" or "\\" in key or _NT:
            check_key(key)
        parts = key.split("/")
        if "" in parts or "." in parts or ".." in parts:
            check_key(key)  # (raises: it says why)
        return os.path.join(self.url, *parts)

    def write(self, key: str, blob: bytes) -> None:
        path = self._path(key)
        folder, name = os.path.split(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        while True:  # a name of this process's own: O_EXCL only meets a leftover of a dead pid
            temp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_temp_names)}.tmp")
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:  # the directory was removed since: make it again
                os.makedirs(folder, exist_ok=True)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise MissingResult(f"No result is stored at {path} (key {key!r}).") from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFileSystem) and other.basepath == self.basepath

    def __hash__(self) -> int:
        return hash(self.basepath)

    def __repr__(self) -> str:
        return f"LocalFileSystem({str(self.basepath)!r})"


class RemoteFileSystem(ResultStorage):
    """Results under an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`,
    `file://...`); needs the `[fsspec]` extra (and the filesystem's own package, e.g.
    s3fs). A result is written to a temporary name beside its key, then moved over it."""

    def __init__(self, url: str, **storage_options: object) -> None:
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError:
            raise ImportError(
                f"Result storage {url!r} is a URL, which needs fsspec: "
                "pip install 'asyncflow[fsspec]' (or give a local directory)."
            ) from None
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{check_key(key)}"

    def write(self, key: str, blob: bytes) -> None:
        import uuid

        path = self._path(key)
        parent, _, name = path.rpartition("/")
        self.fs.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(temp, "wb") as f:
            f.write(blob)
        self.fs.mv(temp, path)

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise MissingResult(f"No result is stored at {self.url}/{key}.") from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not self.fs.isfile(path):
            return False
        self.fs.rm_file(path)
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteFileSystem) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        return f"RemoteFileSystem({self.url!r})"


def storage_for(value: str | os.PathLike[str]) -> ResultStorage:
    """A storage from a directory path or an fsspec URL."""
    text = os.fspath(value)
    if "://" in text:
        return RemoteFileSystem(text)
    return LocalFileSystem(text)


__all__ = ["LocalFileSystem", "RemoteFileSystem", "ResultStorage", "check_key", "storage_for"]
