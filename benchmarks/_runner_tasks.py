"""Task bodies for `benchmarks.runners`: a module the Dask and Ray workers can import."""

from __future__ import annotations

from asyncflow import task


def inc(x: int) -> int:
    return x + 1


def produce(size: int) -> bytes:
    return b"x" * size


def length(data: bytes) -> int:
    return len(data)


inc_task = task(inc, name="inc")
produce_task = task(produce, name="produce")
length_task = task(length, name="length")
