"""The `asyncflow` command: browse the run history and run flows from files.

    asyncflow runs ls [--flow NAME] [--state STATE] [--kind flow|task|all] [--limit N] [--json]
    asyncflow runs inspect RUN [--json]
    asyncflow runs tree RUN [--json]
    asyncflow run path/to/file.py:flow_name [--param k=v ...] [--json]

`--store URL` (before or after the subcommand) picks the store; by default it comes from
ASYNCFLOW_STORE / ASYNCFLOW_HOME. Errors are one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import one_line
from asyncflow.exceptions import ServerUnavailable, StoreError

__all__ = ["CLIError", "main"]

PROG = "asyncflow"


def _store_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help="run store: a SQLite file path, sqlite:///path, postgresql://..., or 'memory' "
        "(default: ASYNCFLOW_STORE, else the SQLite file under ASYNCFLOW_HOME)",
    )


def build_parser() -> argparse.ArgumentParser:
    from asyncflow import __version__
    from asyncflow.cli._run import add_param_option

    parser = argparse.ArgumentParser(
        prog=PROG, description="Browse asyncflow's run history and run flows from files."
    )
    parser.add_argument("--version", action="version", version=f"asyncflow {__version__}")
    _store_option(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    runs = commands.add_parser("runs", help="list and inspect recorded runs")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)

    ls = runs_commands.add_parser("ls", help="list runs, newest first")
    ls.add_argument("--flow", metavar="NAME", help="only runs of this flow (or task) name")
    ls.add_argument("--state", help="only runs whose state type is this (e.g. failed, completed)")
    ls.add_argument("--kind", choices=("flow", "task", "all"), default="flow", help="default: flow")
    ls.add_argument("--since", metavar="WHEN", help="only runs created since: 30m, 2h, 1d, a date")
    ls.add_argument("--limit", type=int, default=20, metavar="N", help="default: 20")

    inspect = runs_commands.add_parser(
        "inspect", help="a run's details: states, parameters, parent and children"
    )
    inspect.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")

    tree = runs_commands.add_parser("tree", help="a run with every run nested under it")
    tree.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")

    result = runs_commands.add_parser("result", help="a run's persisted result")
    result.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")

    cache = commands.add_parser("cache", help="list and clear cache records")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    cache_ls = cache_commands.add_parser("ls", help="list cache records, newest first")
    cache_clear = cache_commands.add_parser("clear", help="delete cache records (files and rows)")
    for sub in (cache_ls, cache_clear):
        sub.add_argument("--task", metavar="NAME", help="only records of this task")
        sub.add_argument("--flow", metavar="NAME", help="only records made in runs of this flow")
        sub.add_argument("--key", metavar="PREFIX", help="only keys starting with PREFIX")
        sub.add_argument("--older-than", metavar="AGE", help="only records older than 30m, 7d...")
        sub.add_argument(
            "--all", action="store_true", help="every persisted result, not only cache records"
        )
    cache_clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    retry = runs_commands.add_parser(
        "retry", help="run a failed, crashed or cancelled flow run again (same run id)"
    )
    retry.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    retry.add_argument(
        "--entrypoint", metavar="FILE:FLOW", help="where the flow is (default: as recorded)"
    )
    retry.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="for async flows"
    )

    cancel = runs_commands.add_parser(
        "cancel", help="cancel a run, whichever process runs it (a scheduled one never starts)"
    )
    cancel.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")

    deployments = commands.add_parser("deployments", help="list and manage deployments")
    deployment_commands = deployments.add_subparsers(
        dest="deployments_command", metavar="COMMAND", required=True
    )
    dep_ls = deployment_commands.add_parser("ls", help="list deployments")
    dep_subs = [dep_ls]
    for verb, text in (
        ("inspect", "a deployment's details and its next scheduled slots"),
        ("pause", "pause a deployment's schedules"),
        ("resume", "resume a deployment's schedules"),
        ("delete", "delete a deployment (its runs stay)"),
    ):
        sub = deployment_commands.add_parser(verb, help=text)
        sub.add_argument("name", metavar="NAME", help="'flow name/deployment name'")
        dep_subs.append(sub)
    dep_subs[-1].add_argument("--yes", action="store_true", help="do not ask")
    dep_run = deployment_commands.add_parser("run", help="start a run of a deployment")
    dep_run.add_argument("name", metavar="NAME", help="'flow name/deployment name'")
    add_param_option(
        dep_run, "a parameter (repeatable); VALUE is read as JSON if the parameter takes that"
    )
    dep_run.add_argument("--wait", action="store_true", help="wait for the run to end")
    dep_run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="with --wait: wait at most this long"
    )
    dep_run.add_argument("--idempotency-key", metavar="KEY", help="the same key: the same run")
    dep_run.add_argument("--tag", action="append", metavar="TAG", help="a tag of the run")
    dep_run.add_argument("--run-name", metavar="NAME", help="the flow run's name")
    dep_subs.append(dep_run)

    variable = commands.add_parser("variable", help="set, get, list and unset variables")
    variable_commands = variable.add_subparsers(
        dest="variable_command", metavar="COMMAND", required=True
    )
    var_set = variable_commands.add_parser("set", help="set a variable")
    var_set.add_argument("name", metavar="NAME")
    var_set.add_argument("value", metavar="VALUE", help="read as JSON if it parses, else text")
    var_set.add_argument("--tag", action="append", metavar="TAG", help="a tag (repeatable)")
    var_set.add_argument("--overwrite", action="store_true", help="replace an existing one")
    var_get = variable_commands.add_parser("get", help="print a variable's value")
    var_get.add_argument("name", metavar="NAME")
    var_ls = variable_commands.add_parser("ls", help="list variables")
    var_unset = variable_commands.add_parser("unset", help="delete a variable")
    var_unset.add_argument("name", metavar="NAME")

    from asyncflow.cli import _serve, _server

    serve = _serve.add_parser(commands)
    server_start = _server.add_parser(commands)

    run = commands.add_parser("run", help="run a flow from a Python file")
    run.add_argument("target", metavar="FILE[:FLOW]", help="e.g. path/to/file.py:my_flow")
    add_param_option(
        run, "a flow parameter (repeatable); VALUE is read as JSON if it parses, else a string"
    )
    run.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="for async flows"
    )

    variable_subs = (var_set, var_get, var_ls, var_unset)
    for sub in (
        ls,
        inspect,
        tree,
        result,
        retry,
        cancel,
        run,
        cache_ls,
        cache_clear,
        *variable_subs,
        *dep_subs,
    ):
        sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
        _store_option(sub, argparse.SUPPRESS)
    _store_option(serve, argparse.SUPPRESS)
    _store_option(server_start, argparse.SUPPRESS)
    for sub in (ls, inspect, tree):
        sub.add_argument(
            "--show-secrets",
            action="store_true",
            help="show parameters named like secrets (password, token, api_key...) in full",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a flow run did not complete, 2 error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        if (
            args.command in ("run", "variable", "serve", "server")
            or getattr(args, "runs_command", None) == "retry"
            or getattr(args, "deployments_command", None) == "run"
        ):
            return _run_command(args)
        return _runs_command(args)
    except (CLIError, StoreError, ServerUnavailable, PermissionError) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `asyncflow runs ls | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _runs_command(args: argparse.Namespace) -> int:
    import anyio

    from asyncflow.cli import _runs
    from asyncflow.store import open_store

    Command = Callable[[Any, argparse.Namespace], Coroutine[Any, Any, int]]
    command: Command
    commands: dict[str, Command] = {
        "ls": _runs.ls,
        "inspect": _runs.inspect,
        "tree": _runs.tree,
        "result": _runs.result,
        "cancel": _runs.cancel,
    }
    if args.command == "cache":
        from asyncflow.cli import _cache

        command = _cache.ls if args.cache_command == "ls" else _cache.clear
    elif args.command == "deployments":
        from asyncflow.cli import _deployments

        command = _deployments.run
    else:
        command = commands[args.runs_command]
    from asyncflow.cli import _format

    _format.show_secrets = getattr(args, "show_secrets", False)
    missing = _missing_sqlite_file(args.store)
    if missing is not None:  # reading must not create a database (a mistyped --store, say)
        if args.command in ("cache", "deployments"):
            if args.command == "deployments" and args.deployments_command != "ls":
                raise CLIError(f"no deployment {args.name!r}: no run store at {missing}")
            print("[]" if args.json else f"Nothing recorded yet: {missing} does not exist.")
            return 0
        if args.runs_command != "ls":
            raise CLIError(f"no run {args.run!r}: no run history at {missing} (no such file)")
        print("[]" if args.json else f"No runs recorded yet: {missing} does not exist.")
        return 0
    store = open_store(args.store)
    try:
        return anyio.run(command, store, args)
    finally:
        store.close()


def _missing_sqlite_file(store: str | None) -> Path | None:
    """The SQLite file a store setting names, when that file does not exist."""
    from asyncflow.store import store_url

    url = store_url(store)
    if url is None or not url.startswith("sqlite://"):
        return None
    path = Path(url[len("sqlite://") :])
    return None if path.exists() else path


def _run_command(args: argparse.Namespace) -> int:
    from asyncflow.cli import _run
    from asyncflow.settings import reload_settings
    from asyncflow.store import open_store, store_url

    saved = os.environ.get("ASYNCFLOW_STORE")
    if args.store is not None:  # the in-process writer records to the store the settings name
        os.environ["ASYNCFLOW_STORE"] = args.store
        reload_settings()
    try:
        if store_url() is not None:
            # The writer would only log a store it cannot open: say so before running anything.
            open_store().close()
        if args.command == "variable":
            from asyncflow.cli import _variables

            return _variables.run(args)
        if args.command == "serve":
            from asyncflow.cli import _serve

            return _serve.serve(args)
        if args.command == "server":
            from asyncflow.cli import _server

            return _server.start(args)
        if args.command == "deployments":
            from asyncflow.cli import _deployments

            return _deployments.run_now(args)
        return _run.retry(args) if args.command == "runs" else _run.run(args)
    finally:
        if args.store is not None:
            if saved is None:
                os.environ.pop("ASYNCFLOW_STORE", None)
            else:
                os.environ["ASYNCFLOW_STORE"] = saved
            reload_settings()
