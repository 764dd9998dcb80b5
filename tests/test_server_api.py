"""The HTTP API (issue 16, first slice): an ASGI client against a real store filled by real
flows, on SQLite and PostgreSQL, on asyncio and trio."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from test_results_store import recording, store_url
from test_store_postgres import server_url

from asyncflow import flow, task
from asyncflow.server import create_app
from asyncflow.store import open_store, writer

__all__ = ["recording", "server_url", "store_url"]
pytestmark = pytest.mark.anyio


@task
def double(x: int) -> int:
    return 2 * x


@flow
def child(n: int) -> int:
    return double(n)


@flow
def parent(n: int = 2) -> int:
    return child(n) + double(n)


@flow
def typed(n: int, label: str = "x") -> str:
    return f"{label}{n}"


@pytest.fixture
async def client(recording: str) -> AsyncIterator[httpx.AsyncClient]:
    store: Any = open_store(recording)
    app = create_app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    store.close()


async def test_runs_filters_details_tree_and_errors(
    client: httpx.AsyncClient, recording: str
) -> None:
    parent(3)
    parent(4)
    typed(1)
    writer.flush()
    runs = (await client.get("/api/runs")).json()
    assert runs["next_cursor"] is None
    assert [r["spec_name"] for r in runs["runs"]].count("parent") == 2
    only = (await client.get("/api/runs", params={"flow": "typed"})).json()["runs"]
    assert [r["parameters"] for r in only] == [{"n": 1, "label": "x"}]
    done = (await client.get("/api/runs", params={"state": "completed", "kind": "all"})).json()
    assert len(done["runs"]) == 2 * 4 + 2 + 1  # (flows, subflows, tasks)
    top = next(r for r in runs["runs"] if r["spec_name"] == "parent")
    detail = (await client.get(f"/api/runs/{top['id']}")).json()
    assert [s["name"] for s in detail["states"]] == ["Pending", "Running", "Completed"]
    kinds = sorted(c["kind"] for c in detail["children"])
    assert kinds == ["flow", "task", "task"]  # the subflow, its stand-in, a task
    sub = next(c for c in detail["children"] if c["kind"] == "flow")
    assert sub["parent_flow_run_id"] == top["id"]
    under = (await client.get("/api/runs", params={"parent": top["id"], "kind": "all"})).json()
    assert len(under["runs"]) == 3
    tree = (await client.get(f"/api/runs/{top['id']}/tree")).json()
    nested = next(c for c in tree["children"] if c["kind"] == "flow")
    assert [c["spec_name"] for c in nested["children"]] == ["double"]
    flows = (await client.get("/api/flows")).json()["flows"]
    assert {f["name"]: f["runs"] for f in flows} == {"parent": 2, "child": 2, "typed": 1}
    # errors: 404, 400, clear messages
    missing = await client.get("/api/runs/ffffffff-ffff-8fff-bfff-ffffffffffff")
    assert missing.status_code == 404 and "No run" in missing.json()["detail"]
    for params, words in [
        ({"limit": "501"}, "limit: from 1 to 500"),
        ({"limit": "x"}, "not a number"),
        ({"state": "happy"}, "unknown state type"),
        ({"kind": "job"}, "kind:"),
        ({"since": "yesterday"}, "not an ISO 8601"),
        ({"cursor": "garbage"}, "Not a cursor"),
        ({"colour": "red"}, "unknown query parameter"),
    ]:
        answer = await client.get("/api/runs", params=params)
        assert answer.status_code == 400 and words in answer.json()["detail"], params
    health = await client.get("/api/health")
    assert health.json() == {"status": "ok"}
    spec = (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/api/runs" in spec["paths"]


async def test_pagination_over_10k_runs_has_no_duplicates_or_gaps(
    client: httpx.AsyncClient,
) -> None:
    @flow
    def tiny(i: int) -> int:
        return i

    for i in range(10_000):
        tiny(i)
    writer.flush()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"flow": "tiny", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/runs", params=params)).json()
        seen += [r["id"] for r in page["runs"]]
        pages += 1
        if pages == 3:
            tiny(-1)  # (a run added meanwhile shifts nothing: it is newer than the cursor)
            writer.flush()
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 20 and len(seen) == len(set(seen)) == 10_000


async def test_starting_and_cancelling_runs(client: httpx.AsyncClient, recording: str) -> None:
    typed.to_deployment("api").apply()
    listed = (await client.get("/api/deployments")).json()["deployments"]
    assert [d["name"] for d in listed] == ["typed/api"]
    one = (await client.get("/api/deployments/typed/api")).json()
    assert one["parameter_schema"]["required"] == ["n"]
    assert (await client.get("/api/deployments/typed/nope")).status_code == 404
    made = await client.post(
        "/api/deployments/typed/api/runs", json={"parameters": {"n": 5}, "idempotency_key": "k"}
    )
    assert made.status_code == 201, made.text
    run = made.json()
    assert run["state_name"] == "Scheduled" and run["parameters"] == {
        "n": 5,
    }
    again = await client.post(
        "/api/deployments/typed/api/runs", json={"parameters": {"n": 6}, "idempotency_key": "k"}
    )
    assert again.json()["id"] == run["id"]
    bad = await client.post("/api/deployments/typed/api/runs", json={"parameters": {"n": "x"}})
    assert bad.status_code == 422 and "'x' is not of type integer" in bad.json()["detail"]
    assert (await client.post("/api/deployments/typed/api/runs", json={})).status_code == 422
    unknown = await client.post("/api/deployments/typed/api/runs", json={"params": {}})
    assert unknown.status_code == 400 and "unknown field" in unknown.json()["detail"]
    nobody = await client.post("/api/deployments/nope/api/runs", json={})
    assert nobody.status_code == 404
    cancelled = await client.post(f"/api/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["outcome"] == "cancelled"
    assert (await client.post(f"/api/runs/{run['id']}/cancel")).status_code == 409
    runs = (await client.get("/api/runs", params={"deployment": "typed/api"})).json()["runs"]
    assert [r["state_name"] for r in runs] == ["Cancelled"]


async def test_a_token_guards_every_route_but_health(recording: str) -> None:
    store: Any = open_store(recording)
    try:
        app = create_app(store, token="s3cret")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/api/health")).status_code == 200
            for path in ("/api/runs", "/api/flows", "/api/deployments", "/api/openapi.json"):
                answer = await http.get(path)
                assert answer.status_code == 401 and "bearer token" in answer.json()["detail"]
            wrong = await http.get("/api/runs", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "not this server's" in wrong.json()["detail"]
            right = await http.get("/api/runs", headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200
    finally:
        store.close()


def test_the_server_command_refuses_other_addresses_without_a_token(
    recording: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from asyncflow.cli import main

    assert main(["server", "start", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["server", "start", "--port", "0"]) == 2


def test_the_server_command_serves_the_api(recording: str) -> None:
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ASYNCFLOW_STORE": recording}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncflow.cli", "server", "start", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port} (the UI" in line
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(30)


def _serve_in_another_process(script: Any, url: str) -> subprocess.Popen[bytes]:
    import os

    env = {**os.environ, "ASYNCFLOW_STORE": url, "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, str(script)], env=env)


async def _until(check: Any) -> Any:
    import anyio

    for _ in range(600):
        found = await check()
        if found:
            return found
        await anyio.sleep(0.1)
    raise AssertionError("waited 60 s")


async def test_cancelling_a_run_served_by_another_process(
    client: httpx.AsyncClient, recording: str, tmp_path: Any
) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        "import time\n"
        "from asyncflow import flow\n\n"
        "@flow\n"
        "def slow() -> None:\n"
        "    for _ in range(600):\n"
        "        time.sleep(0.1)\n\n"
        "if __name__ == '__main__':\n"
        "    slow.serve('api')\n"
    )
    server = _serve_in_another_process(script, recording)

    async def deployed() -> bool:
        return (await client.get("/api/deployments/slow/api")).status_code == 200

    async def state() -> dict[str, Any]:
        return (await client.get(f"/api/runs/{run_id}")).json()  # type: ignore[no-any-return]

    async def running() -> bool:
        return (await state())["state_name"] == "Running"

    async def ended() -> dict[str, Any] | None:
        run = await state()
        return run if run["end_time"] else None

    try:
        await _until(deployed)
        made = await client.post("/api/deployments/slow/api/runs", json={})
        run_id = made.json()["id"]
        await _until(running)
        asked = await client.post(f"/api/runs/{run_id}/cancel")
        assert asked.status_code == 202 and asked.json()["outcome"] == "requested"
        assert (await _until(ended))["state_name"] == "Cancelled"
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 409
    finally:
        server.terminate()
        server.wait(30)
