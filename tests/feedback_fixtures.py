"""Fixtures for the feedback service tests: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL tests get a uniquely named schema of their own (created for the test, dropped after
it), so tests never see each other's rows or leave tables behind. They are skipped, with the
reason, only when no server answers on 127.0.0.1:5432 (override with ALIGNLOOP_TEST_PG).
Import the fixtures you use into the test module: ``from feedback_fixtures import service``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient

PG_URL = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_connect(url: str):
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database,
        autocommit=True, connect_timeout=3,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pg_database() -> str:
    """The PostgreSQL database tests make their schemas in; skips (saying why) when no server answers."""
    try:
        _pg_connect(PG_URL).close()
    except Exception as err:  # noqa: BLE001 - any failure to connect means "no server here"
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL} ({type(err).__name__}: {err})")
    return PG_URL


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A fresh, uniquely named schema for one test (the URL sets search_path to it), dropped afterwards."""
    schema = f"alignloop_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_connect(pg_database)
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_database}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of an empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("pg_url")


@dataclass
class Service:
    """A running app (in process) with its first admin logged in."""

    url: str
    app: Any
    http: TestClient
    admin: FeedbackClient
    labelers: dict[str, FeedbackClient] = field(default_factory=dict)

    def client(self, token: str | None = None) -> FeedbackClient:
        return FeedbackClient(token=token, http=self.http)

    def labeler(self, name: str, group: str | None = None) -> FeedbackClient:
        """A labeler account (token login) and a client speaking as them."""
        token = self.admin.create_user(name, "labeler", group=group, token=True)["token"]
        self.labelers[name] = self.client(token)
        return self.labelers[name]


@pytest.fixture
def service(database_url: str) -> Iterator[Service]:
    app = create_app(FeedbackConfig(database_url=database_url))
    admin = create_admin(database_url, "root-admin", token=True)
    with TestClient(app) as http:
        yield Service(database_url, app, http, FeedbackClient(token=admin.token, http=http))


def ranking_items(n: int, k: int = 4, prefix: str = "p") -> list[dict[str, Any]]:
    """``n`` ranking items with ``k`` distinct completions each, from two policies."""
    return [
        {
            "prompt_id": f"{prefix}{i}",
            "prompt": f"Explain topic number {i} to a child.",
            "completions": [f"Answer {j} about topic {i}." for j in range(k)],
            "sources": ["sft" if j % 2 == 0 else "ppo" for j in range(k)],
            "category": "open_qa",
        }
        for i in range(n)
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
