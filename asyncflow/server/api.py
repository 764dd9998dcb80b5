"""The JSON API under `/api`: runs (keyset-paginated), run details and trees, flows,
deployments, starting a deployment's run and cancelling a run, over a run store.

Handlers read the store in worker threads (its calls block); errors are JSON
`{"detail": "..."}` with 400 (a bad query parameter), 401 (no or wrong token), 404 (no
such run or deployment), 409 (cancelling a run that already ended) or 422 (parameters
the deployment's schema refuses).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: Most runs one page of `GET /api/runs` holds.
MAX_LIMIT = 500
#: Most children `GET /api/runs/{id}` lists (the rest: `GET /api/runs?parent=...`).
MAX_CHILDREN = 1000


class ApiError(Exception):
    """An error answer; `error` names the exception a local call would raise (a remote
    `run_deployment` raises the same)."""

    def __init__(self, status: int, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error


def _store(request: Request) -> Any:
    return request.app.state.store


async def _call(fn: Any, *args: Any) -> Any:
    """A store call in a worker thread; its KeyError is a 404, its ValueError a 400."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0] if exc.args else exc)) from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _run_json(run: Any, states: bool = False) -> dict[str, Any]:
    from asyncflow.cli._format import run_dict

    return run_dict(run, with_states=states)


def _time(request: Request, name: str) -> datetime.datetime | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name}: not an ISO 8601 date/time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


async def list_runs(request: Request) -> JSONResponse:
    from asyncflow.states import StateType

    query = request.query_params
    unknown = sorted(set(query) - {"flow", "state", "kind", "deployment", "since", "until",
                                   "parent", "limit", "cursor"})  # fmt: skip
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")
    state = query.get("state")
    if state is not None:
        try:
            state_type: StateType | None = StateType(state.upper())
        except ValueError:
            valid = ", ".join(t.value for t in StateType)
            raise ApiError(400, f"state: unknown state type {state!r} (one of {valid})") from None
    else:
        state_type = None
    kind = query.get("kind", "flow")
    if kind not in ("flow", "task", "all"):
        raise ApiError(400, f"kind: 'flow', 'task' or 'all', not {kind!r}")
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise ApiError(400, f"limit: not a number: {query.get('limit')!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit: from 1 to {MAX_LIMIT}, not {limit}")
    store = _store(request)

    def page() -> tuple[list[Any], str | None]:
        return store.list_runs_page(  # type: ignore[no-any-return]
            kind=None if kind == "all" else kind, spec_name=query.get("flow"),
            state=state_type, deployment=query.get("deployment"), parent=query.get("parent"),
            since=_time(request, "since"), until=_time(request, "until"), limit=limit,
            cursor=query.get("cursor"),
        )  # fmt: skip

    runs, cursor = await _call(page)
    return JSONResponse({"runs": [_run_json(r) for r in runs], "next_cursor": cursor})


async def read_run(request: Request) -> JSONResponse:
    store = _store(request)
    run_id = request.path_params["run_id"]
    run = await _call(store.read_run_sync, run_id)
    children = await _call(store.children_sync, run.id, MAX_CHILDREN + 1)
    result = await _call(store.result_of_sync, run.id)
    data = _run_json(run, states=True)
    data["children"] = [_run_json(c) for c in children[:MAX_CHILDREN]]
    data["children_truncated"] = len(children) > MAX_CHILDREN
    data["result"] = None if result is None else {
        "storage": result.storage, "key": result.key, "serializer": result.serializer,
        "size": result.size,
    }  # fmt: skip
    return JSONResponse(data)


async def run_state(request: Request) -> JSONResponse:
    """A run without its children or history: what a remote wait polls."""
    run = await _call(_store(request).read_run_sync, request.path_params["run_id"])
    return JSONResponse(_run_json(run))


async def run_result(request: Request) -> Response:
    """The persisted result: `{"value": ...}` when it is JSON, or with `?format=raw` the
    stored bytes as they are (for a client that loads them itself: any serializer, and the
    server never unpickles anything for it)."""
    from asyncflow.exceptions import MissingResult
    from asyncflow.store import missing_result_message

    store = _store(request)
    raw = request.query_params.get("format") == "raw"

    def load() -> Any:
        from asyncflow.results.storage import storage_for

        run = store.read_run_sync(request.path_params["run_id"])
        stored = store.result_of_sync(run.id)
        if stored is None:
            raise MissingResult(missing_result_message(run))
        if raw:
            storage = storage_for(stored.storage)
            if not storage.exists(stored.key):
                raise MissingResult(f"Its result file is gone: {stored.storage} {stored.key}.")
            return stored, storage.read(stored.key)
        try:
            return stored, stored.load()
        except MissingResult:
            raise
        except Exception as exc:  # (a class this process cannot import, a bad file)
            raise MissingResult(
                f"The server cannot load the result ({type(exc).__name__}: {exc}); "
                "?format=raw gives its bytes to load where its types are."
            ) from None

    try:
        stored, value = await _call(load)
    except MissingResult as exc:
        raise ApiError(404, str(exc), "MissingResult") from None
    if raw:
        return Response(
            value, media_type="application/octet-stream",
            headers={"X-Asyncflow-Serializer": stored.serializer},
        )  # fmt: skip
    try:
        return JSONResponse({"value": value})
    except (TypeError, ValueError):
        raise ApiError(
            404, f"The run's result, a {type(value).__name__}, is not JSON: ?format=raw gives "
            "its bytes (a remote FlowRun.result() loads them).", "MissingResult",
        ) from None  # fmt: skip


async def run_tree(request: Request) -> JSONResponse:
    store = _store(request)
    root = await _call(store.read_run_sync, request.path_params["run_id"])

    def tree() -> dict[str, Any]:
        def node(run: Any) -> dict[str, Any]:
            data = _run_json(run)
            kids = store.children_sync(run.id) if run.kind == "flow" else []
            data["children"] = [node(c) for c in kids]
            return data

        return node(root)

    return JSONResponse(await _call(tree))


async def list_flows(request: Request) -> JSONResponse:
    store = _store(request)
    flows = await _call(store.list_flows)
    return JSONResponse({"flows": flows})


async def list_deployments(request: Request) -> JSONResponse:
    from asyncflow.deployments.deployment import describe

    now = datetime.datetime.now(datetime.timezone.utc)
    rows = await _call(_store(request).list_deployments)
    return JSONResponse({"deployments": [describe(r, now) for r in rows]})


async def read_deployment(request: Request) -> JSONResponse:
    from asyncflow.deployments.deployment import describe

    name = f"{request.path_params['flow']}/{request.path_params['deployment']}"
    row = await _call(_store(request).read_deployment, name)
    if row is None:
        raise ApiError(404, f"No deployment {name!r}.")
    return JSONResponse(describe(row, datetime.datetime.now(datetime.timezone.utc)))


async def start_run(request: Request) -> JSONResponse:
    from asyncflow.deployments.runs import queue_run
    from asyncflow.exceptions import ObjectNotFound, ParameterBindError, ParameterTypeError

    name = f"{request.path_params['flow']}/{request.path_params['deployment']}"
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'the body is a JSON object: {"parameters": {...}}')
    fields = {"parameters", "idempotency_key", "flow_run_name", "tags", "scheduled_time"}
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    when = body.get("scheduled_time")
    if when is not None:
        try:
            when = datetime.datetime.fromisoformat(when)
        except (TypeError, ValueError):
            raise ApiError(
                422, f"scheduled_time: not an ISO 8601 time: {when!r}", "ValueError"
            ) from None
        when = when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
    store = _store(request)
    try:
        run, added = await anyio.to_thread.run_sync(
            lambda: queue_run(
                store, name, body.get("parameters"), when, body.get("flow_run_name"),
                body.get("tags"), body.get("idempotency_key"),
            )
        )  # fmt: skip
    except ObjectNotFound as exc:
        raise ApiError(404, str(exc), "ObjectNotFound") from None
    except (ParameterBindError, ParameterTypeError, TypeError, ValueError) as exc:
        kind = next(k for k in (ParameterBindError, ParameterTypeError, TypeError, ValueError)
                    if isinstance(exc, k))  # fmt: skip
        raise ApiError(422, str(exc), kind.__name__) from None
    stored = await _call(store.read_run_sync, run.id)
    return JSONResponse(_run_json(stored), status_code=201 if added else 200)


async def cancel_run(request: Request) -> JSONResponse:
    store = _store(request)
    try:  # (an optional body: {"reason": "..."}, which the run's Cancelled state says)
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and not isinstance(reason, str):
        raise ApiError(400, "reason: a string")
    run = await _call(store.read_run_sync, request.path_params["run_id"])
    outcome, _ = await _call(
        lambda: store.request_cancel(run.id, why=reason or "cancelled through the API")
    )
    if outcome == "final":
        raise ApiError(409, f"Run {run.id} is already {run.state_name}.")
    if outcome == "task":
        raise ApiError(409, "A task run is cancelled with its flow run: cancel that one.")
    return JSONResponse({"id": str(run.id), "outcome": outcome}, status_code=202)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def openapi(request: Request) -> JSONResponse:
    from asyncflow.server.openapi import document

    return JSONResponse(document())


ROUTES = [
    Route("/api/health", health),
    Route("/api/openapi.json", openapi),
    Route("/api/runs", list_runs),
    Route("/api/runs/{run_id}", read_run),
    Route("/api/runs/{run_id}/tree", run_tree),
    Route("/api/runs/{run_id}/result", run_result),
    Route("/api/runs/{run_id}/state", run_state),
    Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/api/flows", list_flows),
    Route("/api/deployments", list_deployments),
    Route("/api/deployments/{flow}/{deployment}", read_deployment),
    Route("/api/deployments/{flow}/{deployment}/runs", start_run, methods=["POST"]),
]

__all__ = ["MAX_CHILDREN", "MAX_LIMIT", "ROUTES", "ApiError"]
