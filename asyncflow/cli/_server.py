"""`asyncflow server start [--host 127.0.0.1] [--port 4300] [--store URL] [--token T]`:
serve the HTTP API (asyncflow.server) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import Any

from asyncflow.cli._errors import CLIError


def add_parser(commands: Any) -> argparse.ArgumentParser:
    server = commands.add_parser("server", help="the web UI and HTTP API over the run store")
    server_commands = server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    start = server_commands.add_parser("start", help="serve it (Ctrl-C stops)")
    start.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine)")
    start.add_argument("--port", type=int, default=4300, help="default: 4300")
    start.add_argument(
        "--token", help="the bearer token every route but /api/health needs "
        "(default: $ASYNCFLOW_SERVER_TOKEN)",
    )  # fmt: skip
    start.add_argument(
        "--insecure", action="store_true", help="allow another address than this machine's "
        "without a token",
    )  # fmt: skip
    return start  # type: ignore[no-any-return]


def start(args: argparse.Namespace) -> int:
    from asyncflow.server import TOKEN_ENV

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not _loopback(args.host) and token is None and not args.insecure:
        raise CLIError(
            f"--host {args.host} lets other machines in: give a --token (or "
            f"{TOKEN_ENV}), or --insecure to serve it without one"
        )
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be from 1 to 65535, not {args.port}")
    try:
        import uvicorn
    except ImportError:
        raise CLIError(
            "the server needs the [server] extra: pip install 'asyncflow[server]'"
        ) from None
    from asyncflow.server import create_app

    # On this machine only, answer this machine's names only: a page of another site cannot
    # reach it through a DNS name made to point here (DNS rebinding).
    hosts = ["127.0.0.1", "localhost"] if args.host in ("127.0.0.1", "localhost") else None
    app = create_app(args.store, token=token, allowed_hosts=hosts)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"asyncflow server: http://{shown}:{args.port} (the UI; the API under /api; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["add_parser", "start"]
