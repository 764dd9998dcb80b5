"""`asyncflow serve FILE[:FLOW] --name N --cron ... --param k=v`: serve a flow of a Python
file as a deployment, as `flow.serve(...)` does, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import one_line
from asyncflow.cli._run import (
    add_param_option,
    coerce_params,
    find_flow,
    load_file,
    parse_params,
    split_target,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    serve = commands.add_parser("serve", help="serve a flow of a Python file as a deployment")
    serve.add_argument("target", metavar="FILE[:FLOW]", help="e.g. path/to/file.py:my_flow")
    serve.add_argument("--name", metavar="NAME", help="deployment name (default: the flow's)")
    serve.add_argument("--cron", action="append", metavar="EXPR", help="a cron schedule")
    serve.add_argument(
        "--interval", action="append", type=float, metavar="SECONDS", help="an interval schedule"
    )
    serve.add_argument("--rrule", action="append", metavar="RRULE", help="an RFC 5545 RRULE")
    serve.add_argument("--timezone", metavar="TZ", help="of the schedules, e.g. Europe/Paris")
    add_param_option(serve, "a default parameter (repeatable); VALUE is read as JSON if it parses")
    serve.add_argument("--tag", action="append", metavar="TAG", help="a tag of its runs")
    serve.add_argument("--description", metavar="TEXT")
    serve.add_argument("--version", dest="deployment_version", metavar="TEXT")
    serve.add_argument("--limit", type=int, default=8, metavar="N", help="runs at once (8)")
    serve.add_argument(
        "--concurrency-limit", type=int, metavar="N", help="runs at once over all servers"
    )
    serve.add_argument(
        "--catchup", choices=("latest", "none", "all"), default="latest", help="default: latest"
    )
    serve.add_argument(
        "--overlap", choices=("allow", "skip", "buffer_one"), default="allow", help="default: allow"
    )
    serve.add_argument("--paused", action="store_true", help="register it paused")
    serve.add_argument(
        "--grace-period", type=float, default=8.0, metavar="SECONDS", help="at shutdown (8)"
    )
    serve.add_argument(
        "--pause-on-shutdown", action="store_true", help="pause its schedules when stopping"
    )
    serve.add_argument(
        "--isolation", choices=("inline", "process"), default="inline",
        help="run each run in this process (default) or in a process of its own",
    )  # fmt: skip
    return serve  # type: ignore[no-any-return]


def serve(args: argparse.Namespace) -> int:
    from asyncflow.deployments.serve import serve as serve_deployments

    path_text, name = split_target(args.target)
    flow = find_flow(load_file(path_text), name, path_text)
    parameters = coerce_params(flow, parse_params(args.param or []))
    try:
        deployment = flow.to_deployment(
            args.name,
            cron=args.cron,
            interval=args.interval,
            rrule=args.rrule,
            timezone=args.timezone,
            parameters=parameters,
            tags=args.tag,
            description=args.description,
            version=args.deployment_version,
            paused=True if args.paused else None,
            concurrency_limit=args.concurrency_limit,
            catchup=args.catchup,
            overlap=args.overlap,
        )
        serve_deployments(
            deployment,
            limit=args.limit,
            grace_period=args.grace_period,
            pause_on_shutdown=args.pause_on_shutdown,
            isolation=args.isolation,
        )
    except (ValueError, TypeError) as exc:
        raise CLIError(one_line(str(exc))) from None
    return 0


__all__ = ["add_parser", "serve"]
