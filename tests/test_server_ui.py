"""The web UI (issue 16): its pages, forms, login and CSRF through an ASGI client against a
real store filled by real flows, on SQLite and PostgreSQL, on asyncio and trio. The browser
tests (tests/test_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from test_results_store import recording, store_url
from test_server_api import double, parent
from test_store_postgres import server_url

from asyncflow import flow
from asyncflow.server import create_app
from asyncflow.server.ui import TASK_ROWS, TIMELINE_CAP, form_fields, read_fields
from asyncflow.store import open_store, writer

__all__ = ["recording", "server_url", "store_url"]
pytestmark = pytest.mark.anyio


@flow
def typed(n: int, label: str = "x", loud: bool = False, ratio: float = 0.5) -> str:
    return f"{label}{n}"


@flow
def broken() -> None:
    raise ValueError("<b>no</b> good")


@pytest.fixture
async def ui(recording: str) -> AsyncIterator[httpx.AsyncClient]:
    store: Any = open_store(recording)
    transport = httpx.ASGITransport(app=create_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    store.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def _links(html: str, css_class: str) -> list[str]:
    return re.findall(rf'<a class="{css_class}" href="(/runs/[^"]+)"', html)


async def test_runs_page_lists_filters_and_links_parents(ui: httpx.AsyncClient) -> None:
    parent(3)
    with pytest.raises(ValueError):
        broken()
    writer.flush()
    assert (await ui.get("/")).headers["location"] == "/runs"
    page = await ui.get("/runs")
    assert page.status_code == 200
    html = page.text
    assert html.count('class="badge s-completed"') == 2  # (the parent and its subflow)
    assert 'class="badge s-failed"' in html
    # The subflow's row links its parent by name.
    (parent_link,) = _links(html, "parent")
    top = await ui.get(parent_link)
    assert "Child flow runs (1)" in top.text
    failed = (await ui.get("/runs", params={"state": "failed"})).text
    assert failed.count("<tr>") == 2 and "broken" in failed  # (the header and one run)
    tasks = (await ui.get("/runs", params={"kind": "task", "flow": "double"})).text
    assert tasks.count(">double</a>") == 2
    assert "match these filters" in (await ui.get("/runs", params={"flow": "nope"})).text
    bad = await ui.get("/runs", params={"state": "bogus"})
    assert bad.status_code == 400 and "unknown state type" in bad.text
    # The live region alone, for the 2 s refresh.
    live = (await ui.get("/runs", params={"fragment": "1"})).text
    assert live.lstrip().startswith('<div class="live" id="runs"') and "<html" not in live
    assert (await ui.get("/flows", params={"fragment": "1"})).status_code == 200  # (no region)


async def test_runs_pages_follow_the_cursor(ui: httpx.AsyncClient) -> None:
    @flow
    def tiny(i: int) -> int:
        return i

    for i in range(120):
        tiny(i)
    writer.flush()
    seen: list[str] = []
    url: str | None = "/runs?flow=tiny"
    while url:
        html = (await ui.get(url.replace("&amp;", "&"))).text
        seen += re.findall(r'<td><a href="/runs/([^"]+)">', html)
        found = re.search(r'<a href="([^"]+)" rel="next">', html)
        url = found.group(1) if found else None
    assert len(seen) == len(set(seen)) == 120


async def test_run_page_shows_parent_children_tasks_timeline_and_history(
    ui: httpx.AsyncClient,
) -> None:
    parent(4)
    writer.flush()
    html = (await ui.get("/runs")).text
    (parent_link,) = _links(html, "parent")
    top = (await ui.get(parent_link)).text
    (child_link,) = _links(top, "child-flow")
    assert top.count('<span class="bar s-completed"') == 2  # the subflow and the task
    assert "Task runs (1)" in top and "Completed: 1" in top
    assert [s for s in re.findall(r'<span class="badge s-\w+">(\w+)</span></td><td>', top)] == [
        "Pending", "Running", "Completed",
    ]  # fmt: skip
    assert "data-refresh" not in top  # (it ended: nothing to keep live)
    sub = (await ui.get(child_link)).text
    assert f'id="parent-link" href="{parent_link}"' in sub
    assert "&#34;n&#34;: 4" in sub  # its parameters (escaped)
    missing = await ui.get("/runs/00000000-0000-8000-8000-000000000000")
    assert missing.status_code == 404


async def test_a_big_run_draws_at_most_the_cap(
    ui: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow
    def wide(n: int) -> int:
        return sum(double.map(range(n)).result())

    wide(TIMELINE_CAP + 20)
    writer.flush()
    run_id = re.findall(r'<td><a href="/runs/([^"]+)">', (await ui.get("/runs")).text)[0]
    html = (await ui.get(f"/runs/{run_id}")).text
    assert html.count('<span class="bar ') == TIMELINE_CAP
    assert "20 more not drawn" in html
    assert html.count('<tr><td><a href="/runs/') == TASK_ROWS
    assert f"{TIMELINE_CAP + 20 - TASK_ROWS} more" in html
    # The API lists the first MAX_CHILDREN children and says there are more.
    from asyncflow.server import api

    monkeypatch.setattr(api, "MAX_CHILDREN", 100)
    detail = (await ui.get(f"/api/runs/{run_id}")).json()
    assert len(detail["children"]) == 100 and detail["children_truncated"] is True


async def test_a_failed_run_shows_its_error_escaped(ui: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError):
        broken()
    writer.flush()
    run_id = re.findall(r'<td><a href="/runs/([^"]+)">', (await ui.get("/runs")).text)[0]
    html = (await ui.get(f"/runs/{run_id}")).text
    assert "&lt;b&gt;no&lt;/b&gt; good" in html and "<b>no</b>" not in html


async def test_the_run_form_starts_a_run_and_refuses_bad_input(ui: httpx.AsyncClient) -> None:
    typed.to_deployment("ui").apply()
    listing = (await ui.get("/deployments")).text
    assert 'href="/deployments/typed/ui"' in listing
    page = await ui.get("/deployments/typed/ui")
    assert page.status_code == 200
    html = page.text
    assert 'name="p.n"' in html and 'type="number" step="1"' in html and "required" in html
    assert 'type="checkbox" id="p-loud"' in html
    token = _csrf(html)
    form = {"csrf_token": token, "p.n": "7", "p.label": "", "p.loud": "false", "p.ratio": "2"}
    made = await ui.post("/deployments/typed/ui/run", data=form)
    assert made.status_code == 303, made.text
    run = (await ui.get(made.headers["location"])).text
    assert "Scheduled" in run and "&#34;n&#34;: 7" in run and "&#34;ratio&#34;: 2.0" in run
    assert 'action="/runs/' in run  # a Cancel button: it has not ended
    bad = await ui.post("/deployments/typed/ui/run", data={**form, "p.n": "seven"})
    assert bad.status_code == 422 and "n: a whole number is needed, not &#39;seven&#39;" in bad.text
    assert 'value="seven"' in bad.text  # (what was typed is kept)
    none = await ui.post("/deployments/typed/ui/run", data={**form, "p.n": ""})
    assert none.status_code == 422 and "n" in none.text
    forged = await ui.post("/deployments/typed/ui/run", data={**form, "csrf_token": "0" * 64})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert (await ui.post("/deployments/typed/ui/run", data={"p.n": "1"})).status_code == 403
    assert (await ui.get("/deployments/typed/nope")).status_code == 404
    runs = (await ui.get("/runs", params={"deployment": "typed/ui"})).text
    assert runs.count("s-scheduled") == 1  # only the one good submission queued a run


async def test_the_cancel_button_cancels(ui: httpx.AsyncClient) -> None:
    typed.to_deployment("ui").apply()
    html = (await ui.get("/deployments/typed/ui")).text
    made = await ui.post("/deployments/typed/ui/run", data={"csrf_token": _csrf(html), "p.n": "1"})
    where = made.headers["location"]
    page = (await ui.get(where)).text
    assert (await ui.post(f"{where}/cancel", data={})).status_code == 403
    done = await ui.post(f"{where}/cancel", data={"csrf_token": _csrf(page)})
    assert done.status_code == 303 and done.headers["location"] == where
    assert "s-cancelled" in (await ui.get(where)).text


async def test_flows_page(ui: httpx.AsyncClient) -> None:
    parent(1)
    writer.flush()
    html = (await ui.get("/flows")).text
    assert 'href="/runs?flow=parent"' in html and 'href="/runs?flow=child"' in html
    assert "1 run," in html


async def test_login_cookie_and_csrf_with_a_token(recording: str) -> None:
    store: Any = open_store(recording)
    try:
        transport = httpx.ASGITransport(app=create_app(store, token="s3cret"))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            sent = await http.get("/runs?state=failed")
            assert sent.status_code == 303
            assert sent.headers["location"] == "/login?next=%2Fruns%3Fstate%3Dfailed"
            assert (await http.get("/static/app.css")).status_code == 200
            login = await http.get("/login")
            assert login.status_code == 200 and 'type="password"' in login.text
            wrong = await http.post("/login", data={"token": "nope", "next": "/runs"})
            assert wrong.status_code == 401 and "not this server" in wrong.text
            assert "asyncflow_session" not in http.cookies
            # A `next` to another site is not followed.
            away = await http.post("/login", data={"token": "s3cret", "next": "//evil.example"})
            assert away.status_code == 303 and away.headers["location"] == "/runs"
            assert "s3cret" not in http.cookies["asyncflow_session"]
            assert "HttpOnly" in away.headers["set-cookie"]
            assert (await http.get("/runs")).status_code == 200
            session = http.cookies["asyncflow_session"]
            # The API takes the bearer token only, never the cookie.
            assert (await http.get("/api/runs")).status_code == 401
            out = await http.post(
                "/logout", data={"csrf_token": _csrf((await http.get("/runs")).text)}
            )
            assert out.status_code == 303
            assert (await http.get("/runs")).status_code == 303
            bearer = await http.get("/runs", headers={"Authorization": "Bearer s3cret"})
            assert bearer.status_code == 200
        # Another process with the same token takes the same cookie (no server sessions).
        again = httpx.ASGITransport(app=create_app(store, token="s3cret"))
        async with httpx.AsyncClient(transport=again, base_url="http://test") as other:
            other.cookies.set("asyncflow_session", session)
            assert (await other.get("/runs")).status_code == 200
            other.cookies.set("asyncflow_session", "0" * 64)
            assert (await other.get("/runs")).status_code == 303
    finally:
        store.close()


def test_form_fields_follow_the_schema() -> None:
    schema = {
        "properties": {
            "n": {"type": "integer", "title": "N"},
            "when": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "mode": {"enum": ["fast", "slow"], "default": "fast"},
            "items": {"type": "array", "items": {"type": "integer"}, "default": [1, 2]},
            "flag": {"type": "boolean", "default": True},
        },
        "required": ["n"],
    }
    fields = {f["name"]: f for f in form_fields(schema, {"mode": "slow"})}
    assert fields["n"]["kind"] == "integer" and fields["n"]["required"]
    assert fields["when"]["kind"] == "text" and fields["when"]["nullable"]
    assert fields["mode"]["kind"] == "select" and fields["mode"]["value"] == "slow"
    assert fields["mode"]["options"] == ["fast", "slow"]
    assert fields["items"]["kind"] == "json" and fields["items"]["value"] == "[1, 2]"
    assert fields["flag"]["kind"] == "checkbox" and fields["flag"]["value"] == "true"
    values = {"n": "3", "when": "", "mode": "fast", "items": "[4]", "flag": "false"}
    assert read_fields(schema, values) == (
        {"n": 3, "mode": "fast", "items": [4], "flag": False},
        [],
    )
    _, errors = read_fields(schema, {**values, "items": "[4", "n": "3.5"})
    assert errors == ["n: a whole number is needed, not '3.5'", "items: JSON is needed, not '[4'"]


def test_form_fields_resolve_refs_optionals_and_nullable_booleans() -> None:
    schema = {
        "$defs": {"Color": {"enum": ["red", "blue"], "type": "string", "title": "Color"}},
        "properties": {
            "color": {"$ref": "#/$defs/Color", "default": "red"},
            "level": {"anyOf": [{"enum": [1, 2], "type": "integer"}, {"type": "null"}],
                      "default": None},
            "flag": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None},
        },
    }  # fmt: skip
    fields = {f["name"]: f for f in form_fields(schema, {})}
    assert fields["color"]["kind"] == "select" and fields["color"]["options"] == ["red", "blue"]
    assert fields["color"]["value"] == "red"
    assert fields["level"]["kind"] == "select" and fields["level"]["options"] == ["1", "2"]
    assert fields["flag"]["kind"] == "select" and fields["flag"]["options"] == ["true", "false"]
    assert read_fields(schema, {"color": "blue", "level": "2", "flag": ""}) == (
        {"color": "blue", "level": 2}, [],
    )  # fmt: skip
    assert read_fields(schema, {"color": "red", "level": "", "flag": "false"}) == (
        {"color": "red", "flag": False}, [],
    )  # fmt: skip


async def test_posts_from_another_site_are_refused_without_a_token(
    ui: httpx.AsyncClient,
) -> None:
    typed.to_deployment("ui").apply()
    token = _csrf((await ui.get("/deployments/typed/ui")).text)
    evil = {"Origin": "http://evil.example"}
    api = await ui.post("/api/deployments/typed/ui/runs", content='{"parameters": {"n": 1}}',
                        headers={**evil, "Content-Type": "text/plain"})  # fmt: skip
    assert api.status_code == 403
    form = await ui.post(
        "/deployments/typed/ui/run", data={"csrf_token": token, "p.n": "1"}, headers=evil
    )
    assert form.status_code == 403
    same = await ui.post(
        "/deployments/typed/ui/run", data={"csrf_token": token, "p.n": "1"},
        headers={"Origin": "http://test"},
    )  # fmt: skip
    assert same.status_code == 303
    assert len((await ui.get("/api/runs", params={"deployment": "typed/ui"})).json()["runs"]) == 1


async def test_a_mounted_app_keeps_its_prefix_and_its_checks(recording: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    store: Any = open_store(recording)
    try:
        outer = Starlette(routes=[Mount("/af", app=create_app(store, token="s3cret"))])
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/af/api/health")).status_code == 200
            sent = await http.get("/af/runs")
            assert sent.status_code == 303 and sent.headers["location"].startswith("/af/login")
            page = await http.post("/af/login", data={"token": "s3cret", "next": "/af/runs"})
            assert page.headers["location"] == "/af/runs"
            html = (await http.get("/af/runs")).text
            assert 'href="/af/static/app.css"' in html and 'href="/af/flows"' in html
            assert (await http.get("/af/api/runs")).status_code == 401  # (no cookie there)
    finally:
        store.close()


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        create_app("memory", token=" ")
