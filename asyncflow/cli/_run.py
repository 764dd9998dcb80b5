"""`asyncflow run FILE[:FLOW] --param k=v`: import a file, find a flow, run it; and
`asyncflow runs retry RUN`, which runs a recorded flow run again from its entrypoint."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import clip, dumps, one_line, to_jsonable
from asyncflow.exceptions import ParameterTypeError
from asyncflow.flows import Flow
from asyncflow.states import State, StateType
from asyncflow.tasks import Task

_P = inspect.Parameter


def split_target(target: str) -> tuple[str, str | None]:
    """`path/to/file.py:flow_name` -> (path, flow_name); a bare path gives (path, None)."""
    path, sep, name = target.rpartition(":")
    if not sep or "/" in name or "\\" in name:  # no colon, or a Windows drive letter
        return target, None
    if not path:
        raise CLIError(f"bad target {target!r}: expected path/to/file.py:flow_name")
    if not name:
        raise CLIError(f"bad target {target!r}: missing the flow name after ':'")
    return path, name


def add_param_option(parser: argparse.ArgumentParser, what: str) -> None:
    """The repeatable `-p/--param NAME=VALUE` option (`what`: its help text)."""
    parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help=what)


def parse_params(items: list[str]) -> dict[str, str]:
    """`["k=v", ...]` -> {k: v}; the values are still raw strings."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"bad --param {item!r}: expected NAME=VALUE, e.g. --param n=5")
        if key in params:
            raise CLIError(f"--param {key!r} given more than once")
        params[key] = value
    return params


def load_file(path_text: str) -> ModuleType:
    """Import a Python file as a module, with its directory first on sys.path."""
    path = Path(path_text)
    if not path.exists():
        raise CLIError(f"no such file: {path_text}")
    if path.is_dir():
        raise CLIError(f"{path_text} is a directory; give a Python file (path/to/file.py:flow)")
    resolved = path.resolve()
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file's sibling imports work
    stem = resolved.stem
    name = stem if stem.isidentifier() and stem not in sys.modules else _private_name(resolved)
    loader = importlib.machinery.SourceFileLoader(name, str(resolved))
    spec = importlib.util.spec_from_file_location(name, resolved, loader=loader)
    if spec is None:  # pragma: no cover - a SourceFileLoader always gives a spec
        raise CLIError(f"cannot import {path_text}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        where = f" (line {exc.lineno})" if exc.lineno else ""
        raise CLIError(f"cannot import {path_text}: SyntaxError: {exc.msg}{where}") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
        detail = one_line(str(exc)) or "(no message)"
        raise CLIError(
            f"importing {path_text} failed: {type(exc).__name__}: {detail}{where}"
        ) from None
    return module


def _private_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"_asyncflow_run_{stem}_{digest}"


def _flows_in(module: ModuleType) -> dict[str, Flow[Any, Any]]:
    return {var: obj for var, obj in vars(module).items() if isinstance(obj, Flow)}


def _describe(flows: dict[str, Flow[Any, Any]]) -> str:
    if not flows:
        return "it defines no flows"
    return "flows there: " + ", ".join(f"{var} ({f.name!r})" for var, f in flows.items())


def find_flow(module: ModuleType, name: str | None, path_text: str) -> Flow[Any, Any]:
    """The flow named by variable name, else by the flow's `name`; the only one if no name."""
    flows = _flows_in(module)
    if name is None:
        own = [f for f in flows.values() if getattr(f.fn, "__module__", None) == module.__name__]
        candidates = own or list(flows.values())
        if len(candidates) == 1:
            return candidates[0]
        raise CLIError(f"which flow in {path_text}? use {path_text}:NAME; {_describe(flows)}")
    namespace = vars(module)
    if name in namespace and isinstance(namespace[name], Flow):
        return namespace[name]  # type: ignore[no-any-return]
    by_name = list({id(f): f for f in flows.values() if f.name == name}.values())
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise CLIError(
            f"{len(by_name)} flows in {path_text} are named {name!r}; {_describe(flows)}"
        )
    if name in namespace:
        raise CLIError(f"{name!r} in {path_text} is not a flow: it is {_what(namespace[name])}")
    raise CLIError(f"no flow {name!r} in {path_text}; {_describe(flows)}")


def _what(obj: Any) -> str:
    if isinstance(obj, Task):
        return "a task (@task)"
    if inspect.isfunction(obj):
        return "a plain function (decorate it with @flow)"
    if inspect.isclass(obj):
        return f"a class ({obj.__name__})"
    if inspect.ismodule(obj):
        return "a module"
    return f"a value of type {type(obj).__name__}"


# -- parameters ---------------------------------------------------------------------------------
def _candidates(raw: str) -> list[Any]:
    """The value a `--param` string stands for: its JSON reading first, else the string."""
    try:
        decoded = json.loads(raw)
    except ValueError:
        return [raw]
    return [decoded] if decoded == raw else [decoded, raw]


def _split_call(
    flow: Flow[Any, Any], values: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional-only parameters go first as positionals; the rest are keywords."""
    kwargs = dict(values)
    args: list[Any] = []
    for pname, p in flow.signature.params.items():
        if p.kind is not _P.POSITIONAL_ONLY or pname not in kwargs:
            break
        args.append(kwargs.pop(pname))
    return tuple(args), kwargs


def _error_key(flow: Flow[Any, Any], loc: tuple[Any, ...]) -> str:
    """The `--param` name a pydantic error location points at."""
    var_kw = next((n for n, p in flow.signature.params.items() if p.kind is _P.VAR_KEYWORD), None)
    if len(loc) > 1 and loc[0] == var_kw:
        return str(loc[1])
    return str(loc[0]) if loc else ""


def _bad_keys(flow: Flow[Any, Any], exc: ParameterTypeError) -> dict[str, list[dict[str, Any]]]:
    bad: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors:
        bad.setdefault(_error_key(flow, tuple(err.get("loc", ()))), []).append(err)
    return bad


def _validate(flow: Flow[Any, Any], values: dict[str, Any]) -> None:
    args, kwargs = _split_call(flow, values)
    try:
        flow.signature.sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise CLIError(
            f"flow {flow.name!r} cannot take these parameters: {exc} "
            f"(its signature: {flow.signature.sig})"
        ) from None
    if flow.validate_parameters:
        parameters, explicit = flow.signature.bind(args, kwargs)
        flow.signature.validate(parameters, explicit, f"Flow {flow.name!r}")


def coerce_params(flow: Flow[Any, Any], raw: dict[str, str]) -> dict[str, Any]:
    """Pick, per parameter, the reading (JSON or string) that the flow's validation accepts.

    Values are tried as JSON first (`5`, `[1, 2]`, `true`, `null`), and a parameter whose
    JSON reading fails validation is retried as the plain string. The flow still validates
    (and coerces) the chosen values itself when it runs.
    """
    options = {k: _candidates(v) for k, v in raw.items()}
    chosen = {k: c[0] for k, c in options.items()}
    try:
        _validate(flow, chosen)
        return chosen
    except ParameterTypeError as exc:
        first = _bad_keys(flow, exc)
    retry = {
        k: (options[k][1] if k in first and len(options[k]) > 1 else v) for k, v in chosen.items()
    }
    if retry == chosen:
        raise CLIError(_validation_message(flow, first))
    try:
        _validate(flow, retry)
        return retry
    except ParameterTypeError as exc:
        second = _bad_keys(flow, exc)
    # Report each bad parameter by its JSON reading's error (strings are the fallback).
    errors = {k: first.get(k, errs) for k, errs in second.items()}
    raise CLIError(_validation_message(flow, errors))


def _validation_message(flow: Flow[Any, Any], errors: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for errs in errors.values():
        for err in errs:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
            text = f"{loc}: {err.get('msg', 'invalid')}"
            if "input" in err:
                text += f" (got {clip(repr(err['input']), 60)})"
            parts.append(text)
    return f"invalid parameters for flow {flow.name!r}: " + "; ".join(parts)


# -- running ------------------------------------------------------------------------------------
def _execute(flow: Flow[Any, Any], values: dict[str, Any], backend: str) -> State[Any]:
    """Run the flow to its final state (generators are drained into a list)."""
    import anyio

    args, kwargs = _split_call(flow, values)
    call: Any = flow  # the overloads do not help with a Flow[Any, Any]
    kind = flow.kind
    if kind == "sync":
        return call(*args, return_state=True, **kwargs)  # type: ignore[no-any-return]
    if kind == "async":

        async def run_async() -> State[Any]:
            return await call(*args, return_state=True, **kwargs)  # type: ignore[no-any-return]

        return anyio.run(run_async, backend=backend)
    if kind == "generator":
        return _drain(lambda: list(call(*args, **kwargs)))

    async def drain_async() -> list[Any]:
        return [item async for item in call(*args, **kwargs)]

    return _drain(lambda: anyio.run(drain_async, backend=backend))


def _drain(consume: Any) -> State[Any]:
    try:
        items = consume()
    except Exception as exc:
        return State(StateType.FAILED, message=f"{type(exc).__name__}: {exc}", data=exc)
    return State(StateType.COMPLETED, data=items)


def run(args: argparse.Namespace) -> int:
    path_text, flow_name = split_target(args.target)
    raw = parse_params(args.param or [])
    module = load_file(path_text)
    flow = find_flow(module, flow_name, path_text)
    values = coerce_params(flow, raw)
    state = _execute(flow, values, args.backend)
    return _report(args, flow, state)


def _report(args: argparse.Namespace, flow: Flow[Any, Any], state: State[Any]) -> int:
    """Print a flow run's outcome (its result, or why it did not complete); the exit code."""
    completed = state.type is StateType.COMPLETED
    result = state.data if completed else None
    run_id = state.state_details.flow_run_id
    run_name = _run_name(run_id)
    if args.json:
        print(
            dumps(
                {
                    "flow": flow.name,
                    "flow_run_id": None if run_id is None else str(run_id),
                    "flow_run_name": run_name,
                    "state": {
                        "type": state.type.value,
                        "name": state.name,
                        "message": state.message,
                    },
                    "result": to_jsonable(result) if completed else None,
                }
            )
        )
    elif completed and result is not None:
        print(result if isinstance(result, str) else repr(result))
    if not completed:
        label = f"flow run {run_name!r}" if run_name else f"flow {flow.name!r}"
        message = f": {clip(one_line(state.message), 300)}" if state.message else ""
        print(f"asyncflow: {label} ended in state {state.name}{message}", file=sys.stderr)
    return 0 if completed else 1


def retry(args: argparse.Namespace) -> int:
    """`asyncflow runs retry RUN`: run a failed flow run again, from its recorded entrypoint
    (or --entrypoint), as a new attempt of the same run."""
    import anyio

    from asyncflow.store import open_store

    store = open_store()
    try:
        try:
            run = store.read_run_sync(args.run.strip())
        except (KeyError, ValueError) as exc:
            raise CLIError(one_line(str(exc.args[0] if exc.args else exc))) from None
    finally:
        store.close()
    entrypoint = args.entrypoint or run.entrypoint
    if entrypoint is None:
        raise CLIError(
            f"{run.kind} run {run.name!r} has no recorded entrypoint (its flow is not defined "
            "at the top level of a file, or it is not a top-level flow run): pass "
            "--entrypoint FILE:FLOW"
        )
    path_text, name = split_target(entrypoint)
    module = load_entrypoint(path_text)
    flow = entrypoint_flow(module, name, path_text)
    try:
        if flow.kind == "async":

            async def again() -> State[Any]:
                return await flow.retry(run.id, return_state=True)  # type: ignore[no-any-return]

            state: State[Any] = anyio.run(again, backend=args.backend)
        else:
            state = flow.retry(run.id, return_state=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise CLIError(one_line(str(exc.args[0] if exc.args else exc))) from None
    return _report(args, flow, state)


def load_entrypoint(path_text: str) -> ModuleType:
    """The module of an entrypoint file: a module of a package is imported by its dotted
    name (its relative imports work), with the package's parent first on sys.path."""
    path = Path(path_text).resolve()
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not path.is_file():
        return load_file(path_text)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    name = ".".join(parts)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        detail = one_line(str(exc)) or "(no message)"
        what = f"importing {name} ({path_text}) failed"
        raise CLIError(f"{what}: {type(exc).__name__}: {detail}") from None


def entrypoint_flow(module: ModuleType, name: str | None, path_text: str) -> Flow[Any, Any]:
    """The flow an entrypoint names: by variable, else by the function's qualified name."""
    if name is not None and "." not in name:
        candidates = [
            f
            for f in _flows_in(module).values()
            if getattr(inspect.unwrap(f.fn), "__qualname__", None) == name
        ]
        if name not in vars(module) and len(candidates) == 1:
            return candidates[0]
    return find_flow(module, name, path_text)


def _run_name(run_id: Any) -> str | None:
    if run_id is None:
        return None
    from asyncflow.registry import locate

    found = locate(run_id)
    return None if found is None else found[0].name_of(found[1])


__all__ = [
    "add_param_option",
    "coerce_params",
    "entrypoint_flow",
    "find_flow",
    "load_entrypoint",
    "load_file",
    "parse_params",
    "retry",
    "run",
    "split_target",
]
