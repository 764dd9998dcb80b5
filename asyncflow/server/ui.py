"""The web UI: server-rendered pages (Jinja2, autoescaped) over the run store.

Runs, a run's detail (parent and child flow runs, task runs, a state timeline, the state
history), deployments with a form that starts a run, and flows. Every page works without
JavaScript; `static/app.js` (a few lines, no build step) refreshes the regions marked
`data-refresh` every 2 s, which keeps the runs table and a running run's page live.

Each page is read from the store and rendered in one worker thread, so a slow store never
holds the event loop.
"""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import anyio.to_thread
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from asyncflow.server.auth import COOKIE, CSRF_FIELD, Auth, route_path
from asyncflow.states import TERMINAL_TYPES, StateType

_HERE = Path(__file__).parent
#: Most bars a run's timeline draws (the rest are counted: "N more").
TIMELINE_CAP = 500
#: Task runs a run's page lists (the rest are one click away, paginated).
TASK_ROWS = 100
#: Runs per page of the runs table.
PAGE_SIZE = 50
#: Flows the flows page shows with their latest runs (most recently run first).
FLOWS_SHOWN = 100
_UTC = datetime.timezone.utc
_FILTERS = ("flow", "state", "kind", "deployment", "parent", "cursor")
# The pages with a live region, and its template (what `?fragment=1` answers).
_LIVE = {"runs.html": "runs_live.html", "run.html": "run_live.html"}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["iso"] = lambda ts: "" if ts is None else _moment(ts).isoformat()
    env.filters["took"] = _took
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, default=repr)
    env.filters["q"] = lambda text: quote(str(text), safe="")
    env.filters["dep_url"] = lambda name: (
        "/deployments/" + "/".join(quote(part, safe="") for part in name.split("/", 1))
    )
    return env


def _aware(ts: datetime.datetime) -> datetime.datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=_UTC)


def _moment(ts: datetime.datetime | str) -> datetime.datetime:
    """A stored time (an ISO 8601 string in deployments' data), aware."""
    return _aware(datetime.datetime.fromisoformat(ts) if isinstance(ts, str) else ts)


def _when(ts: datetime.datetime | str | None) -> str:
    if ts is None:
        return ""
    return _moment(ts).astimezone(_UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(delta: datetime.timedelta | None) -> str:
    from asyncflow.cli._format import duration

    return duration(delta) if delta is not None else ""


_ENV = _environment()


class _Page:
    """A page to render (an error page with its status)."""

    def __init__(self, template: str, status: int = 200, **context: Any) -> None:
        self.template = template
        self.status = status
        self.context = context


class _Redirect:
    """Where a POST sends the browser next (303 See Other)."""

    def __init__(self, url: str) -> None:
        self.url = url


async def _render(request: Request, build: Any) -> Response:
    """`build()` (store reads) and its page, rendered in one worker thread."""
    auth: Auth = request.app.state.auth
    fragment = request.query_params.get("fragment") == "1"
    root = request.scope.get("root_path", "")  # (where the app is mounted, if it is)

    def work() -> tuple[str, int] | _Redirect:
        try:
            page = build()
        except KeyError as exc:
            page = _Page("error.html", 404, message=str(exc.args[0] if exc.args else exc))
        except ValueError as exc:
            page = _Page("error.html", 400, message=str(exc))
        if isinstance(page, _Redirect):
            return page
        context = {
            "csrf_field": CSRF_FIELD, "csrf": auth.csrf, "fragment": fragment,
            "logged_in": auth.token is not None, "path": route_path(request.scope), "root": root,
            "status": page.status, "timeline_cap": TIMELINE_CAP, **page.context,
        }  # fmt: skip
        name = page.template
        if fragment and name in _LIVE:
            name = _LIVE[name]
        return _ENV.get_template(name).render(context), page.status

    done = await anyio.to_thread.run_sync(work)
    if isinstance(done, _Redirect):
        return RedirectResponse(root + done.url, status_code=303)
    html, status = done
    return HTMLResponse(html, status_code=status)


def _store(request: Request) -> Any:
    return request.app.state.store


# -- runs ----------------------------------------------------------------------------------------
async def runs_page(request: Request) -> Response:
    store = _store(request)
    query = {k: v for k in _FILTERS if (v := request.query_params.get(k))}

    def build() -> _Page:
        state = query.get("state")
        state_type = None
        if state is not None:
            try:
                state_type = StateType(state.upper())
            except ValueError:
                raise ValueError(f"state: unknown state type {state!r}") from None
        kind = query.get("kind", "flow")
        if kind not in ("flow", "task", "all"):
            raise ValueError(f"kind: 'flow', 'task' or 'all', not {kind!r}")
        runs, next_cursor = store.list_runs_page(
            kind=None if kind == "all" else kind, spec_name=query.get("flow"), state=state_type,
            deployment=query.get("deployment"), parent=query.get("parent"), limit=PAGE_SIZE,
            cursor=query.get("cursor"),
        )  # fmt: skip
        here = {k: v for k, v in query.items() if k != "cursor"}
        return _Page(
            "runs.html", runs=runs, query=query, kind=kind, parents=_names(store, runs),
            states=[t.value for t in StateType],
            next_url=_url("/runs", {**here, "cursor": next_cursor}) if next_cursor else None,
            first_url=_url("/runs", here) if "cursor" in query else None,
            refresh_url=_url("/runs", {**query, "fragment": "1"}),
        )  # fmt: skip

    return await _render(request, build)


def _names(store: Any, runs: list[Any]) -> dict[Any, str]:
    """The names of the runs' parent flow runs (a page has a few: one read each)."""
    names = {}
    for parent in {r.parent_flow_run_id for r in runs} - {None}:
        try:
            names[parent] = store.read_run_sync(parent).name
        except KeyError:  # (pruned from the store)
            names[parent] = str(parent)
    return names


def _url(path: str, query: dict[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


async def run_page(request: Request) -> Response:
    store = _store(request)
    run_id = request.path_params["run_id"]

    def build() -> _Page:
        run = store.read_run_sync(run_id)
        rows: list[Any] = []
        flows: list[Any] = []
        counts: list[tuple[str, StateType, str, int]] = []
        if run.kind == "flow":
            rows, flows, counts = store.children_summary(run.id, TIMELINE_CAP)
        result = store.result_of_sync(run.id)
        parent = None
        if run.parent_flow_run_id is not None:
            try:
                parent = store.read_run_sync(run.parent_flow_run_id)
            except KeyError:  # (a parent pruned from the store)
                parent = None
        tasks = [c for c in rows if c.kind == "task"][:TASK_ROWS]
        task_states = Counter[str]()
        for kind, _, name, n in counts:
            if kind == "task":
                task_states[name] += n
        total = sum(n for _, _, _, n in counts)
        now = datetime.datetime.now(_UTC)
        live = not run.is_final or any(t not in TERMINAL_TYPES for _, t, _, _ in counts)
        return _Page(
            "run.html", run=run, parent=parent, flows=flows, tasks=tasks,
            task_count=sum(task_states.values()), task_states=sorted(task_states.items()),
            timeline=_timeline(run, rows, total, now), result=result, live=live,
            error=run.state_message if run.state_type in _BAD else None,
            refresh_url=f"/runs/{run.id}?fragment=1",
        )  # fmt: skip

    return await _render(request, build)


_BAD = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


def _timeline(run: Any, rows: list[Any], total: int, now: datetime.datetime) -> dict[str, Any]:
    """One bar per task run and subflow of the first `rows` (of `total`), placed by its
    start and end on the run's span."""
    if not rows:
        return {"bars": [], "more": 0, "span": "", "half": ""}
    shown = rows[:TIMELINE_CAP]
    starts = [_aware(r.start_time or r.created) for r in shown]
    begin = _aware(run.start_time) if run.start_time else min(starts)
    begin = min([begin, *starts])
    ends = [_aware(r.end_time) if r.end_time else (now if r.start_time else s)
            for r, s in zip(shown, starts, strict=True)]  # fmt: skip
    finish = max([_aware(run.end_time) if run.end_time else now, *ends])
    span = max((finish - begin).total_seconds(), 1e-6)
    bars = []
    for row, start, end in zip(shown, starts, ends, strict=True):
        left = (start - begin).total_seconds() / span * 100
        width = (end - start).total_seconds() / span * 100
        bars.append({
            "run": row, "left": f"{max(0.0, min(left, 100.0)):.3f}",
            "width": f"{max(0.0, min(width, 100.0 - left)):.3f}",
            "pending": row.start_time is None,
        })  # fmt: skip
    half = datetime.timedelta(seconds=span / 2)
    return {
        "bars": bars, "more": total - len(shown),
        "span": _took(datetime.timedelta(seconds=span)), "half": _took(half),
    }  # fmt: skip


async def cancel_run(request: Request) -> Response:
    store = _store(request)
    run_id = request.path_params["run_id"]
    await _form(request)

    def cancel() -> _Redirect:
        run = store.read_run_sync(run_id)
        store.request_cancel(run.id, why="cancelled in the UI")  # (one that ended: its page says)
        return _Redirect(f"/runs/{run.id}")

    return await _render(request, cancel)


async def _form(request: Request) -> dict[str, list[str]]:
    """The posted form (urlencoded), after its CSRF check."""
    body = (await request.body()).decode("utf-8", "replace")
    form = parse_qs(body, keep_blank_values=True)
    auth: Auth = request.app.state.auth
    if not auth.csrf_ok(_last(form, CSRF_FIELD)):
        raise _Forbidden()
    return form


def _last(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values else None


class _Forbidden(Exception):
    pass


# -- deployments ---------------------------------------------------------------------------------
async def deployments_page(request: Request) -> Response:
    store = _store(request)

    def build() -> _Page:
        from asyncflow.deployments.deployment import describe

        now = datetime.datetime.now(_UTC)
        deployments = [describe(row, now) for row in store.list_deployments()]
        for data in deployments:
            last, _ = store.list_runs_page(kind="flow", deployment=data["name"], limit=1)
            data["last_run"] = last[0] if last else None
        return _Page("deployments.html", deployments=deployments)

    return await _render(request, build)


def _deployment_page(
    store: Any, name: str, values: dict[str, str] | None = None, errors: list[str] | None = None
) -> _Page:
    from asyncflow.deployments.deployment import describe

    row = store.read_deployment(name)
    if row is None:
        raise KeyError(f"No deployment {name!r}.")
    data = describe(row, datetime.datetime.now(_UTC))
    recent, _ = store.list_runs_page(kind="flow", deployment=name, limit=10)
    fields = form_fields(data["parameter_schema"], data["parameters"], values)
    return _Page(
        "deployment.html", 422 if errors else 200, deployment=data, full_name=name,
        fields=fields, errors=errors or [], recent=recent,
    )  # fmt: skip


async def deployment_page(request: Request) -> Response:
    name = f"{request.path_params['flow']}/{request.path_params['deployment']}"
    return await _render(request, lambda: _deployment_page(_store(request), name))


async def start_run(request: Request) -> Response:
    from asyncflow.deployments.runs import queue_run
    from asyncflow.exceptions import ObjectNotFound, ParameterBindError, ParameterTypeError

    name = f"{request.path_params['flow']}/{request.path_params['deployment']}"
    store = _store(request)
    form = await _form(request)
    values = {k[2:]: v[-1] for k, v in form.items() if k.startswith("p.")}

    def start() -> _Page | _Redirect:
        row = store.read_deployment(name)
        if row is None:
            raise KeyError(f"No deployment {name!r}.")
        schema = json.loads(row["parameter_schema"])
        parameters, errors = read_fields(schema, values)
        if not errors:
            try:
                return _Redirect(f"/runs/{queue_run(store, name, parameters)[0].id}")
            except ObjectNotFound as exc:
                raise KeyError(str(exc)) from None
            except (ParameterBindError, ParameterTypeError, TypeError, ValueError) as exc:
                errors = [str(exc)]
        return _deployment_page(store, name, values, errors)

    return await _render(request, start)


def _field(schema: dict[str, Any], spec: Any) -> tuple[str, bool, dict[str, Any]]:
    """(the input a parameter gets, whether None is allowed, its schema with a `$ref` and
    an Optional's `anyOf` resolved) from its schema."""

    def resolve(part: Any) -> dict[str, Any]:
        if not isinstance(part, dict):
            return {}
        ref = part.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            found: Any = schema
            for key in ref[2:].split("/"):
                found = found.get(key) if isinstance(found, dict) else None
            return {**(found if isinstance(found, dict) else {}),
                    **{k: v for k, v in part.items() if k != "$ref"}}  # fmt: skip
        return part

    spec = resolve(spec)
    nullable = False
    options = spec.get("anyOf")
    if isinstance(options, list):
        kinds = [
            resolve(o) for o in options if not (isinstance(o, dict) and o.get("type") == "null")
        ]
        nullable = len(kinds) < len(options)
        if len(kinds) != 1:
            return "json", nullable, spec
        spec = {**kinds[0], **{k: v for k, v in spec.items() if k != "anyOf"}}
    if isinstance(spec.get("enum"), list):
        return "select", nullable, spec
    kind = spec.get("type")
    inputs = {"string": "text", "integer": "integer", "number": "number", "boolean": "checkbox"}
    field = inputs.get(kind, "json") if isinstance(kind, str) else "json"
    if field == "checkbox" and nullable:  # (unset, true or false: a checkbox has two)
        return "select", nullable, {**spec, "enum": [True, False]}
    return field, nullable, spec


def form_fields(
    schema: dict[str, Any], defaults: dict[str, Any], values: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The Run form's fields from a parameter schema: one input per parameter, filled with
    the posted `values`, else the deployment's default, else the schema's."""
    required = set(schema.get("required") or ())
    fields = []
    for name, raw_spec in (schema.get("properties") or {}).items():
        kind, nullable, spec = _field(schema, raw_spec)
        if values is not None:
            value = values.get(name, "")
        else:
            default = defaults.get(name, spec.get("default"))
            if default is None:
                value = ""
            elif kind == "json":
                value = json.dumps(default)
            elif kind == "checkbox":
                value = "true" if default else ""
            else:
                value = _option(default)
        fields.append({
            "name": name, "label": spec.get("title") or name, "kind": kind, "value": value,
            "required": name in required and name not in defaults, "nullable": nullable,
            "options": [_option(o) for o in spec.get("enum") or ()],
            "description": spec.get("description"),
        })  # fmt: skip
    return fields


def _option(value: Any) -> str:
    """A value as a form shows it (JSON's true/false for booleans)."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def read_fields(schema: dict[str, Any], values: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The posted form as parameters (an empty field: the default), and what could not be
    read. The deployment's schema check, where the types are enforced, comes after."""
    parameters: dict[str, Any] = {}
    errors: list[str] = []
    for name, raw_spec in (schema.get("properties") or {}).items():
        kind, _, spec = _field(schema, raw_spec)
        raw = values.get(name, "")
        if kind == "checkbox":
            parameters[name] = raw in ("true", "on")
            continue
        if raw.strip() == "":
            continue
        try:
            if kind == "integer":
                parameters[name] = int(raw)
            elif kind == "number":
                number = float(raw)
                if not math.isfinite(number):
                    raise ValueError(raw)
                parameters[name] = number
            elif kind == "json":
                parameters[name] = json.loads(raw)
            elif kind == "select":
                options = spec.get("enum") or []
                parameters[name] = next((o for o in options if _option(o) == raw), raw)
            else:
                parameters[name] = raw
        except ValueError:
            wanted = {"integer": "a whole number", "number": "a number", "json": "JSON"}
            errors.append(f"{name}: {wanted.get(kind, 'a value')} is needed, not {raw!r}")
    return parameters, errors


# -- flows ---------------------------------------------------------------------------------------
async def flows_page(request: Request) -> Response:
    store = _store(request)

    def build() -> _Page:
        flows = store.list_flows()
        shown = flows[:FLOWS_SHOWN]
        for data in shown:
            data["recent"], _ = store.list_runs_page(kind="flow", spec_name=data["name"], limit=5)
        return _Page("flows.html", flows=shown, more=len(flows) - len(shown))

    return await _render(request, build)


# -- login ---------------------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    target = _safe_next(request.query_params.get("next"), request.scope.get("root_path", ""))
    return await _render(request, lambda: _Page("login.html", next=target, failed=False))


async def login(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    root = request.scope.get("root_path", "")
    target = _safe_next(_last(form, "next"), root)
    session = auth.login(_last(form, "token") or "")
    if session is None:
        return await _render(request, lambda: _Page("login.html", 401, next=target, failed=True))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, session, httponly=True, samesite="strict", path=root or "/",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    await _form(request)
    root = request.scope.get("root_path", "")
    response = RedirectResponse(f"{root}/login", status_code=303)
    response.delete_cookie(COOKIE, path=root or "/")
    return response


def _safe_next(target: str | None, root: str) -> str:
    """A page of this server to go to after logging in (never another site's)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return f"{root}/runs"
    return target


async def home(request: Request) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/runs", status_code=303)


async def forbidden(request: Request, exc: Exception) -> Response:
    return HTMLResponse(
        "Forbidden: the form's CSRF token is missing or wrong. Reload the page and try again.",
        status_code=403,
    )


ROUTES = [
    Route("/", home),
    Route("/runs", runs_page),
    Route("/runs/{run_id}", run_page),
    Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/deployments", deployments_page),
    Route("/deployments/{flow}/{deployment}", deployment_page),
    Route("/deployments/{flow}/{deployment}/run", start_run, methods=["POST"]),
    Route("/flows", flows_page),
    Route("/login", login_page),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
]
#: The exception handlers the UI's routes need.
HANDLERS = {_Forbidden: forbidden}

__all__ = ["HANDLERS", "PAGE_SIZE", "ROUTES", "TASK_ROWS", "TIMELINE_CAP", "form_fields",
           "read_fields"]  # fmt: skip
