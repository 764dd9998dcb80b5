"""Shared fixtures: both async backends, a fresh run registry per test, captured run logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from asyncflow.logging import setup_logging
from asyncflow.store.memory import MemoryRegistry, reset_registry


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every `@pytest.mark.anyio` test runs once on asyncio and once on trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def registry() -> MemoryRegistry:
    """A fresh in-memory run registry, so tests see only their own runs."""
    return reset_registry()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        """Each record as `label - message`, the way the console shows it (without time)."""
        return [f"{getattr(r, 'run_label', r.name)} - {r.getMessage()}" for r in self.records]

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Records from the `asyncflow` loggers (they do not propagate to the root logger)."""
    setup_logging()
    handler = LogCapture()
    logger = logging.getLogger("asyncflow")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
