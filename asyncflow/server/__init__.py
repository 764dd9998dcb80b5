"""`asyncflow server`: an HTTP API over the run store (extra `[server]`: Starlette and
uvicorn). `create_app(store=...)` is an ASGI app to run with any ASGI server or to mount in
an existing app; `asyncflow server start` serves it with uvicorn.

With a token (`token=`, `ASYNCFLOW_SERVER_TOKEN`, `--token`), every route but
`/api/health` needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import AsyncIterator
from typing import Any

#: The environment variable a server's token is read from when none is given.
TOKEN_ENV = "ASYNCFLOW_SERVER_TOKEN"
#: Routes open without the token.
OPEN_PATHS = frozenset({"/api/health"})


def create_app(store: Any = None, *, token: str | None = None) -> Any:
    """The ASGI app over `store`: a store URL (as for ASYNCFLOW_STORE), a store object
    (`asyncflow.store.open_store(...)`), or None for the configured store. `token`: the
    bearer token its routes need (default: $ASYNCFLOW_SERVER_TOKEN; none when unset)."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse
    except ImportError:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "asyncflow's server needs the [server] extra: pip install 'asyncflow[server]'"
        ) from None
    from asyncflow.server.api import ROUTES, ApiError

    opened = None
    if store is None or isinstance(store, str):
        from asyncflow.store import open_store

        store = opened = open_store(store)
    secret = token if token is not None else os.environ.get(TOKEN_ENV) or None

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if opened is not None:  # (a store given as an object stays its owner's)
                opened.close()

    app = Starlette(
        routes=ROUTES,
        exception_handlers={ApiError: api_error},
        middleware=[Middleware(_TokenCheck, token=secret)] if secret else [],
        lifespan=lifespan,
    )
    app.state.store = store
    return app


class _TokenCheck:
    """Every request but OPEN_PATHS carries `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        detail = "a bearer token is needed" if not given else "the token is not this server's"
        response = JSONResponse(
            {"detail": f"Unauthorized: {detail} (Authorization: Bearer <token>)."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


__all__ = ["OPEN_PATHS", "TOKEN_ENV", "create_app"]
