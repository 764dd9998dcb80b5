"""The server's token check and the UI's session and CSRF tokens.

With a token, an API request carries `Authorization: Bearer <token>` and a UI request
that or the session cookie the login form sets (an HMAC of the token, so the cookie never holds the
token itself and every session ends when the token changes). Every POST of the UI carries
a CSRF token derived from a per-app secret, with or without a server token: a page of
another site cannot read it. A POST that a browser sends from a page of another origin is
refused outright (its `Origin` header), on the API too, so another site cannot make a
browser start or cancel runs here, not even on a server open on localhost without a token.
(Without a token, the CSRF secret is made per process: serve the UI from one process.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import quote

#: The environment variable a server's token is read from when none is given.
TOKEN_ENV = "ASYNCFLOW_SERVER_TOKEN"
#: Routes open without the token.
OPEN_PATHS = frozenset({"/api/health", "/login", "/static/app.css", "/static/app.js"})
#: The UI's session cookie.
COOKIE = "asyncflow_session"
#: The form field a UI POST carries its CSRF token in.
CSRF_FIELD = "csrf_token"


class Auth:
    """What a request must show: a bearer token or a session cookie (none when `token`
    is None), and the CSRF token the UI's forms carry."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("The server's token is empty: give a real one, or None for none.")
        self.token = token
        key = secrets.token_bytes(32) if token is None else token.encode()
        self._bearer = f"Bearer {token}".encode() if token is not None else None
        self._session = hmac.new(key, b"asyncflow session", hashlib.sha256).hexdigest()
        self.csrf = hmac.new(key, b"asyncflow csrf", hashlib.sha256).hexdigest()

    def login(self, given: str) -> str | None:
        """The session cookie's value for a right token, None for a wrong one."""
        if self.token is None or hmac.compare_digest(given.encode(), self.token.encode()):
            return self._session
        return None

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def allows(self, scope: Any) -> bool:
        path = route_path(scope)
        if self._bearer is None or path in OPEN_PATHS:
            return True
        headers = dict(scope["headers"])
        if hmac.compare_digest(headers.get(b"authorization", b""), self._bearer):
            return True
        if path.startswith("/api/"):  # (the API takes no cookie: no CSRF there)
            return False
        return hmac.compare_digest(_cookie(headers.get(b"cookie", b"")), self._session.encode())


def route_path(scope: Any) -> str:
    """The request's path within the app (without the prefix it is mounted at)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _foreign(scope: Any) -> bool:
    """A POST a browser sent from a page of another origin (its Origin is not this
    server's). Clients that are not browsers send no Origin."""
    headers = dict(scope["headers"])
    origin = headers.get(b"origin")
    if scope.get("method") != "POST" or origin is None:
        return False
    came_from = origin.split(b"://", 1)[-1]
    # (behind a proxy that rewrites Host, the browser's origin is the forwarded host)
    return came_from not in (headers.get(b"host"), headers.get(b"x-forwarded-host"))


class TokenCheck:
    """ASGI middleware: a request `Auth` does not allow gets a 401 (API) or is sent to
    the login form (UI); a POST from another origin gets a 403, token or not."""

    def __init__(self, app: Any, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse, RedirectResponse, Response

        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # (none is served: refuse rather than pass)
            if not self.auth.allows(scope):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if _foreign(scope):
            refused = Response("Forbidden: a request from another site.", status_code=403)
            await refused(scope, receive, send)
            return
        if self.auth.allows(scope):
            await self.app(scope, receive, send)
            return
        response: Response
        path = route_path(scope)
        if path.startswith("/api/"):
            given = dict(scope["headers"]).get(b"authorization")
            detail = "a bearer token is needed" if not given else "the token is not this server's"
            response = JSONResponse(
                {"detail": f"Unauthorized: {detail} (Authorization: Bearer <token>)."},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif scope.get("method") == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            root = scope.get("root_path", "")
            response = RedirectResponse(
                f"{root}/login?next={quote(target, safe='')}", status_code=303
            )
        else:
            response = Response("Unauthorized: log in first (/login).", status_code=401)
        await response(scope, receive, send)


def _cookie(header: bytes) -> bytes:
    for part in header.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return value
    return b""


__all__ = ["COOKIE", "CSRF_FIELD", "OPEN_PATHS", "TOKEN_ENV", "Auth", "TokenCheck", "route_path"]
