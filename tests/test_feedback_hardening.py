"""Issue 10, item by item, on SQLite and PostgreSQL: hostile input gets a 4xx (never a 500) and changes nothing.

Every rejected request is checked three ways: its status code, the row counts of every table
(the store is unchanged), and a full export afterwards (one stored bad string used to break it).
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from alignloop.cli.main import app as cli
from alignloop.config import FeedbackConfig
from alignloop.errors import AlignloopError
from alignloop.feedback import auth, routes_labeler
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient, FeedbackError
from alignloop.feedback.edge import SECURITY_HEADERS
from alignloop.feedback.models import Base
from feedback_fixtures import database_url, pg_database, pg_url, ranking_items, service  # noqa: F401

GUIDE = "Rank the completions, best first."
HEADER_NAMES = [name.decode() for name, _ in SECURITY_HEADERS]


def counts(url: str) -> dict[str, int]:
    """Rows per table, for 'nothing changed' checks: the whole store but the login throttle's counters
    (counting a refused attempt there is the point of item 4)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
            if t.name != "login_throttle"
        }
    engine.dispose()
    return out


def export_works(svc) -> None:
    """Every dataset exports (200, every line JSON) and the labeler's views still load."""
    for dataset in ("sft", "rm"):
        resp = svc.http.get(f"/api/admin/export?dataset={dataset}", headers=_bearer(svc.admin.token))
        assert resp.status_code == 200, resp.text
        for line in resp.text.splitlines():
            json.loads(line)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(service) -> dict[str, Any]:
    """A demonstration and a ranking campaign, each item assigned to labeler 'lab', one label of each stored."""
    svc = service
    lab = svc.labeler("lab")
    demo = svc.admin.create_campaign("demo", "demonstration", "Write the answer.")
    svc.admin.upload_items(demo["id"], [{"prompt_id": f"d{i}", "prompt": f"Say {i}."} for i in range(2)])
    rank = svc.admin.create_campaign("rank", "ranking", GUIDE, allow_ties=True)
    svc.admin.upload_items(rank["id"], ranking_items(2, k=4))
    svc.admin.assign(demo["id"])
    svc.admin.assign(rank["id"])
    tasks = {t["task_type"]: [] for t in lab.tasks()}
    for t in lab.tasks():
        tasks[t["task_type"]].append(t["assignment_id"])
    lab.submit(tasks["demonstration"][0], {"text": "A fine answer."})
    lab.submit(tasks["ranking"][0], {"order": [1, 0, 2, 3]})
    return {
        "lab": lab,
        "demo": tasks["demonstration"][1],
        "rank": tasks["ranking"][1],
        "campaigns": (demo["id"], rank["id"]),
    }


def _raw(svc, method: str, path: str, body: str, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"} | (_bearer(token) if token else {})
    return svc.http.request(method, path, content=body.encode(), headers=headers)


# -- item 1: lone surrogates (and NUL) never reach the store ------------------------------------------------
def test_item1_lone_surrogate_or_nul_in_any_string_is_422_and_export_keeps_working(service, world):
    svc, lab = service, world["lab"]
    before = counts(svc.url)
    hostile = [
        ("POST", f"/api/tasks/{world['demo']}/label", '{"text": "x \\ud800"}', lab.token),
        ("POST", f"/api/tasks/{world['demo']}/label", '{"text": "x \\udc00 y"}', lab.token),
        ("POST", f"/api/tasks/{world['demo']}/label", '{"text": "x \\u0000"}', lab.token),
        ("POST", f"/api/tasks/{world['demo']}/skip", '{"reason": "\\ud83d"}', lab.token),
        ("POST", "/api/admin/campaigns", '{"name": "\\ud800", "task_type": "thumbs", "guidelines": "g"}', None),
        (
            "POST",
            f"/api/admin/campaigns/{world['campaigns'][1]}/items",
            '{"items": [{"prompt_id": "p", "prompt": "q", "completions": ["a", "b", "c", "\\udfff"]}]}',
            None,
        ),
        ("POST", "/api/admin/groups", '{"name": "g", "\\u0000": 1}', None),
    ]
    for method, path, body, token in hostile:
        resp = _raw(svc, method, path, body, token or svc.admin.token)
        assert resp.status_code == 422, (path, body, resp.text)
        assert "surrogate" in resp.json()["detail"] or "NUL" in resp.json()["detail"]
        assert resp.json()["detail"].startswith("body")  # names where it is
    # a valid surrogate *pair* is ordinary text (an emoji) and is stored
    ok = _raw(svc, "POST", f"/api/tasks/{world['demo']}/label", '{"text": "fine \\ud83d\\ude00"}', lab.token)
    assert ok.status_code == 201
    after = counts(svc.url)
    assert after["labels"] == before["labels"] + 1 and {k: v for k, v in after.items() if k != "labels"} == {
        k: v for k, v in before.items() if k != "labels"
    }
    export_works(svc)
    assert lab.task(world["demo"])["status"] == "done"
    assert len(svc.admin.labels(world["campaigns"][0])) == 2
    texts = [r["completion"] for r in svc.admin.export("sft")]
    assert "fine \U0001f600" in texts


# -- item 2: the page's logout form logs out ------------------------------------------------------------------
def _cookie_login(svc, username: str, password: str) -> str:
    svc.http.cookies.clear()
    resp = svc.http.post("/login", data={"username": username, "password": password}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    return resp.cookies[auth.SESSION_COOKIE]


def test_item2_logout_form_ends_the_session(service, world):
    svc = service
    svc.admin.create_user("paula", password="a long password")
    cookie = _cookie_login(svc, "paula", "a long password")
    svc.http.cookies.set(auth.SESSION_COOKIE, cookie)
    page = svc.http.get("/tasks")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    sessions = counts(svc.url)["login_sessions"]
    wrong = svc.http.post("/logout", data={"csrf": "not-the-token"}, follow_redirects=False)
    assert wrong.status_code == 303 and counts(svc.url)["login_sessions"] == sessions  # a forged form changes nothing
    assert svc.http.get("/api/me").status_code == 200
    resp = svc.http.post("/logout", data={"csrf": csrf}, follow_redirects=False)  # what the form sends
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    assert counts(svc.url)["login_sessions"] == sessions - 1
    svc.http.cookies.clear()
    svc.http.cookies.set(auth.SESSION_COOKIE, cookie)  # a copy of the old cookie is dead
    assert svc.http.get("/api/me").status_code == 401
    assert svc.http.get("/tasks", follow_redirects=False).headers["location"] == "/login"
    svc.http.cookies.clear()
    export_works(svc)


# -- item 3: sessions end at once on logout, password change and deactivation, in every worker ------------
def test_item3_sessions_end_on_logout_password_change_and_deactivation(service, world):
    svc = service
    svc.admin.create_user("sam", password="first password")
    other_worker = create_app(FeedbackConfig(database_url=svc.url), migrate=False)  # a second process's app
    with TestClient(other_worker) as other:

        def me(token: str) -> tuple[int, int]:
            return (
                svc.http.get("/api/me", headers=_bearer(token)).status_code,
                other.get("/api/me", headers=_bearer(token)).status_code,
            )

        s1 = FeedbackClient.login("", "sam", "first password", http=svc.http).token
        s2 = FeedbackClient.login("", "sam", "first password", http=svc.http).token
        assert me(s1) == me(s2) == (200, 200)
        assert svc.http.post("/api/logout", headers=_bearer(s1)).status_code == 204
        assert me(s1) == (401, 401) and me(s2) == (200, 200)  # logout ends that session only

        svc.admin.update_user("sam", password="second password")
        assert me(s2) == (401, 401)
        s3 = FeedbackClient.login("", "sam", "second password", http=svc.http).token
        assert me(s3) == (200, 200)
        svc.admin.update_user("sam", active=False)
        assert me(s3) == (401, 401)
        before = counts(svc.url)
        with pytest.raises(FeedbackError) as err:
            FeedbackClient.login("", "sam", "second password", http=svc.http)
        assert err.value.status == 401 and counts(svc.url) == before
    export_works(svc)


# -- item 4: logins are throttled per account and per address ----------------------------------------------
@pytest.fixture
def strict(database_url: str):
    """A service with small login limits: 3 attempts per account, 6 per address."""
    cfg = FeedbackConfig(database_url=database_url, login_attempts_per_account=3, login_attempts_per_address=6)
    app = create_app(cfg)
    admin = create_admin(database_url, "root-admin", "admin password", token=True)
    with TestClient(app) as http:
        yield app, http, admin


def test_item4_login_throttled_per_account_and_address_with_retry_after(strict, monkeypatch):
    app, http, _ = strict
    url = app.state.config.database_url
    scrypts = []
    real = auth.hashlib.scrypt
    monkeypatch.setattr(auth.hashlib, "scrypt", lambda *a, **k: scrypts.append(1) or real(*a, **k))

    def login(user: str, password: str, client: TestClient = http) -> Any:
        return client.post("/api/login", json={"username": user, "password": password})

    assert [login("root-admin", f"guess {i}").status_code for i in range(3)] == [401, 401, 401]
    before, n_scrypt = counts(url), len(scrypts)
    refused = login("root-admin", "admin password")  # even the right password: the account waits
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 900
    assert len(scrypts) == n_scrypt  # refused before any password hashing: no CPU to burn
    assert counts(url) == before
    for name in HEADER_NAMES:
        assert name in refused.headers
    # per address: other names from the same address run out too (6 attempts per address)
    assert [login(f"nobody-{i}", "x").status_code for i in range(3)] == [401, 401, 429]
    assert login("someone-else", "x").status_code == 429
    # the page form is throttled the same way
    page = http.post("/login", data={"username": "root-admin", "password": "admin password"})
    assert page.status_code == 429 and "Retry-After" in page.headers
    # from another address the account still waits (its own limit)
    with TestClient(app, client=("10.0.0.9", 4242)) as elsewhere:
        assert login("root-admin", "guess", elsewhere).status_code == 429  # the account still waits
    # a fresh window (simulated by moving the window start back) lets everyone in again
    app.state.throttle.window = 0.0
    assert login("root-admin", "admin password").status_code == 200


def test_item4_successful_login_resets_the_account(strict):
    app, http, _ = strict
    for _ in range(2):
        assert http.post("/api/login", json={"username": "root-admin", "password": "nope"}).status_code == 401
    assert http.post("/api/login", json={"username": "root-admin", "password": "admin password"}).status_code == 200
    for _ in range(3):  # the count started again after the success
        assert http.post("/api/login", json={"username": "root-admin", "password": "nope"}).status_code == 401
    assert http.post("/api/login", json={"username": "root-admin", "password": "nope"}).status_code == 429


# -- item 5: request bodies are bounded, 413 before parsing ------------------------------------------------
def test_item5_request_size_limit_answers_413_before_reading(database_url):
    cfg = FeedbackConfig(database_url=database_url, max_request_bytes=200_000, max_anonymous_request_bytes=1000)
    app = create_app(cfg)
    token = create_admin(database_url, "root-admin", token=True).token
    with TestClient(app) as http:
        before = counts(database_url)
        big_login = {"username": "x" * 2000, "password": "y"}
        resp = http.post("/api/login", json=big_login)  # anonymous: 1000 bytes at most
        assert resp.status_code == 413 and "at most 1000 bytes" in resp.json()["detail"]
        for name in HEADER_NAMES:
            assert name in resp.headers

        def chunks():
            yield b'{"items": ['
            for _ in range(100):
                yield b'"' + b"z" * 5000 + b'",'

        streamed = http.post("/api/admin/groups", content=chunks(), headers=_bearer(token))  # no Content-Length
        assert streamed.status_code == 413
        item = {"prompt_id": "p", "prompt": "q", "completions": ["w" * 250_000]}
        c = http.post(
            "/api/admin/campaigns", json={"name": "c", "task_type": "thumbs", "guidelines": "g"}, headers=_bearer(token)
        )
        assert c.status_code == 201
        assert (
            http.post(
                f"/api/admin/campaigns/{c.json()['id']}/items", json={"items": [item]}, headers=_bearer(token)
            ).status_code
            == 413
        )
        # within the byte limit but over the field limit (20,000 characters per completion): 422
        item["completions"] = ["w" * 20_001]
        resp = http.post(f"/api/admin/campaigns/{c.json()['id']}/items", json={"items": [item]}, headers=_bearer(token))
        assert resp.status_code == 422 and "completions" in resp.json()["detail"]
        assert counts(database_url) == before | {"campaigns": before["campaigns"] + 1}

    # A declared Content-Length over the limit is refused without reading a byte of the body.
    import asyncio

    read = []

    async def receive() -> dict:
        read.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/api/login", "raw_path": b"/api/login", "query_string": b"",
        "headers": [(b"content-length", str(100 * 2**20).encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http", "root_path": "",
        "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and read == []


def test_item5_default_limit_fits_a_k9_push_of_long_completions(service):
    svc = service
    long = "word " * 3_999  # ~20,000 characters: the longest completion a field takes
    items = [
        {"prompt_id": f"p{i}", "prompt": "Explain.", "completions": [f"{j} {long}" for j in range(9)]}
        for i in range(20)
    ]
    c = svc.admin.create_campaign("k9", "ranking", GUIDE, items=items)  # ~3.6 MB in one request
    assert c["n_items"] == 20 and c["created"] == 20


# -- item 6: no 500 from unvalidated input ---------------------------------------------------------------
ID_ROUTES = [
    ("GET", "/api/tasks/{}"),
    ("POST", "/api/tasks/{}/label"),
    ("POST", "/api/tasks/{}/skip"),
    ("GET", "/api/admin/campaigns/{}"),
    ("POST", "/api/admin/campaigns/{}/items"),
    ("PUT", "/api/admin/items/{}/gold"),
    ("POST", "/api/admin/campaigns/{}/assign"),
    ("GET", "/api/admin/campaigns/{}/labels"),
    ("POST", "/api/admin/campaigns/{}/screen"),
    ("GET", "/api/admin/campaigns/{}/agreement"),
]


def test_item6_unvalidated_input_gets_4xx_never_500(service, world):
    svc, lab = service, world["lab"]
    before = counts(svc.url)
    admin_h, lab_h = _bearer(svc.admin.token), _bearer(lab.token)
    for method, route in ID_ROUTES:
        h = lab_h if route.startswith("/api/tasks") else admin_h
        for bad in (2**63, 2**64 + 5, 2**31, -1, 0, "x1"):
            resp = svc.http.request(method, route.format(bad), headers=h, json={"reason": "other"})
            assert resp.status_code == 404, (route, bad, resp.text)
    for bad in (2**63, 2**31):
        assert svc.http.get(f"/tasks/{bad}", headers=lab_h).status_code == 404  # the pages too
        assert svc.http.get(f"/admin/campaigns/{bad}", headers=admin_h).status_code == 404
    for limit in (-1, 0, 10**6):
        assert svc.http.get(f"/api/tasks?limit={limit}", headers=lab_h).status_code == 422
    assert len(svc.http.get("/api/tasks?limit=1", headers=lab_h).json()["tasks"]) == 1
    item = {"prompt_id": "p", "prompt": "q", "completions": ["a", "b", "c", "d"], "user_id": "u" * 129}
    resp = svc.http.post(f"/api/admin/campaigns/{world['campaigns'][1]}/items", json={"items": [item]}, headers=admin_h)
    assert resp.status_code == 422 and "user_id" in resp.json()["detail"]
    for ref in ("²", "٣", "9" * 40, str(2**63)):
        assert svc.http.get("/api/admin/export", params={"campaign": ref}, headers=admin_h).status_code == 404
        assert svc.http.get("/api/admin/ratings", params={"campaign": ref}, headers=admin_h).status_code == 404
    assert svc.http.get("/api/admin/ratings?seed=-1", headers=admin_h).status_code == 422
    nul = [
        svc.http.post("/api/login", json={"username": "a\x00b", "password": "p"}),
        svc.http.post("/login", data={"username": "a\x00b", "password": "p"}),
        svc.http.get("/api/admin/export?campaign=%00", headers=admin_h),
        svc.http.patch("/api/admin/users/a%00b", json={"active": True}, headers=admin_h),
        svc.http.post("/api/admin/groups", json={"name": "g\x00"}, headers=admin_h),
    ]
    assert [r.status_code for r in nul] == [422] * len(nul), [r.text for r in nul]
    assert counts(svc.url) == before
    export_works(svc)


def test_item6_a_500_still_carries_the_security_headers(service, world, monkeypatch):
    svc = service

    def broken(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes_labeler, "pending_tasks", broken)
    with TestClient(svc.app, raise_server_exceptions=False) as http:
        resp = http.get("/api/tasks", headers=_bearer(world["lab"].token))
    assert resp.status_code == 500
    for name in HEADER_NAMES:
        assert name in resp.headers, name
    for resp in (
        svc.http.get("/api/tasks/99999", headers=_bearer(world["lab"].token)),  # 404
        svc.http.get("/api/me"),  # 401
        svc.http.post("/api/login", json={"nope": 1}),  # 422
        svc.http.get("/static/style.css"),
    ):
        for name in HEADER_NAMES:
            assert name in resp.headers, (resp.status_code, name)


# -- item 7: errors never echo unbounded input -------------------------------------------------------------
def test_item7_error_bodies_name_the_field_and_stay_short(service, world):
    svc, lab = service, world["lab"]
    before = counts(svc.url)
    huge_order = {"order": list(range(1_000_000))}
    resp = svc.http.post(f"/api/tasks/{world['rank']}/label", json=huge_order, headers=_bearer(lab.token))
    assert resp.status_code == 422 and len(resp.content) < 1000 and resp.json()["detail"].startswith("order")
    long_key = {"k" * 100_000: 1}
    for path, body, token in (
        ("/api/login", {"k" * 30_000: 1}, None),  # under the 64 KiB allowed without credentials
        (f"/api/tasks/{world['rank']}/label", long_key, lab.token),
        ("/api/admin/groups", {"name": "n" * 100_000}, svc.admin.token),
        ("/api/admin/campaigns", {"name": "x", "task_type": "t" * 100_000, "guidelines": "g"}, svc.admin.token),
        (f"/api/tasks/{world['rank']}/label", {"order": [0, 1, 2, 3], "ties": [list(range(10**5))]}, lab.token),
    ):
        resp = svc.http.post(path, json=body, headers=_bearer(token) if token else {})
        assert resp.status_code == 422 and len(resp.content) < 1000, (path, len(resp.content))
    assert counts(svc.url) == before
    export_works(svc)


# -- item 8: a password login costs one scrypt whatever the account ----------------------------------------
def test_item8_one_scrypt_for_every_kind_of_account(service, monkeypatch):
    """Equal work instead of a timing assertion: the request runs exactly one scrypt of the same cost."""
    svc = service
    svc.admin.create_user("tokenonly", token=True)
    svc.admin.create_user("withpass", password="right password")
    svc.admin.create_user("gone", password="right password")
    svc.admin.update_user("gone", active=False)
    calls: list[tuple] = []
    real = auth.hashlib.scrypt

    def counting(password, *, salt, n, r, p, dklen):
        calls.append((n, r, p, dklen))
        return real(password, salt=salt, n=n, r=r, p=p, dklen=dklen)

    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    before = counts(svc.url)
    for name in ("tokenonly", "withpass", "gone", "no-such-user", "root-admin"):
        calls.clear()
        resp = svc.http.post("/api/login", json={"username": name, "password": "wrong password"})
        assert resp.status_code == 401
        assert calls == [(2**14, 8, 1, 32)], name
    assert counts(svc.url) == before


# -- item 9: the token cache is bounded --------------------------------------------------------------------
def test_item9_bogus_bearer_tokens_do_not_grow_the_cache(service, world):
    svc = service
    authn = svc.app.state.auth
    authn._tokens.size = 16
    for i in range(60):
        assert svc.http.get("/api/me", headers=_bearer(f"alk_bogus{i}")).status_code == 401
    assert len(authn._tokens) <= 16
    assert world["lab"].me()["username"] == "lab"  # real tokens still work (looked up again when evicted)


# -- item 10: the smaller ones -----------------------------------------------------------------------------
def test_item10_cli_admin_create_enforces_the_password_minimum(database_url):
    from alignloop.feedback.db import migrate

    migrate(database_url)
    before = counts(database_url)
    result = CliRunner().invoke(cli, ["feedback", "admin", "create", "boss", "--password", "x", "--db", database_url])
    assert isinstance(result.exception, AlignloopError) and "at least 8 characters" in result.exception.message
    assert counts(database_url) == before
    long_name = CliRunner().invoke(cli, ["feedback", "admin", "create", "u" * 65, "--db", database_url])
    assert isinstance(long_name.exception, AlignloopError) and "username: 1 to 64" in long_name.exception.message
    assert counts(database_url) == before  # refused alike on SQLite (which would store it) and PostgreSQL
    ok = CliRunner().invoke(
        cli, ["feedback", "admin", "create", "boss", "--password", "8 chars!", "--db", database_url]
    )
    assert ok.exit_code == 0 and counts(database_url)["users"] == before["users"] + 1


def test_item10_full_tie_and_repeated_tie_are_refused_with_clear_messages(service, world):
    svc, lab = service, world["lab"]
    before = counts(svc.url)
    cases = [
        ({"order": [0, 1, 2, 3], "ties": [[0, 1, 2, 3]]}, "every completion is tied"),
        ({"order": [0, 1, 2, 3], "ties": [[0, 0]]}, "names completion 0 twice"),
        ({"order": [0, 1, 2, 3], "ties": [[3, 2, 1, 0]]}, "every completion is tied"),
    ]
    for answer, message in cases:
        with pytest.raises(FeedbackError) as err:
            lab.submit(world["rank"], answer)
        assert err.value.status == 422 and message in str(err.value)
    with pytest.raises(FeedbackError) as err:  # gold answers go through the same check
        svc.admin.set_gold(1, {"text": "x", "order": [0]})
    assert err.value.status in (404, 422)
    assert counts(svc.url) == before
    assert lab.submit(world["rank"], {"order": [0, 1, 2, 3], "ties": [[0, 1], [2, 3]]})["status"] == "done"
    export_works(svc)


def test_item10_a_push_that_fails_validation_leaves_nothing(service, world):
    svc = service
    before = counts(svc.url)
    bad = [["a", "b", "c", "d"], ["only", "three", "completions"]]
    with pytest.raises(FeedbackError) as err:
        svc.admin.push_comparisons(["Prompt one?", "Prompt two?"], bad, campaign="half")
    assert err.value.status == 422 and "items[1].completions" in str(err.value)
    assert counts(svc.url) == before and "half" not in {c["name"] for c in svc.admin.campaigns()}
    cid = svc.admin.push_comparisons(["Prompt one?"], bad[:1], campaign="whole")
    assert svc.admin.campaign(cid)["n_items"] == 1
    export_works(svc)


def test_item10_model_text_is_bidi_isolated_on_the_pages(service):
    svc = service
    svc.admin.create_user("rtl", password="a long password")
    evil = "Good answer \u202eredaeh eht ni"
    c = svc.admin.create_campaign("bidi", "ranking", GUIDE)
    svc.admin.upload_items(
        c["id"], [{"prompt_id": "p", "prompt": f"Prompt {evil}", "completions": [evil, "b", "c", "d"]}]
    )
    svc.admin.assign(c["id"])
    cookie = _cookie_login(svc, "rtl", "a long password")
    svc.http.cookies.set(auth.SESSION_COOKIE, cookie)
    listing = svc.http.get("/tasks").text
    assert re.search(r"<bdi>Prompt Good answer \u202e", listing)
    aid = re.search(r'href="/tasks/(\d+)"', listing).group(1)
    page = svc.http.get(f"/tasks/{aid}").text
    assert re.search(r'<pre [^>]*dir="auto"[^>]*>Good answer \u202e', page)  # the completion
    assert re.search(r'<pre class="text" id="prompt-text" dir="auto">Prompt Good answer \u202e', page)
    svc.http.cookies.clear()
