"""The API's OpenAPI 3.1 document (served at `/api/openapi.json`)."""

from __future__ import annotations

from typing import Any

_RUN_FILTERS = [
    ("flow", "Only runs of this flow (or task) name."),
    ("state", "Only runs whose latest state is of this type (COMPLETED, FAILED, ...)."),
    ("kind", "flow (default), task or all."),
    ("deployment", "Only runs of this deployment ('flow name/deployment name')."),
    ("since", "Only runs created at or after this ISO 8601 time (UTC if no offset)."),
    ("until", "Only runs created before this ISO 8601 time."),
    ("parent", "Only the runs directly under this flow run (its id)."),
    ("limit", "Runs per page, 1 to 500 (default 50)."),
    ("cursor", "The `next_cursor` of the previous page."),
]


def _op(summary: str, params: list[tuple[str, str, str]] | None = None, **extra: Any) -> Any:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {"application/json": {}}}},
    }
    if params:
        operation["parameters"] = [
            {"name": n, "in": where, "required": where == "path", "description": d,
             "schema": {"type": "string"}}
            for n, where, d in params
        ]  # fmt: skip
    operation.update(extra)
    return operation


def document() -> dict[str, Any]:
    from asyncflow import __version__

    run_id = [("run_id", "path", "A run id (or a unique prefix of one).")]
    deployment = [("flow", "path", "The flow's name."), ("deployment", "path", "Its name.")]
    body = {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "parameters": {"type": "object"}, "idempotency_key": {"type": "string"},
                "flow_run_name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "scheduled_time": {"type": "string", "format": "date-time"},
            },
        }}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "asyncflow", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/health": {"get": _op("Liveness (open without a token).", security=[])},
            "/api/runs": {"get": _op(
                "Runs, newest first, keyset-paginated: {runs, next_cursor}.",
                [(n, "query", d) for n, d in _RUN_FILTERS],
            )},
            "/api/runs/{run_id}": {"get": _op(
                "A run: states, parameters, parent, its first 1,000 children (oldest first; "
                "children_truncated says if there are more), result metadata.", run_id
            )},
            "/api/runs/{run_id}/tree": {"get": _op(
                "A run with every run nested under it.", run_id
            )},
            "/api/runs/{run_id}/state": {"get": _op(
                "A run without its children or history (what a remote wait polls).", run_id
            )},
            "/api/runs/{run_id}/result": {"get": _op(
                "A run's persisted result as JSON: {value} (404 when it has none, or it is "
                "not JSON); with format=raw, its stored bytes (application/octet-stream, "
                "the serializer in X-Asyncflow-Serializer).",
                [*run_id, ("format", "query", "raw: the stored bytes")],
            )},
            "/api/runs/{run_id}/cancel": {"post": _op(
                "Cancel a flow run, whichever process runs it (202; 409 if it ended).", run_id
            )},
            "/api/flows": {"get": _op("Flows with their run counts and latest run.")},
            "/api/deployments": {"get": _op("Deployments with their next scheduled slots.")},
            "/api/deployments/{flow}/{deployment}": {"get": _op("One deployment.", deployment)},
            "/api/deployments/{flow}/{deployment}/runs": {"post": _op(
                "Queue a run (201; 200 with the run an earlier call made under the same "
                "idempotency_key); 422 when the parameters do not fit its schema.",
                deployment, requestBody=body,
            )},
        },
    }  # fmt: skip


__all__ = ["document"]
