"""A served run in a process of its own (`serve(..., isolation="process")`).

``python -m asyncflow.deployments.isolated`` reads the claimed run from stdin (JSON), takes
the run over from the serving process in the store (it answers for it from then on: its
death crashes it, cancel requests come to it), loads the flow from the deployment's
entrypoint and runs it under the run's id, in this process's main thread (so a sync flow's
timeout or cancel stops it even inside a long C call). The serving process waits for it.
A flow that cannot be loaded ends the run Failed, saying why.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any


def main() -> int:
    from asyncflow.registry import new_prefix
    from asyncflow.store import connect, recording_url, writer
    from asyncflow.store.base import Claimed, run_id_prefix

    job = json.loads(sys.stdin.read())
    claimed = Claimed(
        uuid.UUID(job["id"]), job["pk"], job["name"], job["flow_name"], job["parameters"],
        job["deployment"], job["scheduled_time"], job["seq_base"],
    )  # fmt: skip
    url = recording_url()
    if url is None:
        print("asyncflow: an isolated run needs ASYNCFLOW_STORE", file=sys.stderr)
        return 2
    store: Any = connect(url)
    try:
        identity = writer.process_identity()
        if not store.adopt_claim(claimed, job["owner"], identity, run_id_prefix(new_prefix())):
            return 0  # (the serving process gave it up meanwhile)
        try:
            flow = _load(job["entrypoint"])
        except Exception as exc:
            message = f"The run could not start: {type(exc).__name__}: {exc}"
            store.fail_claimed(claimed, message)
            print(f"asyncflow: {message}", file=sys.stderr)
            return 0
    finally:
        store.close()
    _run(flow, claimed)
    return 0


def _load(entrypoint: str | None) -> Any:
    from asyncflow.cli._errors import CLIError
    from asyncflow.cli._run import entrypoint_flow, load_entrypoint, split_target
    from asyncflow.deployments import serve

    # a script that calls serve() outside `if __name__ == "__main__":` must not serve here
    serve.refusal = (
        "serve() was called while this run's own process loaded the flow's file "
        "(isolation='process'): call it under `if __name__ == '__main__':`."
    )
    if not entrypoint:
        raise ValueError("the flow has no entrypoint (it is defined in __main__ or a notebook)")
    path, name = split_target(entrypoint)
    try:
        return entrypoint_flow(load_entrypoint(path), name, path)
    except CLIError as exc:
        raise ValueError(str(exc)) from None


def _run(flow: Any, claimed: Any) -> None:
    from asyncflow.engine.context import Restarting, restart_var
    from asyncflow.registry import Alias
    from asyncflow.results.restore import Restore

    restart_var.set(
        Restarting(flow, Alias(claimed.id, claimed.pk, claimed.seq_base), claimed.name,
                   Restore({}, 1), undo=None)
    )  # fmt: skip
    if flow.kind == "async":
        import anyio

        async def run() -> None:
            await flow(**claimed.parameters, return_state=True)

        anyio.run(run)
    else:
        flow(**claimed.parameters, return_state=True)


if __name__ == "__main__":
    raise SystemExit(main())
