"""Property test: random trees of flows and tasks with failures, retries, timeouts, cancellation.

Whatever happens, every run ends in exactly one terminal state, nothing follows it, an earlier
terminal state appears only as a retried attempt (Failed -> AwaitingRetry), and
run_count <= retries + 1.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncflow import cancel_run, flow, task
from asyncflow.exceptions import CancelledRun
from asyncflow.registry import reset_registry
from asyncflow.states import TERMINAL_TYPES, StateType

_ids = itertools.count()


@dataclass
class Node:
    kind: str  # "flow" or "task"
    outcome: str  # "ok", "fail", "fail_once", "slow"
    retries: int
    timeout: float | None
    children: list[Node] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"node-{next(_ids)}")


def nodes(depth: int) -> st.SearchStrategy[Node]:
    leaf_fields = {
        "outcome": st.sampled_from(["ok", "fail", "fail_once", "slow"]),
        "retries": st.integers(0, 2),
        "timeout": st.sampled_from([None, None, 0.05]),
    }
    task_node = st.builds(Node, kind=st.just("task"), **leaf_fields)
    if depth == 0:
        return task_node
    flow_node = st.builds(
        Node,
        kind=st.just("flow"),
        children=st.lists(nodes(depth - 1), max_size=3),
        **leaf_fields,
    )
    return st.one_of(task_node, flow_node)


async def _body(node: Node, attempts: dict[str, int]) -> str:
    attempts[node.name] = attempts.get(node.name, 0) + 1
    if node.children:
        async with anyio.create_task_group() as tg:
            for child in node.children:
                tg.start_soon(_run_node, child, attempts)
    if node.outcome == "slow":
        await anyio.sleep(0.1)
    elif node.outcome == "fail" or (node.outcome == "fail_once" and attempts[node.name] == 1):
        raise ValueError(f"{node.name} fails")
    return node.name


@flow
async def _flow_template(node: Node, attempts: dict[str, int]) -> str:
    return await _body(node, attempts)


@task
async def _task_template(node: Node, attempts: dict[str, int]) -> str:
    return await _body(node, attempts)


async def _run_node(node: Node, attempts: dict[str, int]) -> None:
    template = _flow_template if node.kind == "flow" else _task_template
    runnable = template.with_options(
        name=node.name, retries=node.retries, retry_delay_seconds=0, timeout_seconds=node.timeout
    )
    # Failures are part of the experiment: look at states, not exceptions.
    await runnable(node, attempts, return_state=True)


def _all(node: Node) -> list[Node]:
    return [node, *(n for child in node.children for n in _all(child))]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=nodes(depth=2).filter(lambda n: n.kind == "flow"),
    cancel_after=st.sampled_from([None, 0.0, 0.02, 0.06]),
)
def test_every_run_ends_in_exactly_one_terminal_state(
    backend: str, tree: Node, cancel_after: float | None
) -> None:
    """Random trees: one final terminal state per run, never overwritten; run_count bounded."""
    registry = reset_registry()
    attempts: dict[str, int] = {}

    async def main() -> None:
        if cancel_after is None:
            await _run_node(tree, attempts)
        else:
            with anyio.move_on_after(cancel_after):
                await _run_node(tree, attempts)

    anyio.run(main, backend=backend)

    by_name = {n.name: n for n in _all(tree)}
    runs = [r for r in registry.runs() if r.spec_name in by_name]
    for run in runs:
        states = run.states
        assert states, run
        assert states[0].type is StateType.PENDING
        assert states[-1].type in TERMINAL_TYPES, (run.name, run.state_names)
        for earlier, later in itertools.pairwise(states):
            if earlier.type in TERMINAL_TYPES:
                # only a retried attempt's failure may be followed by anything
                assert earlier.type is StateType.FAILED, run.state_names
                assert later.name == "AwaitingRetry", run.state_names
        node = by_name[run.spec_name]
        assert run.run_count <= node.retries + 1, (run.name, run.state_names)
    # every node that started is one recorded run of its own kind
    started = {r.spec_name for r in runs if r.kind == by_name[r.spec_name].kind}
    assert set(attempts) <= started


# -- sync trees: inline calls, .submit(), generators; cancel_run from another thread -----------
@dataclass
class SyncNode:
    kind: str  # "flow", "task", "submit" (a submitted task), "gen_flow", "gen_task"
    outcome: str
    retries: int
    timeout: float | None
    children: list[SyncNode] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"sync-node-{next(_ids)}")


def sync_nodes(depth: int) -> st.SearchStrategy[SyncNode]:
    fields = {
        "outcome": st.sampled_from(["ok", "fail", "fail_once", "slow"]),
        "retries": st.integers(0, 2),
        "timeout": st.sampled_from([None, None, 0.05]),
    }
    leaf = st.builds(SyncNode, kind=st.sampled_from(["task", "submit", "gen_task"]), **fields)
    if depth == 0:
        return leaf
    parent = st.builds(
        SyncNode,
        kind=st.sampled_from(["flow", "gen_flow"]),
        children=st.lists(sync_nodes(depth - 1), max_size=3),
        **fields,
    )
    return st.one_of(leaf, parent)


def _sync_work(node: SyncNode, attempts: dict[str, int], roots: list[Any]) -> str:
    from asyncflow import runtime

    if not roots:
        roots.append(runtime.flow_run.id)
    attempts[node.name] = attempts.get(node.name, 0) + 1
    for child in node.children:
        _run_sync_node(child, attempts, roots)
    if node.outcome == "slow":
        for _ in range(6):  # slices: an interrupt lands between them in a worker thread
            time.sleep(0.01)
    elif node.outcome == "fail" or (node.outcome == "fail_once" and attempts[node.name] == 1):
        raise ValueError(f"{node.name} fails")
    return node.name


def _sync_gen(node: SyncNode, attempts: dict[str, int], roots: list[Any]) -> Iterator[str]:
    yield _sync_work(node, attempts, roots)


_sync_flow = flow(_sync_work)
_sync_task = task(_sync_work)
_gen_flow = flow(_sync_gen)
_gen_task = task(_sync_gen)
_TEMPLATES = {
    "flow": _sync_flow,
    "task": _sync_task,
    "submit": _sync_task,
    "gen_flow": _gen_flow,
    "gen_task": _gen_task,
}


def _run_sync_node(node: SyncNode, attempts: dict[str, int], roots: list[Any]) -> None:
    options: dict[str, Any] = {"name": node.name, "timeout_seconds": node.timeout}
    if not node.kind.startswith("gen"):  # generators are not retried
        options.update(retries=node.retries, retry_delay_seconds=0)
    runnable = _TEMPLATES[node.kind].with_options(**options)
    try:
        if node.kind == "submit":
            runnable.submit(node, attempts, roots)  # its flow waits for it
        elif node.kind.startswith("gen"):
            list(runnable(node, attempts, roots))
        else:
            runnable(node, attempts, roots, return_state=True)
    except Exception:
        pass  # failures are part of the experiment: look at the recorded states


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=sync_nodes(depth=2).filter(lambda n: n.kind in ("flow", "gen_flow")),
    cancel_after=st.sampled_from([None, 0.0, 0.02, 0.06]),
)
def test_sync_trees_end_every_run_in_exactly_one_terminal_state(
    tree: SyncNode, cancel_after: float | None
) -> None:
    """Sync flows, inline and submitted tasks and generators, over retry x timeout x
    cancel_run: the same invariants as the async trees, and no thread left behind."""
    registry = reset_registry()
    attempts: dict[str, int] = {}
    roots: list[Any] = []
    baseline = _run_threads()
    canceller = None
    if cancel_after is not None:

        def cancel_root() -> None:
            deadline = time.monotonic() + 1.0
            while not roots and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(cancel_after)
            if roots:
                cancel_run(roots[0])

        canceller = threading.Thread(target=cancel_root, daemon=True)
        canceller.start()
    try:
        _run_sync_node(tree, attempts, roots)
    except CancelledRun:  # the root was cancelled
        pass
    if canceller is not None:
        canceller.join()

    by_name = {n.name: n for n in _all_sync(tree)}
    runs = [r for r in registry.runs() if r.spec_name in by_name]
    for run in runs:
        states = run.states
        assert states[0].type is StateType.PENDING, run.state_names
        assert states[-1].type in TERMINAL_TYPES, (run.name, run.state_names)
        for earlier, later in itertools.pairwise(states):
            if earlier.type in TERMINAL_TYPES:
                assert earlier.type is StateType.FAILED, run.state_names
                assert later.name == "AwaitingRetry", run.state_names
        assert run.run_count <= by_name[run.spec_name].retries + 1, run.state_names
    kinds = {"flow": "flow", "gen_flow": "flow"}
    started = {r.spec_name for r in runs if r.kind == kinds.get(by_name[r.spec_name].kind, "task")}
    assert set(attempts) <= started
    deadline = time.monotonic() + 2.0  # task runners shut down when their flow ends
    while _run_threads() - baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _run_threads() - baseline


def _run_threads() -> set[threading.Thread]:
    """Threads but the process-wide ones started once on first use (deadline timer, kernel
    loop, store writer)."""
    once = ("asyncflow-deadlines", "asyncflow-kernel", "asyncflow-store")
    return {t for t in threading.enumerate() if not t.name.startswith(once)}


def _all_sync(node: SyncNode) -> list[SyncNode]:
    return [node, *(n for child in node.children for n in _all_sync(child))]
