"""run_deployment, cancel_run and a FlowRun's wait and result through an asyncflow
server's HTTP API, when `ASYNCFLOW_API_URL` is set: for a machine that cannot reach the
run store. The standard library's HTTP client only (the core needs no HTTP package).

`ApiClient` answers what runs.py asks of a store connection (`poll`, `read`, `result`,
`cancel`), so the waiting is the same code for both.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any
from urllib.parse import quote
from uuid import UUID

from asyncflow.states import StateType

#: Seconds one HTTP request may take.
REQUEST_TIMEOUT = 30.0
#: Seconds a poll goes on retrying a server that does not answer (a restart, a proxy's
#: 502) before the wait gives up with ServerUnavailable.
RETRY_FOR = 30.0


class ApiClient:
    """The API of the server at `url` (its base, without /api), with the token `key`."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url
        self.key = key

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = REQUEST_TIMEOUT,
        raw: bool = False,
    ) -> tuple[int, Any]:
        """(status, JSON answer, or the bytes and headers with `raw`); an error status is
        answered; an unreachable server, or an answer that is not an asyncflow server's,
        is a ServerUnavailable. Redirects are not followed (they would carry the token
        to another address)."""
        import urllib.error
        import urllib.request

        from asyncflow.exceptions import ServerUnavailable

        headers = {"Accept": "application/json"}
        data = None
        if body is not None or method == "POST":
            data = json.dumps(body or {}).encode()
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with _opener().open(request, timeout=max(0.1, timeout)) as answer:
                content = answer.read()
                if raw:
                    return answer.status, (content, answer.headers)
                return answer.status, json.loads(content or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = None
            if not isinstance(detail, dict):
                detail = {}
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "?")
                detail["detail"] = f"a redirect to {where}, not followed: correct the URL"
            return exc.code, {**detail, "detail": detail.get("detail") or exc.reason}
        except ValueError:
            raise ServerUnavailable(
                f"The server at {self.url} (ASYNCFLOW_API_URL) answered something that is not "
                "JSON: is it an asyncflow server?"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnavailable(
                f"The asyncflow server at {self.url} (ASYNCFLOW_API_URL) cannot be reached: "
                f"{reason}"
            ) from None

    def _steady(self, method: str, path: str, deadline: float | None) -> tuple[int, Any]:
        """`call`, retried while the server does not answer or answers 5xx (a restart, a
        proxy's 502), for RETRY_FOR seconds or until `deadline` (monotonic)."""
        from asyncflow.exceptions import ServerUnavailable

        give_up = time.monotonic() + RETRY_FOR
        if deadline is not None:
            give_up = min(give_up, deadline)
        pause = 0.1
        while True:
            left = give_up - time.monotonic()
            try:
                status, data = self.call(method, path, timeout=min(REQUEST_TIMEOUT, left))
                if status < 500 or left <= 0:
                    return status, data
            except ServerUnavailable:
                if left <= 0:
                    raise
            time.sleep(min(pause, max(0.0, give_up - time.monotonic())))
            pause = min(pause * 2, 2.0)

    def _run(self, run_id: UUID | str, what: str = "", deadline: float | None = None) -> Any:
        path = f"/api/runs/{quote(str(run_id), safe='')}{what}"
        status, data = self._steady("GET", path, deadline)
        if status != 200:
            raise _error(status, data, self.url)
        return data

    # -- what runs.py asks of a connection to the store ----------------------------------------
    def pk_of(self, run_id: UUID) -> UUID:
        return run_id  # (the API knows runs by their ids)

    def poll(self, run_id: UUID, deadline: float | None = None) -> tuple[StateType, str] | None:
        data = self._run(run_id, "/state", deadline)
        return StateType(data["state_type"]), data["state_name"]

    def read(self, run_id: UUID) -> Any:
        return stored_run(self._run(run_id, "/state"))

    def result(self, run_id: UUID) -> Any:
        """The run's persisted result, loaded here from its stored bytes (the server
        sends them as they are: it never loads them itself)."""
        from asyncflow.results.record import decode
        from asyncflow.results.serializers import resolve_serializer

        status, data = self.call("GET", f"/api/runs/{run_id}/result?format=raw", raw=True)
        if status != 200:
            raise _error(status, data, self.url)
        content, headers = data
        _, payload = decode(content, f"the result of run {run_id}")
        return resolve_serializer(headers.get("X-Asyncflow-Serializer")).loads(payload)

    def cancel(self, run_id: UUID | str, why: str | None = None) -> str:
        """ "cancelled" | "requested" (as the store answers), "final", or "unknown"."""
        path = f"/api/runs/{quote(str(run_id), safe='')}/cancel"
        status, data = self.call("POST", path, {"reason": why} if why else None)
        if status == 202:
            return str(data["outcome"])
        if status == 409:
            return "final"
        if status in (400, 404):
            return "unknown"
        raise _error(status, data, self.url)

    def deployment(self, name: str) -> dict[str, Any] | None:
        """A deployment as the API describes it, None when there is none of that name."""
        flow, deployment = name.split("/")
        path = f"/api/deployments/{quote(flow, safe='')}/{quote(deployment, safe='')}"
        status, data = self.call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise _error(status, data, self.url)
        return data  # type: ignore[no-any-return]

    def create(
        self,
        name: str,
        parameters: dict[str, Any] | None,
        scheduled_time: datetime.datetime | None,
        flow_run_name: str | None,
        tags: list[str] | None,
        idempotency_key: str | None,
    ) -> tuple[Any, bool]:
        """Queue a run of deployment `name`: (the stored run, whether this call made it)."""
        flow, deployment = name.split("/")  # (checked by run_deployment)
        body: dict[str, Any] = {"parameters": parameters or {}}
        for field, value in (
            ("flow_run_name", flow_run_name), ("tags", tags),
            ("idempotency_key", idempotency_key),
            # (a naive time is this machine's local time, as for a local call)
            ("scheduled_time",
             None if scheduled_time is None else scheduled_time.astimezone().isoformat()),
        ):  # fmt: skip
            if value is not None:
                body[field] = value
        path = f"/api/deployments/{quote(flow, safe='')}/{quote(deployment, safe='')}/runs"
        status, data = self.call("POST", path, body)
        if status == 404 and data.get("error") is None:  # (not an asyncflow server's answer)
            raise _error(404, {**data, "error": "ObjectNotFound"}, self.url)
        if status not in (200, 201):
            raise _error(status, data, self.url)
        return stored_run(data), status == 201


def _opener() -> Any:
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # (urllib then raises the 30x as an HTTPError)

    return urllib.request.build_opener(NoRedirects)


def _error(status: int, data: Any, url: str) -> Exception:
    """The exception the local call would raise, from the API's answer."""
    from asyncflow import exceptions

    detail = str(data.get("detail") if isinstance(data, dict) else data)
    kind = data.get("error") if isinstance(data, dict) else None
    known = {
        "ParameterBindError": exceptions.ParameterBindError,
        "ParameterTypeError": exceptions.ParameterTypeError,
        "ObjectNotFound": exceptions.ObjectNotFound,
        "MissingResult": exceptions.MissingResult,
        "UnfinishedRun": exceptions.UnfinishedRun,
        "ValueError": ValueError,
        "TypeError": TypeError,
    }
    if isinstance(kind, str) and kind in known:
        error: Exception = known[kind](detail)
        return error
    if status == 401:
        return PermissionError(f"{detail} Set ASYNCFLOW_API_KEY to the server's token.")
    if status == 404:
        return KeyError(detail)
    return exceptions.ServerUnavailable(f"The server at {url} answered {status}: {detail}")


def stored_run(data: dict[str, Any]) -> Any:
    """A StoredRun from the API's JSON for a run."""
    from asyncflow.store.base import StoredRun

    def when(text: str | None) -> datetime.datetime | None:
        return None if text is None else datetime.datetime.fromisoformat(text)

    def uuid(text: str | None) -> UUID | None:
        return None if text is None else UUID(text)

    created = when(data["created"])
    assert created is not None
    return StoredRun(
        id=UUID(data["id"]), kind=data["kind"], name=data["name"], spec_name=data["spec_name"],
        state_type=StateType(data["state_type"]), state_name=data["state_name"],
        state_message=data["state_message"], created=created,
        start_time=when(data["start_time"]), end_time=when(data["end_time"]),
        parent_flow_run_id=uuid(data["parent_flow_run_id"]),
        parent_task_run_id=uuid(data["parent_task_run_id"]),
        child_flow_run_id=uuid(data["child_flow_run_id"]), parameters=data["parameters"],
        run_count=data["run_count"], tags=tuple(data["tags"]), entrypoint=data["entrypoint"],
        deployment=data["deployment"], scheduled_time=when(data["scheduled_time"]),
    )  # fmt: skip


def is_api(url: str) -> bool:
    return url.startswith(("http://", "https://"))


__all__ = ["REQUEST_TIMEOUT", "ApiClient", "is_api", "stored_run"]
