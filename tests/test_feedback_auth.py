"""Roles and logins: every API route refuses the wrong role; passwords and tokens are hashed; CSRF for cookies."""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.auth import SESSION_COOKIE
from alignloop.feedback.client import FeedbackClient, FeedbackError
from alignloop.feedback.models import ApiToken, User
from feedback_fixtures import database_url, pg_database, pg_url, service  # noqa: F401

ADMIN, LABELER, ANYONE, PUBLIC = "admin", "labeler", "anyone", "public"
#: Every route of the API and who may call it. A route missing here fails test_route_table_is_complete.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("POST", "/api/login"): PUBLIC,
    ("GET", "/api/me"): ANYONE,
    ("POST", "/api/logout"): ANYONE,
    ("GET", "/api/tasks"): LABELER,
    ("GET", "/api/tasks/{assignment_id}"): LABELER,
    ("POST", "/api/tasks/{assignment_id}/label"): LABELER,
    ("POST", "/api/tasks/{assignment_id}/skip"): LABELER,
    ("POST", "/api/admin/users"): ADMIN,
    ("GET", "/api/admin/users"): ADMIN,
    ("PATCH", "/api/admin/users/{username}"): ADMIN,
    ("POST", "/api/admin/users/{username}/tokens"): ADMIN,
    ("POST", "/api/admin/groups"): ADMIN,
    ("GET", "/api/admin/groups"): ADMIN,
    ("POST", "/api/admin/campaigns"): ADMIN,
    ("GET", "/api/admin/campaigns"): ADMIN,
    ("GET", "/api/admin/campaigns/{campaign_id}"): ADMIN,
    ("POST", "/api/admin/campaigns/{campaign_id}/items"): ADMIN,
    ("PUT", "/api/admin/items/{item_id}/gold"): ADMIN,
    ("POST", "/api/admin/campaigns/{campaign_id}/assign"): ADMIN,
    ("GET", "/api/admin/campaigns/{campaign_id}/labels"): ADMIN,
    ("POST", "/api/admin/campaigns/{campaign_id}/screen"): ADMIN,
    ("GET", "/api/admin/campaigns/{campaign_id}/agreement"): ADMIN,
    ("GET", "/api/admin/ratings"): ADMIN,
    ("GET", "/api/admin/export"): ADMIN,
}
PROTECTED = sorted((m, p, role) for (m, p), role in ROUTES.items() if role in (ADMIN, LABELER))


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    """One SQLite service with an admin and a labeler (role checks do not depend on the database)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('roles') / 'feedback.db'}"
    app = create_app(FeedbackConfig(database_url=url))
    admin_token = create_admin(url, "boss", token=True).token
    with TestClient(app) as http:
        admin = FeedbackClient(token=admin_token, http=http)
        lab_token = admin.create_user("worker", token=True)["token"]
        yield app, http, {ADMIN: admin_token, LABELER: lab_token}


def _call(http: TestClient, method: str, path: str, token: str | None):
    url = path.replace("{assignment_id}", "1").replace("{campaign_id}", "1").replace("{item_id}", "1")
    url = url.replace("{username}", "worker")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.request(method, url, headers=headers, json={} if method in ("POST", "PUT", "PATCH") else None)


def test_route_table_is_complete(roles):
    app, _, _ = roles
    served = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    assert served == set(ROUTES)


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_wrong_role_and_anonymous_are_refused(roles, method, path, role):
    _, http, tokens = roles
    wrong = LABELER if role == ADMIN else ADMIN
    resp = _call(http, method, path, tokens[wrong])
    assert resp.status_code == 403, resp.text
    assert f"this route is for {role}s" in resp.json()["detail"]
    assert _call(http, method, path, None).status_code == 401
    assert _call(http, method, path, "1.labeler.99999999999.forged").status_code == 401


def test_me_for_both_roles(roles):
    _, http, tokens = roles
    for role, token in tokens.items():
        assert _call(http, "GET", "/api/me", token).json()["role"] == role


def test_password_and_token_login_hashed_at_rest(service):
    svc = service
    svc.admin.create_user("pat", password="correct horse battery", token=False)
    with pytest.raises(FeedbackError) as err:
        FeedbackClient.login("", "pat", "wrong password!", http=svc.http)
    assert err.value.status == 401
    pat = FeedbackClient.login("", "pat", "correct horse battery", http=svc.http)
    assert pat.me()["username"] == "pat"
    api_token = svc.admin.create_token("pat")
    session = svc.http.post("/api/login", json={"token": api_token}).json()["token"]
    assert FeedbackClient(token=session, http=svc.http).me()["username"] == "pat"
    assert FeedbackClient(token=api_token, http=svc.http).me()["role"] == "labeler"
    engine = create_engine(svc.url)
    with engine.connect() as conn:
        stored = conn.execute(select(User.password_hash).where(User.username == "pat")).scalar_one()
        hashes = conn.execute(select(ApiToken.token_hash)).scalars().all()
    engine.dispose()
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert api_token not in hashes and len(hashes) == 2 and all(len(h) == 64 for h in hashes)


def test_deactivated_user_is_locked_out(service):
    svc = service
    svc.app.state.auth.cache_seconds = 0.0
    lab = svc.labeler("gone")
    assert lab.me()["username"] == "gone"
    svc.admin.update_user("gone", active=False)
    with pytest.raises(FeedbackError) as err:
        lab.me()
    assert err.value.status == 401


def test_expired_or_tampered_session_token(service):
    svc = service
    authn = svc.app.state.auth
    uid = svc.admin.me()["id"]
    expired = authn.issue(uid, seconds=-1)
    assert svc.http.get("/api/me", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    good = authn.issue(uid)
    assert svc.http.get("/api/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    body, _, sig = good.rpartition(".")
    sid, exp = body.split(".")
    tampered = f"{sid}.{int(exp) + 3600}.{sig}"
    assert svc.http.get("/api/me", headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    assert svc.http.get("/api/me", headers={"Authorization": "Bearer ünïcode.x".encode("latin-1")}).status_code == 401
    # well signed, but the body is not "session.expiry": refused (401), never a 500
    for odd in ("", "x", "a.b.c", "." * 5, "1." + "9" * 5000, "sid.-5", "sid.1e9"):
        forged = f"{odd}.{authn._sign(odd)}"
        assert svc.http.get("/api/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401, odd


def test_cookie_session_needs_csrf_token_to_change_state(service):
    svc = service
    svc.admin.create_user("cookie", password="a long password")
    c = svc.admin.create_campaign("t", "thumbs", "Is it good?")
    svc.admin.upload_items(c["id"], [{"prompt_id": "x", "prompt": "Hi", "completions": ["Hello"]}])
    svc.admin.assign(c["id"])
    http = svc.http
    http.cookies.clear()
    resp = http.post("/login", data={"username": "cookie", "password": "a long password"}, follow_redirects=False)
    assert resp.status_code == 303 and SESSION_COOKIE in resp.cookies
    session = resp.cookies[SESSION_COOKIE]
    http.cookies.set(SESSION_COOKIE, session)
    tasks = http.get("/api/tasks").json()["tasks"]
    aid = tasks[0]["assignment_id"]
    refused = http.post(f"/api/tasks/{aid}/label", json={"up": True})
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
    csrf = svc.app.state.auth.csrf(session)
    ok = http.post(f"/api/tasks/{aid}/label", json={"up": True}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    http.cookies.clear()
