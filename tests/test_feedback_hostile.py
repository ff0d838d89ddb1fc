"""Issue 10's hostile checks against a real ``alignloop serve --workers 2``, on SQLite and PostgreSQL.

The in-process tests (test_feedback_hardening.py) check each item; this one checks what only a
multi-process server shows: the login throttle and session revocation hold across workers (their
state is in the database, not in one process), and an oversized body is refused from its header
before the server reads it.
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import os
import signal
import socket

import httpx

from alignloop.feedback.accounts import create_admin
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.db import migrate
from alignloop.feedback.edge import SECURITY_HEADERS
from feedback_fixtures import database_url, free_port, pg_database, pg_url  # noqa: F401
from test_feedback_reliability import start_server


def _fresh(base: str, method: str, path: str, **kw) -> httpx.Response:
    """One request on a new connection, so requests spread over the workers."""
    with httpx.Client(base_url=base, timeout=30) as http:
        return http.request(method, path, **kw)


def test_hostile_checks_hold_across_two_workers(database_url):
    migrate(database_url)
    admin = create_admin(database_url, "boss", "boss password", token=True)
    port = free_port()
    proc = start_server(database_url, port)
    base = f"http://127.0.0.1:{port}"
    try:
        boss = FeedbackClient(base, admin.token)
        lab_token = boss.create_user("lab", password="labeler password", token=True)["token"]
        c = boss.create_campaign("demo", "demonstration", "Write it.", items=[{"prompt_id": "p", "prompt": "Hi?"}])
        boss.assign(c["id"])
        aid = FeedbackClient(base, lab_token).tasks()[0]["assignment_id"]

        # item 4: 10 attempts per account (the default), counted by both workers together
        statuses = [
            _fresh(base, "POST", "/api/login", json={"username": "boss", "password": f"guess {i}"}).status_code
            for i in range(14)
        ]
        assert statuses == [401] * 10 + [429] * 4
        refused = _fresh(base, "POST", "/api/login", json={"username": "boss", "password": "boss password"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0

        # item 3: logout ends the session in every worker at once
        session = _fresh(base, "POST", "/api/login", json={"username": "lab", "password": "labeler password"})
        auth = {"Authorization": f"Bearer {session.json()['token']}"}
        assert [_fresh(base, "GET", "/api/me", headers=auth).status_code for _ in range(6)] == [200] * 6
        assert _fresh(base, "POST", "/api/logout", headers=auth).status_code == 204
        assert [_fresh(base, "GET", "/api/me", headers=auth).status_code for _ in range(6)] == [401] * 6

        # item 5: a 100 MB anonymous body is refused from its Content-Length, before the server reads it
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n{"
            )
            head = sock.recv(65536).decode("latin-1").lower()
        assert head.startswith("http/1.1 413")
        for name, _ in SECURITY_HEADERS:
            assert name.decode() in head

        # items 1 and 6: no 500, and the export still works
        lab = {"Authorization": f"Bearer {lab_token}"}
        body = b'{"text": "x \\ud800"}'
        json_lab = lab | {"Content-Type": "application/json"}
        assert _fresh(base, "POST", f"/api/tasks/{aid}/label", content=body, headers=json_lab).status_code == 422
        assert _fresh(base, "POST", "/api/login", json={"username": "a\x00", "password": "p"}).status_code == 422
        assert _fresh(base, "GET", f"/api/tasks/{2**63}", headers=lab).status_code == 404
        assert _fresh(base, "GET", "/api/tasks?limit=-1", headers=lab).status_code == 422
        assert FeedbackClient(base, lab_token).submit(aid, {"text": "A real answer."})["status"] == "done"
        assert [r["completion"] for r in boss.export("sft")] == ["A real answer."]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
