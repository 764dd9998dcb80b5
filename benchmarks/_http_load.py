"""A small HTTP/1.1 load generator on asyncio streams (standard library only), so both
servers of benchmarks/server.py are loaded the same way, from a process of its own.

``python benchmarks/_http_load.py URL [--method GET] [--body JSON] [--clients 50]
[--requests 2000] [--header 'Name: value']``

Each client is one keep-alive connection sending requests back to back; a request's
latency runs from its write to the last byte of its body. (httpx's pool, tried first,
serialises 50 concurrent connections: ~100 requests/s against a bare Starlette app.)
Prints one JSON line: p50/p99 in ms, requests per second, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split()[1])
    length = None
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def load(
    url: str, method: str, body: bytes | None, clients: int, total: int, headers: list[str]
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    times: list[float] = []
    errors = 0
    left = total

    async def client() -> None:
        nonlocal errors, left
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await _exchange(reader, writer, request)  # (a warm-up per connection)
            while left > 0:
                left -= 1
                started = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                times.append(time.perf_counter() - started)
                if status >= 400:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(times) or [float("nan")]
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": pick(0.5) * 1000, "p99_ms": pick(0.99) * 1000, "clients": clients,
        "requests": total, "requests_per_second": total / elapsed, "errors": errors,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", help="a JSON request body")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    body = None if args.body is None else args.body.encode()
    result = asyncio.run(
        load(args.url, args.method, body, args.clients, args.requests, args.header)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
