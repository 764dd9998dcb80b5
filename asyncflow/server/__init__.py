"""`asyncflow server`: an HTTP API and a web UI over the run store (extra `[server]`:
Starlette, uvicorn and Jinja2). `create_app(store=...)` is an ASGI app to run with any ASGI
server or to mount in an existing app; `asyncflow server start` serves it with uvicorn.

With a token (`token=`, `ASYNCFLOW_SERVER_TOKEN`, `--token`), every route but
`/api/health` needs it: `Authorization: Bearer <token>` for the API, the session cookie of
the login form (`/login`) for the UI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from asyncflow.server.auth import OPEN_PATHS, TOKEN_ENV


def create_app(
    store: Any = None, *, token: str | None = None, allowed_hosts: list[str] | None = None
) -> Any:
    """The ASGI app over `store`: a store URL (as for ASYNCFLOW_STORE), a store object
    (`asyncflow.store.open_store(...)`), or None for the configured store. `token`: what
    its routes need (default: $ASYNCFLOW_SERVER_TOKEN; none when unset). `allowed_hosts`:
    the Host names it answers (others get 400: DNS rebinding), default any."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse
    except ImportError:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "asyncflow's server needs the [server] extra: pip install 'asyncflow[server]'"
        ) from None
    from asyncflow.server import api, ui
    from asyncflow.server.auth import Auth, TokenCheck

    auth = Auth(token if token is not None else os.environ.get(TOKEN_ENV) or None)
    opened = None
    if store is None or isinstance(store, str):
        from asyncflow.store import open_store

        store = opened = open_store(store)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, api.ApiError)
        body = (
            {"detail": exc.detail}
            if exc.error is None
            else {"detail": exc.detail, "error": exc.error}
        )
        return JSONResponse(body, status_code=exc.status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if opened is not None:  # (a store given as an object stays its owner's)
                opened.close()

    middleware = [Middleware(TokenCheck, auth=auth)]
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=[*api.ROUTES, *ui.ROUTES],
        exception_handlers={api.ApiError: api_error, **ui.HANDLERS},
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.auth = auth
    return app


__all__ = ["OPEN_PATHS", "TOKEN_ENV", "create_app"]
