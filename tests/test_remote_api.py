"""run_deployment, FlowRun.wait/result and cancel_run through a server's HTTP API
(ASYNCFLOW_API_URL), from a process that has no run store at all (ASYNCFLOW_STORE=memory):
a real `asyncflow server start` and a real serving process, on asyncio and trio."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncflow import flow
from asyncflow.cancel import cancel_run
from asyncflow.deployments import arun_deployment, run_deployment
from asyncflow.exceptions import (
    CancelledRun,
    ObjectNotFound,
    ParameterBindError,
    ParameterTypeError,
    ServerUnavailable,
)
from asyncflow.settings import reload_settings
from asyncflow.states import StateType

TOKEN = "remote-s3cret"
SCRIPT = textwrap.dedent(
    """
    import time

    from asyncflow import flow, serve


    @flow(persist_result=True)
    def add(x: int, y: int = 1) -> int:
        return x + y


    @flow
    def sleepy(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)


    if __name__ == "__main__":
        serve(add.to_deployment("remote"), sleepy.to_deployment("remote"))
    """
)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return len(json.load(answer)["deployments"]) == 2
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("remote")
    script = home / "flows.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ASYNCFLOW_HOME": str(home / "home"),
           "ASYNCFLOW_STORE": f"sqlite://{home / 'runs.db'}",
           "ASYNCFLOW_RESULTS_STORAGE": str(home / "results"),
           "ASYNCFLOW_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    for name in ("ASYNCFLOW_API_URL", "ASYNCFLOW_API_KEY"):
        env.pop(name, None)
    port = _port()
    procs = [
        subprocess.Popen([sys.executable, str(script)], env=env, cwd=home),
        subprocess.Popen(
            [sys.executable, "-m", "asyncflow.cli", "server", "start", "--port", str(port),
             "--token", TOKEN],
            env=env, stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"{url}/api/deployments"):
            assert time.monotonic() < deadline, "the server or the deployments never came up"
            time.sleep(0.1)
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


@pytest.fixture
def remote(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process knows the server only: no run store of its own."""
    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    monkeypatch.setenv("ASYNCFLOW_API_URL", server)
    monkeypatch.setenv("ASYNCFLOW_API_KEY", TOKEN)
    reload_settings()
    yield server
    monkeypatch.undo()
    reload_settings()


def test_a_run_through_the_api_waits_and_returns_its_result(remote: str) -> None:
    run = run_deployment("add/remote", {"x": 41}, timeout=60)
    assert run.state_name == "Completed" and run.deployment == "add/remote"
    assert run.parameters == {"x": 41}
    assert run.result() == 42
    queued = run_deployment("add/remote", {"x": 1, "y": 2}, timeout=0)
    assert queued.state_name == "Scheduled"
    assert queued.wait(60).result() == 3
    first = run_deployment("add/remote", {"x": 5}, timeout=0, idempotency_key="once")
    again = run_deployment("add/remote", {"x": 6}, timeout=0, idempotency_key="once")
    assert again.id == first.id


def test_errors_through_the_api_are_the_local_ones(remote: str) -> None:
    with pytest.raises(ParameterTypeError, match="parameter 'x': 'no' is not of type integer"):
        run_deployment("add/remote", {"x": "no"}, timeout=0)
    with pytest.raises(ParameterBindError):
        run_deployment("add/remote", {"x": 1, "z": 2}, timeout=0)
    with pytest.raises(ObjectNotFound, match="add/remote"):
        run_deployment("add/nope", timeout=0)
    with pytest.raises(ValueError, match="flow name/deployment name"):
        run_deployment("no-slash", timeout=0)


def test_a_wrong_key_or_no_server_is_said(remote: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCFLOW_API_KEY", "wrong")
    reload_settings()
    with pytest.raises(PermissionError, match="ASYNCFLOW_API_KEY"):
        run_deployment("add/remote", {"x": 1}, timeout=0)
    monkeypatch.setenv("ASYNCFLOW_API_URL", f"http://127.0.0.1:{_port()}")
    reload_settings()
    with pytest.raises(ServerUnavailable, match="cannot be reached"):
        run_deployment("add/remote", {"x": 1}, timeout=0)
    monkeypatch.setenv("ASYNCFLOW_API_URL", "localhost:4300")
    with pytest.raises(ValueError, match="ASYNCFLOW_API_URL"):
        reload_settings()
    monkeypatch.setenv("ASYNCFLOW_API_URL", remote)
    reload_settings()


def test_cancel_run_through_the_api(remote: str) -> None:
    run = run_deployment("sleepy/remote", {"seconds": 60}, timeout=0)
    deadline = time.monotonic() + 60
    while run.wait(timeout=0.2).state_name != "Running":
        assert time.monotonic() < deadline
    assert cancel_run(run.id) is True
    assert run.wait(60).state_name == "Cancelled"
    with pytest.raises(CancelledRun):
        run.result()
    assert cancel_run(run.id) is False  # (already final)


def test_run_deployment_inside_a_flow_through_the_api(remote: str) -> None:
    @flow
    def caller() -> int:
        return int(run_deployment("add/remote", {"x": 9}, timeout=60).result())

    assert caller() == 10


@pytest.mark.anyio
async def test_arun_deployment_through_the_api(remote: str) -> None:
    run = await arun_deployment("add/remote", {"x": 2, "y": 3}, timeout=60)
    assert run.state_name == "Completed"
    assert await run.aresult() == 5
    queued = await run_deployment("add/remote", {"x": 7}, timeout=0)
    assert (await queued.await_final(60)).state_name == "Completed"


def test_the_cli_runs_a_deployment_through_the_api(remote: str, tmp_path: Path) -> None:
    env = {**os.environ, "ASYNCFLOW_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "asyncflow.cli", "deployments", "run", "add/remote",
         "--param", "x=1", "--wait", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state_name"] == "Completed"


__all__: list[Any] = []


class _Scripted:
    """A stdlib HTTP server in a thread answering from a script of (status, headers,
    body) per request, recording what it was sent."""

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        import http.server
        import threading

        self.answers = list(answers)
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(dict(self.headers))
                status, headers, body = outer.answers.pop(0) if outer.answers else (500, {}, b"")
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_poll_rides_out_a_server_that_stumbles() -> None:
    from asyncflow.deployments.remote import ApiClient

    state = json.dumps({"state_type": "RUNNING", "state_name": "Running"}).encode()
    server = _Scripted([(502, {}, b"bad gateway"), (503, {}, b"{}"),
                        (200, {"Content-Type": "application/json"}, state)])  # fmt: skip
    try:
        client = ApiClient(server.url, "k")
        assert client.poll("00000000-0000-8000-8000-000000000000") == (StateType.RUNNING, "Running")
        assert len(server.seen) == 3
    finally:
        server.close()
    with pytest.raises(ServerUnavailable, match="cannot be reached"):
        ApiClient(server.url).poll("x", deadline=time.monotonic() + 0.5)  # (it is gone now)


def test_redirects_are_not_followed_with_the_token() -> None:
    from asyncflow.deployments.remote import ApiClient

    elsewhere = _Scripted([])
    server = _Scripted([(307, {"Location": f"{elsewhere.url}/api/deployments/a/b/runs"}, b"")])
    try:
        with pytest.raises(ServerUnavailable, match=r"redirect .* not followed"):
            ApiClient(server.url, "secret-key").create("a/b", None, None, None, None, None)
        assert elsewhere.seen == []
    finally:
        server.close()
        elsewhere.close()


def test_an_answer_that_is_not_an_asyncflow_servers_is_said() -> None:
    from asyncflow.deployments.remote import ApiClient

    server = _Scripted([(200, {"Content-Type": "text/html"}, b"<html>hello</html>"),
                        (404, {"Content-Type": "text/html"}, b"<html>nope</html>")])  # fmt: skip
    try:
        with pytest.raises(ServerUnavailable, match="not JSON: is it an asyncflow server"):
            ApiClient(server.url).create("a/b", None, None, None, None, None)
        with pytest.raises(ObjectNotFound):
            ApiClient(server.url).create("a/b", None, None, None, None, None)
    finally:
        server.close()


def test_the_cli_says_when_the_server_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from asyncflow.cli import main

    monkeypatch.setenv("ASYNCFLOW_STORE", "memory")
    monkeypatch.setenv("ASYNCFLOW_API_URL", f"http://127.0.0.1:{_port()}")
    reload_settings()
    try:
        assert main(["deployments", "run", "f/d"]) == 2
        assert "cannot be reached" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        reload_settings()
