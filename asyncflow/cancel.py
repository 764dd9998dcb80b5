"""`cancel_run(run_id)`: cancel a flow run or task run, in this process or another one."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from asyncflow.engine.cancellation import cancel_local


def cancel_run(run_id: UUID | str) -> bool:
    """Cancel a flow run (with its subtree) or a submitted task run by id.

    A run of this process is cancelled at once: everything it started is cancelled with it,
    every run in that subtree ends Cancelled, and an awaited or called flow raises
    CancelledRun. Otherwise the run store is asked: a Scheduled run (of a deployment) ends
    Cancelled and never starts; a run another process runs gets a cancel request, which
    that process acts on within about a second. Returns False when the run is already
    final, unknown here and to the store, or a task run of another process (only its own
    process can cancel a task run: cancel its flow run instead).

    With ASYNCFLOW_API_URL set, the store is asked through that asyncflow server.
    """
    if cancel_local(run_id):
        return True
    from asyncflow.settings import get_settings

    settings = get_settings()
    if settings.api_url is not None:
        from asyncflow.deployments.remote import ApiClient

        outcome = ApiClient(settings.api_url, settings.api_key).cancel(run_id)
        return outcome in ("cancelled", "requested")
    return request_cancel(run_id)[0] in ("cancelled", "requested")


def request_cancel(run_id: UUID | str, url: str | None = None) -> tuple[str, object | None]:
    """Ask the store to cancel a run: ("cancelled" | "requested" | "final" | "own" | "task",
    the stored run), or ("unknown", None) without a store or such a run there. "own": a run
    of this process (which `cancel_local` did not find running); "task": a task run."""
    import os

    from asyncflow.store import connect, recording_url, store_url, writer

    target = recording_url() if url is None else store_url(url)
    if target is None or (
        target.startswith("sqlite://") and not os.path.exists(target[len("sqlite://") :])
    ):
        return "unknown", None  # (no history to find it in: none is created for this)
    store: Any = connect(target)
    try:
        # (a run of this process that cancel_local could not stop is not asked for again)
        return store.request_cancel(run_id, writer.process_identity()[0])  # type: ignore[no-any-return]
    except (KeyError, ValueError):  # (not an id of this store, or an ambiguous prefix)
        return "unknown", None
    finally:
        store.close()


__all__ = ["cancel_run", "request_cancel"]
