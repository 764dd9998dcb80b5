"""The package's import graph: no cycles (function-level imports count), and each floor
imports nothing above it. Read from the source with `ast`, so it checks every import,
including those a test run never executes; imports under `if TYPE_CHECKING:` do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import asyncflow

PACKAGE = Path(asyncflow.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(
                sub.lineno for sub in ast.walk(node) if isinstance(sub, ast.Import | ast.ImportFrom)
            )
    return lines


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (the most specific module each names)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
                continue
            targets = _targets(name, path.name == "__init__.py", node)
            names = [t for t in targets[:-1] if t in modules] if len(targets) > 1 else []
            if not names:  # `from x import y` where y is not a module: x itself
                target = targets[-1]
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                names = [target] if target in modules else []
            graph[name].update(n for n in names if n != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def test_the_checker_sees_a_cycle() -> None:
    """The checker itself: a made-up graph with a cycle through a function-level import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The lowest floor: it imports nothing but itself.
LOWEST = {
    "asyncflow._awaiting",
    "asyncflow._signals",
    "asyncflow.backend",
    "asyncflow.exceptions",
    "asyncflow.settings",
    "asyncflow.states",
    "asyncflow.registry",
    "asyncflow.engine.context",
    "asyncflow.annotations",
    "asyncflow.context",
    "asyncflow.task_runners.base",
}
#: What the engine must not reach: persistence, the API objects, the CLI.
ABOVE_ENGINE = {
    "asyncflow",
    "asyncflow.flows",
    "asyncflow.tasks",
    "asyncflow.cli",
    "asyncflow.store",
    "asyncflow.store.writer",
    "asyncflow.store.sqlite",
    "asyncflow.store.postgres",
    "asyncflow.store.spill",
}


def test_each_floor_imports_nothing_above_it() -> None:
    graph = import_graph()
    for module in sorted(LOWEST):
        assert _closure(graph, module) <= LOWEST, (module, _closure(graph, module) - LOWEST)
    engine = (
        "asyncflow.engine.entry",
        "asyncflow.engine.run",
        "asyncflow.engine.lifecycle",
        "asyncflow.engine.drivers",
        "asyncflow.engine.submission",
    )
    for module in engine:
        reached = _closure(graph, module) & ABOVE_ENGINE
        assert not reached, (module, reached)
    for backend in ("asyncflow.store.sqlite", "asyncflow.store.postgres"):
        reached = _closure(graph, backend)
        assert "asyncflow.store.writer" not in reached, backend
        assert not any(m.startswith("asyncflow.engine") for m in reached), backend


PUBLIC = [
    "Flow",
    "FutureList",
    "PrefectFuture",
    "State",
    "StateType",
    "Task",
    "TaskRunFuture",
    "allow_failure",
    "as_completed",
    "aserve",
    "cancel_run",
    "flow",
    "get_run_logger",
    "opaque",
    "quote",
    "runtime",
    "serve",
    "tags",
    "task",
    "unmapped",
    "wait",
]


def test_public_api_is_pinned_and_importable() -> None:
    """`asyncflow.__all__` is exactly this list (a change here is a change of the public
    surface), and every name in it is there."""
    assert sorted(asyncflow.__all__) == PUBLIC
    for name in asyncflow.__all__:
        assert getattr(asyncflow, name) is not None, name


#: Modules users import from: each says what it exports, and all of it is there.
PUBLIC_MODULES = [
    "asyncflow.annotations",
    "asyncflow.context",
    "asyncflow.exceptions",
    "asyncflow.flows",
    "asyncflow.futures",
    "asyncflow.logging",
    "asyncflow.settings",
    "asyncflow.states",
    "asyncflow.tasks",
    "asyncflow.task_runners",
    "asyncflow.task_runners.base",
    "asyncflow.task_runners.threads",
    "asyncflow.task_runners.processes",
    "asyncflow.store",
    "asyncflow.runtime",
    "asyncflow.results",
    "asyncflow.results.cache_policies",
    "asyncflow.cache_policies",
    "asyncflow.results.serializers",
    "asyncflow.results.storage",
]


def test_every_public_module_declares_its_exports() -> None:
    import importlib

    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        for attr in exported:
            assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it lacks"


def test_no_private_name_is_imported_from_another_module() -> None:
    """`from asyncflow.x import _y` across modules: a private name shared is a public one."""
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncflow"):
                same_package = (node.module or "").rsplit(".", 1)[0] == name.rsplit(".", 1)[0]
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and not same_package:
                        offenders.append(f"{name}: from {node.module} import {alias.name}")
    assert offenders == []
