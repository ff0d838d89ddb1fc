"""Server-rendered pages: model text escaped, login and roles enforced, every form rendered, admin views."""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import pytest

from alignloop.data.records import METADATA_FLAGS
from alignloop.feedback.auth import SESSION_COOKIE
from feedback_fixtures import database_url, pg_database, pg_url, ranking_items, service  # noqa: F401

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
XSS = "<script>alert('owned')</script><img src=x onerror=alert(1)>"


def _login_cookie(svc, username: str, password: str) -> str:
    resp = svc.http.post("/login", data={"username": username, "password": password}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    return resp.cookies[SESSION_COOKIE]


def _page(svc, path: str, cookie: str | None):
    svc.http.cookies.clear()
    if cookie:
        svc.http.cookies.set(SESSION_COOKIE, cookie)
    try:
        return svc.http.get(path, follow_redirects=False)
    finally:
        svc.http.cookies.clear()


@SQLITE_ONLY
def test_script_in_model_text_renders_as_text(service):
    svc = service
    svc.admin.create_user("lab", password="labeler-password")
    c = svc.admin.create_campaign("x", "ranking", "Guidelines <i>stay</i> text too.")
    item = {"prompt_id": "p", "prompt": "Prompt " + XSS, "completions": ["fine", XSS, "ok", "meh"]}
    svc.admin.upload_items(c["id"], [item])
    svc.admin.assign(c["id"])
    cookie = _login_cookie(svc, "lab", "labeler-password")
    tasks = _page(svc, "/tasks", cookie)
    assert tasks.status_code == 200 and "&lt;script&gt;" in tasks.text and "<script>alert" not in tasks.text
    aid = svc.http.get("/api/tasks", headers={"Authorization": f"Bearer {cookie}"}).json()["tasks"][0]["assignment_id"]
    page = _page(svc, f"/tasks/{aid}", cookie)
    html = page.text
    assert page.status_code == 200
    assert "<script>alert" not in html and "<img src=x" not in html and "<i>stay</i>" not in html
    assert html.count("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") == 2
    assert "Guidelines &lt;i&gt;stay&lt;/i&gt; text too." in html
    assert html.count("<script") == 1 and '<script src="/static/label.js"></script>' in html  # ours only
    assert "script-src 'self'" in page.headers["content-security-policy"]


@SQLITE_ONLY
def test_pages_need_login_and_the_right_role(service):
    svc = service
    svc.admin.create_user("lab", password="labeler-password")
    svc.admin.create_user("boss2", role="admin", password="admin-password")
    assert _page(svc, "/tasks", None).headers["location"] == "/login"
    assert _page(svc, "/admin", None).headers["location"] == "/login"
    lab, boss = _login_cookie(svc, "lab", "labeler-password"), _login_cookie(svc, "boss2", "admin-password")
    assert _page(svc, "/admin", lab).status_code == 403
    assert _page(svc, "/tasks", boss).status_code == 403
    assert _page(svc, "/", lab).headers["location"] == "/tasks"
    assert _page(svc, "/", boss).headers["location"] == "/admin"
    assert _page(svc, "/tasks/999", lab).status_code == 404
    bad = svc.http.post("/login", data={"username": "lab", "password": "nope-nope"}, follow_redirects=False)
    assert bad.status_code == 401 and "Wrong username or password" in bad.text


@SQLITE_ONLY
def test_every_form_renders_with_its_inputs(service):
    svc = service
    svc.admin.create_user("lab", password="labeler-password")
    forms = {
        "demonstration": ([], 'id="demonstration"', 1),
        "best_pick": (["a", "b", "c"], 'class="completion"', 3),
        "thumbs": (["a"], 'name="thumb"', 2),
        "rating": (["a"], 'class="flag"', len(METADATA_FLAGS)),
        "rule_violations": (["a", "b"], 'class="violation"', 2 * 2),
    }
    for task_type, (completions, _, _) in forms.items():
        kw = {"rules": ["is rude", "is false"]} if task_type == "rule_violations" else {}
        c = svc.admin.create_campaign(task_type, task_type, f"Guidelines for {task_type}.", **kw)
        svc.admin.upload_items(c["id"], [{"prompt_id": task_type, "prompt": "Hi", "completions": completions}])
        svc.admin.assign(c["id"])
    cookie = _login_cookie(svc, "lab", "labeler-password")
    tasks = svc.http.get("/api/tasks", headers={"Authorization": f"Bearer {cookie}"}).json()["tasks"]
    assert len(tasks) == len(forms)
    for t in tasks:
        html = _page(svc, f"/tasks/{t['assignment_id']}", cookie).text
        _, marker, count = forms[t["task_type"]]
        assert html.count(marker) == count, t["task_type"]
        assert f"Guidelines for {t['task_type']}." in html
        assert '<option value="intent unclear">' in html  # skipping with a reason is always offered


@SQLITE_ONLY
def test_admin_pages_show_progress_agreement_and_outliers(service):
    svc = service
    svc.admin.create_user("boss2", role="admin", password="admin-password")
    labs = [svc.labeler(f"r{i}") for i in range(4)]
    c = svc.admin.create_campaign("agree", "ranking", "Rank.", overlap=4)
    svc.admin.upload_items(c["id"], ranking_items(4, 4))
    svc.admin.assign(c["id"])
    for i, lab in enumerate(labs):
        order = [3, 2, 1, 0] if i == 3 else [0, 1, 2, 3]  # r3 disagrees with everyone
        for t in lab.tasks():
            lab.submit(t["assignment_id"], {"order": order})
    boss = _login_cookie(svc, "boss2", "admin-password")
    overview = _page(svc, "/admin", boss).text
    assert "agree" in overview and "r3" in overview
    page = _page(svc, f"/admin/campaigns/{c['id']}", boss).text
    assert 'id="pairwise-agreement">50.0 %' in page  # r0-r2 agree on all 6 pairs, r3 on none: 3 of 6 labeler pairs
    assert page.count('class="outlier"') == 1 and "r3" in page.split('class="outlier"')[1][:40]
    assert "Bradley-Terry" in page and "sft" in page and "ppo" in page
