"""The feedback service as one FastAPI application: API, pages, static files.

``create_app`` wires a database, the authenticator and the routers. ``app_from_env`` is the
factory uvicorn workers import (``alignloop serve`` runs the migrations once in the parent and
passes the database URL in ``ALIGNLOOP_FEEDBACK_DB``), so every worker shares one database and
one signing key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from alignloop.config import FeedbackConfig
from alignloop.feedback import api_docs, auth, db, pages, routes_admin, routes_console, routes_labeler, routes_people

ENV_DATABASE = "ALIGNLOOP_FEEDBACK_DB"

SECURITY_HEADERS = [
    # Our own script file only: no inline script can run, whatever ends up in a page.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every response (plain ASGI: no per-request overhead to speak of)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(config: FeedbackConfig | None = None, *, migrate: bool = True) -> FastAPI:
    """The service for ``config.database_url``; ``migrate`` applies pending migrations first."""
    config = config or FeedbackConfig()
    if migrate:
        db.migrate(config.database_url)
    database = db.Database(config.database_url)
    db.check_schema(database)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        database.dispose()

    app = FastAPI(
        title="alignloop feedback service",
        version="1",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: served offline by api_docs instead
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.db = database
    app.state.auth = auth.Authenticator(database, db.secret(database))
    app.state.campaigns = {}  # campaign id -> form settings (campaigns are immutable)

    @app.exception_handler(RequestValidationError)
    async def _422(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/login")
    def login(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Exchange a username and password, or an API token, for a session token."""
        extra = sorted(set(body) - {"username", "password", "token"})
        if extra:
            raise HTTPException(422, f"{extra[0]}: not a login field (send username and password, or token)")
        authn: auth.Authenticator = request.app.state.auth
        if isinstance(body.get("token"), str):
            user = authn.login_token(body["token"])
        elif isinstance(body.get("username"), str) and isinstance(body.get("password"), str):
            user = authn.login_password(body["username"], body["password"])
        else:
            raise HTTPException(422, "body: send {username, password} or {token}")
        if user is None:
            raise HTTPException(401, "wrong username, password or token")
        token = authn.issue(user.id, user.role)
        return {"token": token, "username": user.username, "role": user.role, "expires_in": auth.SESSION_SECONDS}

    @app.get("/api/me")
    def me(user: auth.Principal = Depends(auth.anyone)) -> dict[str, Any]:
        return {"id": user.user_id, "username": user.username, "role": user.role, "group": user.group}

    app.include_router(routes_labeler.router)
    app.include_router(routes_people.router)
    app.include_router(routes_admin.router)
    api_docs.mount(app)
    app.include_router(routes_console.pages)  # before pages.router: /admin/campaigns/new is not a campaign id
    app.include_router(routes_console.actions)
    app.include_router(pages.router)
    static = resources.files("alignloop.feedback") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(SecurityHeaders)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: the database comes from ``$ALIGNLOOP_FEEDBACK_DB`` (already migrated)."""
    url = os.environ.get(ENV_DATABASE)
    if not url:
        raise RuntimeError(f"set {ENV_DATABASE} to the feedback database URL")
    return create_app(FeedbackConfig(database_url=url), migrate=False)
