"""The feedback service as one FastAPI application: API, pages, static files.

``create_app`` wires a database, the authenticator and the routers. ``app_from_env`` is the
factory uvicorn workers import (``alignloop serve`` runs the migrations once in the parent and
passes the database URL in ``ALIGNLOOP_FEEDBACK_DB``), so every worker shares one database and
one signing key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignloop.config import FeedbackConfig
from alignloop.feedback import (
    api_docs,
    auth,
    db,
    edge,
    pages,
    routes_admin,
    routes_console,
    routes_labeler,
    routes_people,
)
from alignloop.feedback.throttle import Throttle, throttled_login

ENV_DATABASE = "ALIGNLOOP_FEEDBACK_DB"
ENV_CONFIG = "ALIGNLOOP_FEEDBACK_CONFIG"  # the whole FeedbackConfig as JSON, from `alignloop serve` to its workers
SECURITY_HEADERS = edge.SECURITY_HEADERS


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

    app = edge.FeedbackApp(
        title="alignloop feedback service",
        version="1",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: served offline by api_docs instead
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.db = database
    app.edge_limits = (config.max_request_bytes, config.max_anonymous_request_bytes)
    app.state.auth = auth.Authenticator(database, db.secret(database))
    app.state.throttle = Throttle(database, config)
    app.state.campaigns = {}  # campaign id -> form settings (campaigns are immutable)

    app.add_exception_handler(RequestValidationError, edge.validation_error)
    app.add_exception_handler(StarletteHTTPException, edge.http_error)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/login")
    def login(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Exchange a username and password, or an API token, for a session token."""
        extra = sorted(set(body) - {"username", "password", "token"})
        if extra:
            field = edge.clip(extra[0], 40)
            raise HTTPException(422, f"{field}: not a login field (send username and password, or token)")
        authn: auth.Authenticator = request.app.state.auth
        if isinstance(body.get("token"), str):
            user = throttled_login(request, None, lambda: authn.login_token(body["token"]))
        elif isinstance(body.get("username"), str) and isinstance(body.get("password"), str):
            name, password = body["username"], body["password"]
            user = throttled_login(request, name, lambda: authn.login_password(name, password))
        else:
            raise HTTPException(422, "body: send {username, password} or {token}")
        if user is None:
            raise HTTPException(401, "wrong username, password or token")
        token = authn.issue(user.id)
        return {"token": token, "username": user.username, "role": user.role, "expires_in": auth.SESSION_SECONDS}

    @app.post("/api/logout", status_code=204)
    def logout(request: Request, user: auth.Principal = Depends(auth.anyone)) -> None:
        """End the session this request was made with (an API token stays valid: revoke it instead)."""
        if not user.session.startswith("alk_"):
            request.app.state.auth.end_session(user.session)

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
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: the database comes from ``$ALIGNLOOP_FEEDBACK_DB`` (already migrated)."""
    url = os.environ.get(ENV_DATABASE)
    if not url:
        raise RuntimeError(f"set {ENV_DATABASE} to the feedback database URL")
    fields = json.loads(os.environ.get(ENV_CONFIG) or "{}")
    known = {f.name for f in dataclasses.fields(FeedbackConfig)}
    config = FeedbackConfig(**{k: v for k, v in fields.items() if k in known})
    return create_app(dataclasses.replace(config, database_url=url), migrate=False)
