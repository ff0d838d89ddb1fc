"""The admin console without a browser: atomic campaign creation from a file, people, assignment,
reassignment, screening, progress, the label browser, the disagreement view and export downloads.

The browser flows (forms sent by console.js) are in test_feedback_browser.py; here the same form
endpoints are called the way console.js calls them: session cookie plus the page's CSRF token.
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import json
import re

import pytest

from alignloop.feedback.auth import SESSION_COOKIE
from alignloop.feedback.disagreement import answer_agreement, describe
from alignloop.feedback.models import Campaign
from alignloop.feedback.progress import BREAK_SECONDS, timing
from feedback_fixtures import database_url, pg_database, pg_url, ranking_items, service  # noqa: F401

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Console:
    """An admin in the browser: cookie session and the CSRF token read from a console page."""

    def __init__(self, svc) -> None:
        svc.admin.create_user("web-admin", role="admin", password="admin-password")
        resp = svc.http.post(
            "/login", data={"username": "web-admin", "password": "admin-password"}, follow_redirects=False
        )
        self.http = svc.http
        self.http.cookies.set(SESSION_COOKIE, resp.cookies[SESSION_COOKIE])
        self.csrf = re.search(r'data-csrf="([^"]+)"', self.get("/admin/people").text).group(1)

    def get(self, path: str):
        resp = self.http.get(path, follow_redirects=False)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
        return resp

    def post(self, path: str, data: dict, files: dict | None = None, status: int = 200):
        resp = self.http.post(path, data=data, files=files, headers={"X-CSRF-Token": self.csrf})
        assert resp.status_code == status, resp.text
        return resp.json()


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _campaign_form(name: str, **extra) -> dict:
    return {"name": name, "task_type": "ranking", "guidelines": "Rank them, best first.", "overlap": "2"} | extra


@SQLITE_ONLY
def test_campaign_from_file_is_atomic_and_errors_name_the_line(service):
    svc = service
    web = Console(svc)
    bad = ranking_items(3)
    bad[2]["completions"] = ["only", "two"]
    err = web.post("/admin/console/campaigns", _campaign_form("c1"), {"file": ("items.jsonl", _jsonl(bad))}, 422)
    assert err["detail"] == "items.jsonl:3: completions: a ranking task takes 4 to 9 completions, got 2"
    err = web.post(
        "/admin/console/campaigns", _campaign_form("c1"), {"file": ("items.jsonl", b'{"prompt_id": "a"}\n')}, 422
    )
    assert err["detail"] == "items.jsonl:1: field 'prompt' is required (a string)"
    err = web.post("/admin/console/campaigns", _campaign_form("c1"), {"file": ("x.jsonl", b"{nope\n")}, 422)
    assert err["detail"].startswith("x.jsonl:1: invalid JSON")
    with svc.app.state.db.read() as s:  # nothing of the failed uploads was stored, not even the campaign
        assert s.query(Campaign).count() == 0

    svc.labeler("ann")
    svc.labeler("bob")
    good = ranking_items(3) + [ranking_items(1)[0]]  # a repeated line is stored once
    out = web.post(
        "/admin/console/campaigns",
        _campaign_form("c1", rate_completions="true", assign_now="true"),
        {"file": ("items.jsonl", _jsonl(good))},
    )
    assert out["message"] == "campaign 'c1' created with 3 items; 6 tasks assigned to 2 labelers"
    cid = int(out["location"].split("/")[3])
    info = svc.admin.campaign(cid)
    assert info["rate_completions"] is True and info["n_items"] == 3 and info["assignments"] == {"pending": 6}
    page = web.get(out["location"]).text
    assert "completions rated before ranking" in page and "overlap 2" in page
    err = web.post("/admin/console/campaigns", _campaign_form("c1"), {"file": ("i.jsonl", _jsonl(good))}, 409)
    assert err["detail"] == "name: a campaign named 'c1' exists"


@SQLITE_ONLY
def test_people_progress_reassignment_labels_and_disagreement(service):
    svc = service
    web = Console(svc)
    assert web.post("/admin/console/groups", {"name": "team-a"})["message"] == "group 'team-a' created"
    out = web.post("/admin/console/users", {"username": "cara", "password": "cara-password", "group": "team-a"})
    assert out["message"] == "labeler 'cara' created in group 'team-a'"
    assert (
        "password: give 8 to 256"
        in web.post("/admin/console/users", {"username": "x", "password": "short"}, status=422)["detail"]
    )
    ann, bob = svc.labeler("ann"), svc.labeler("bob")
    c = svc.admin.create_campaign("rank", "ranking", "Rank.", overlap=2)
    svc.admin.upload_items(c["id"], ranking_items(4))
    out = web.post(f"/admin/console/campaigns/{c['id']}/assign", {"overlap": "2", "labelers": "ann, bob"})
    assert out["message"] == "assigned 8 tasks to 2 labelers (overlap 2)"

    # ann and bob answer item 0 in opposite orders, item 1 identically: item 0 tops the disagreement view
    tasks = {name: sorted(cl.tasks(), key=lambda t: t["assignment_id"]) for name, cl in (("ann", ann), ("bob", bob))}
    ann.submit(tasks["ann"][0]["assignment_id"], {"order": [0, 1, 2, 3]})
    bob.submit(tasks["bob"][0]["assignment_id"], {"order": [3, 2, 1, 0]})
    ann.submit(tasks["ann"][1]["assignment_id"], {"order": [1, 0, 2, 3]})
    bob.submit(tasks["bob"][1]["assignment_id"], {"order": [1, 0, 2, 3]})
    ann.skip(tasks["ann"][2]["assignment_id"], "intent unclear")

    page = web.get(f"/admin/campaigns/{c['id']}/manage").text
    row = re.search(r'<tr data-labeler="ann">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r'class="num (?:pending|done|skipped)">(\d+)<', row) == ["1", "2", "1"]

    page = web.get(f"/admin/campaigns/{c['id']}/disagreement").text
    items = re.findall(r'<tr class="[^"]*" data-item="(\d+)"><td>(\w+)</td>\s*<td class="num">(\d+) %', page)
    assert [(pid, pct) for _, pid, pct in items] == [("p0", "100"), ("p1", "0")]
    assert "#4 &gt; #3 &gt; #2 &gt; #1" in page and "#1 &gt; #2 &gt; #3 &gt; #4" in page

    labels = web.get(f"/admin/campaigns/{c['id']}/labels?labeler=ann").text
    assert "skipped: intent unclear" in labels and "(3 found)" in labels
    assert "(1 found)" in web.get(f"/admin/campaigns/{c['id']}/labels?status=skipped").text

    # bob's pending tasks go to cara; the labels he gave stay his
    out = web.post(f"/admin/console/campaigns/{c['id']}/reassign", {"labeler": "bob", "to": "cara"})
    assert out["message"] == "took 2 pending tasks from 'bob'; assigned 2 tasks to 1 others"
    assert len(svc.client(svc.admin.create_token("cara")).tasks()) == 2

    rows = web.http.get(f"/admin/campaigns/{c['id']}/export?dataset=rm").text.splitlines()
    assert len(rows) == 4 and {json.loads(r)["labeler_id"] for r in rows} == {"ann", "bob"}
    people = web.get("/admin/people").text
    assert re.search(r'<tr data-labeler="cara">.*?team-a', people, re.S)


@SQLITE_ONLY
def test_screening_from_the_console_shows_every_labeler_overlap_and_results(service):
    svc = service
    web = Console(svc)
    ann, bob = svc.labeler("ann"), svc.labeler("bob")
    gold = [dict(it, gold={"order": [0, 1, 2, 3]}) for it in ranking_items(2, prefix="g")]
    out = web.post(
        "/admin/console/campaigns",
        _campaign_form("screen", screening="true", assign_now="true", overlap="1"),
        {"file": ("gold.jsonl", _jsonl(gold))},
    )
    cid = int(out["location"].split("/")[3])
    assert svc.admin.campaign(cid)["overlap"] == 2  # every labeler got every item: the page says so
    assert "every labeler labels every item" in web.get(f"/admin/campaigns/{cid}").text
    for cl, order in ((ann, [0, 1, 2, 3]), (bob, [3, 2, 1, 0])):
        for t in cl.tasks():
            cl.submit(t["assignment_id"], {"order": order})
    out = web.post(f"/admin/console/campaigns/{cid}/screen", {"threshold": "0.7"})
    assert out["message"] == "screened 2 labelers at 0.70: 1 qualified"
    page = web.get(f"/admin/campaigns/{cid}/manage").text
    cells = r'<th scope="row">(\w+)</th><td class="num">(\d+)</td><td class="num">([\d.]+ %)</td><td>(\w+)</td>'
    assert re.findall(cells, page) == [("ann", "12", "100.0 %", "yes"), ("bob", "12", "0.0 %", "no")]
    assert (
        "gold agreement 0.00 below threshold 0.70" in web.get(f"/admin/campaigns/{cid}").text
    )  # Outlier column filled


def test_time_on_task_skips_breaks_and_agreement_counts_pairs():
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    times = [t0, t0 + timedelta(seconds=30), t0 + timedelta(seconds=90), t0 + timedelta(seconds=90 + BREAK_SECONDS + 1)]
    per_hour, median = timing(times)
    assert median == 45.0 and per_hour == pytest.approx(3600 * 2 / 90)
    assert timing([t0]) == (None, None)
    assert answer_agreement("ranking", [0, 1, 2, 3], [0, 1, 3, 2]) == pytest.approx(5 / 6)
    assert answer_agreement("rating", 7, 1) == 0.0
    assert describe("ranking", {"order": [2, 0, 1, 3], "ties": [[0, 1]]}, 4) == "#3 > #1 = #2 > #4"


@SQLITE_ONLY
def test_screening_tasks_come_first_for_a_labeler(service):
    svc = service
    ann = svc.labeler("ann")
    real = svc.admin.create_campaign("real", "ranking", "Rank.")
    svc.admin.upload_items(real["id"], ranking_items(2, prefix="r"))
    svc.admin.assign(real["id"])
    gold = svc.admin.create_campaign("gold", "ranking", "Rank.", screening=True)  # pushed later
    svc.admin.upload_items(gold["id"], [dict(it, gold={"order": [0, 1, 2, 3]}) for it in ranking_items(2, prefix="g")])
    svc.admin.assign(gold["id"])
    assert [t["campaign"] for t in ann.tasks()] == ["gold", "gold", "real", "real"]
    assert svc.admin.campaign(gold["id"])["overlap"] == 1  # one labeler: every item once
