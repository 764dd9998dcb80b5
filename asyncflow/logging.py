"""Console logging in the ``HH:MM:SS.mmm | LEVEL   | Flow run 'name' - message`` shape.

The engine logs through three stdlib loggers: ``asyncflow.engine`` (run creation),
``asyncflow.flow_runs`` and ``asyncflow.task_runs``. A console handler is attached to the
``asyncflow`` logger on the first run unless ``ASYNCFLOW_LOGGING_SETUP=false``; records carry
``run_label`` ("Flow run 'sage-mongoose'") and ``run_id`` attributes for your own handlers.
"""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from asyncflow.exceptions import MissingContextError
from asyncflow.settings import get_settings, on_reload

engine_logger = logging.getLogger("asyncflow.engine")
flow_run_logger = logging.getLogger("asyncflow.flow_runs")
task_run_logger = logging.getLogger("asyncflow.task_runs")

CONSOLE_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(run_label)s - %(message)s"


class RunFormatter(logging.Formatter):
    """Shows the run label where there is one, the logger name otherwise."""

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "run_label"):
            record.run_label = record.name
        return super().format(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, not at setup, so a
    redirected or replaced stderr (notebooks, test runners) keeps receiving the lines."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


_configured = False


def setup_logging() -> None:
    """Attach the console handler once (idempotent; called on a process's first run)."""
    global _configured
    if _configured:
        return
    _configured = True
    settings = get_settings()
    root = logging.getLogger("asyncflow")
    root.setLevel(settings.logging_level)
    if settings.logging_setup and not any(
        isinstance(h.formatter, RunFormatter) for h in root.handlers
    ):
        handler = _StderrHandler()
        handler.setFormatter(RunFormatter())
        root.addHandler(handler)
        # Our handler prints the records; letting them reach the root too would print twice.
        root.propagate = False


def settings_changed() -> None:
    """Apply a reloaded ``ASYNCFLOW_LOGGING_LEVEL`` once logging is set up."""
    if _configured:
        logging.getLogger("asyncflow").setLevel(get_settings().logging_level)


on_reload(settings_changed)


class RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records name the run they come from."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def run_logger(label: str, run_id: Any, base: logging.Logger) -> RunLoggerAdapter:
    return RunLoggerAdapter(base, {"run_label": label, "run_id": run_id})


def get_run_logger() -> RunLoggerAdapter:
    """The logger of the current task run or flow run.

    Raises MissingContextError outside of a run.
    """
    from asyncflow.engine.context import current_run

    run = current_run()
    if run is None:
        raise MissingContextError(
            "get_run_logger() was called outside of a flow or task run; "
            "use logging.getLogger(...) there instead."
        )
    return run.logger


# -- log_prints ---------------------------------------------------------------------------------
_original_print = builtins.print


def _print(
    *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
) -> None:
    from asyncflow.engine.context import current_run

    run = current_run() if file is None or file is sys.stdout else None
    if run is not None and run.log_prints:
        run.logger.info((sep if sep is not None else " ").join(str(a) for a in args))
        return
    _original_print(*args, sep=sep, end=end, file=file, flush=flush)


def enable_log_prints() -> None:
    """Route ``print()`` to the run logger inside runs with ``log_prints=True``.

    Installed the first time such a run starts, and again if another library replaced it
    meanwhile (Ray's progress bars put their own print in); outside those runs print is
    unchanged.
    """
    if builtins.print is not _print:
        builtins.print = _print


__all__ = [
    "RunFormatter",
    "RunLoggerAdapter",
    "get_run_logger",
    "setup_logging",
]
