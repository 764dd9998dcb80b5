"""Settings read from ``ASYNCFLOW_*`` environment variables.

Read once, on first use; ``reload_settings()`` re-reads them (tests, long-lived apps).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

N = TypeVar("N", int, float)


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _number(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    """A non-negative number setting; a bad value is a ValueError that names the variable."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r}: expected a finite number >= 0 (default {default}).")
    return value


def _api_url(raw: str) -> str | None:
    url = raw.strip().rstrip("/")
    if not url:
        return None
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1]:
        raise ValueError(
            f"ASYNCFLOW_API_URL={raw!r}: expected an asyncflow server's URL, "
            "like http://127.0.0.1:4300"
        )
    return url.removesuffix("/api")


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    logging_level: str
    logging_setup: bool
    store: str
    max_parameters_bytes: int
    task_log_threshold: int
    progress_interval_seconds: float
    store_exit_timeout: float
    store_backlog: int
    #: flows whose persist_result is None (and which have no persisting parent) persist
    results_persist_by_default: bool
    #: tasks whose persist_result is None persist (read when the task is defined)
    tasks_persist_result: bool
    #: where results go when a flow or task names no result_storage (a path or fsspec URL)
    result_storage: str
    #: an asyncflow server that run_deployment and cancel_run go through (ASYNCFLOW_API_URL)
    api_url: str | None = None
    #: its token (ASYNCFLOW_API_KEY)
    api_key: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            home=Path(env.get("ASYNCFLOW_HOME", "~/.asyncflow")).expanduser(),
            logging_level=env.get("ASYNCFLOW_LOGGING_LEVEL", "INFO").upper(),
            logging_setup=_bool(env.get("ASYNCFLOW_LOGGING_SETUP", "true")),
            store=env.get("ASYNCFLOW_STORE", "sqlite"),
            max_parameters_bytes=int(env.get("ASYNCFLOW_MAX_PARAMETERS_BYTES", str(512 * 1024))),
            task_log_threshold=int(env.get("ASYNCFLOW_TASK_LOG_THRESHOLD", "1000")),
            progress_interval_seconds=float(env.get("ASYNCFLOW_PROGRESS_INTERVAL", "5")),
            store_exit_timeout=_number(env, "ASYNCFLOW_STORE_EXIT_TIMEOUT", 5.0, float),
            store_backlog=_number(env, "ASYNCFLOW_STORE_BACKLOG", 1_000_000, int),
            results_persist_by_default=_bool(env.get("ASYNCFLOW_RESULTS_PERSIST_BY_DEFAULT", "")),
            tasks_persist_result=_bool(env.get("ASYNCFLOW_TASKS_PERSIST_RESULT", "")),
            result_storage=env.get("ASYNCFLOW_RESULTS_STORAGE")
            or str(Path(env.get("ASYNCFLOW_HOME", "~/.asyncflow")).expanduser() / "storage"),
            api_url=_api_url(env.get("ASYNCFLOW_API_URL", "")),
            api_key=env.get("ASYNCFLOW_API_KEY") or None,
        )


_settings: Settings | None = None


def get_settings() -> Settings:
    """The current settings (parsed from the environment on first call)."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


_listeners: list[Callable[[], None]] = []


def on_reload(listener: Callable[[], None]) -> None:
    """Call `listener()` after every `reload_settings()` (how logging follows its level)."""
    _listeners.append(listener)


def reload_settings() -> Settings:
    """Re-read the environment."""
    global _settings
    _settings = Settings.from_env()
    for listener in _listeners:
        listener()
    return _settings


__all__ = [
    "Settings",
    "get_settings",
    "on_reload",
    "reload_settings",
]
