"""Shared fixtures: both async backends, a fresh run registry per test, captured run logs."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator

import pytest

from asyncflow.logging import setup_logging
from asyncflow.registry import MemoryRegistry, reset_registry
from asyncflow.settings import reload_settings

# The run store records to ASYNCFLOW_HOME: never the user's ~/.asyncflow (or a store set in the
# environment) from a test. Set for the whole session: the subprocesses tests start inherit it.
_HOME = tempfile.mkdtemp(prefix="asyncflow-tests-")
os.environ["ASYNCFLOW_HOME"] = _HOME
os.environ["ASYNCFLOW_STORE"] = "sqlite"
# A subprocess started with the ASYNCFLOW_* variables stripped (to test the defaults) would
# fall back to ~/.asyncflow: HOME points into the session's directory too.
os.environ["HOME"] = os.path.join(_HOME, "home")
os.makedirs(os.environ["HOME"])
reload_settings()


@pytest.fixture(autouse=True, scope="session")
def _test_home() -> Iterator[str]:
    """Stop the store writer and remove the session's ASYNCFLOW_HOME at the end."""
    yield _HOME
    from asyncflow.store import writer

    writer.stop()
    shutil.rmtree(_HOME, ignore_errors=True)


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


#: Under a tracer (`coverage run -m pytest`) worker threads are not interrupted
#: asynchronously (see README, "Under a tracer") and every call is slower: the tests that
#: time an asynchronous interrupt, or count stack frames, do not apply there.
untraced = pytest.mark.skipif(
    sys.gettrace() is not None or threading.gettrace() is not None,
    reason="under a tracer: worker threads are stopped cooperatively, frames cost more",
)
