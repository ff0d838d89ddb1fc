"""Labelers and admins in Debian's Chromium: what protects data quality, and the admin console.

- An untouched ranking (the shuffled order, Enter pressed) is refused; the labeler must place every
  completion or tick the confirmation.
- A campaign that rates every completion first: Likert per completion by keyboard, then the ranking;
  both are stored in one label.
- An admin creates a campaign from a JSONL file, assigns it, sees a labeler's progress change after
  they label, and reads the disagreement view.

Screenshots land in docs/screenshots/ (labeler and admin pages).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.models import Label
from feedback_fixtures import live_server, ranking_items
from test_feedback_browser import CHROMIUM, _display, _focused, _launch

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
LONG = " ".join(f"Sentence {i} of a long answer that shows how long completions are folded." for i in range(12))


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / name)


def _login(page, base: str, username: str, password: str, landing: str) -> None:
    page.goto(f"{base}/login")
    page.wait_for_selector('input[name="username"]:focus')
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}{landing}")


def _labels(url: str) -> list[dict]:
    engine = create_engine(url)
    with engine.connect() as conn:
        payloads = conn.execute(select(Label.payload).order_by(Label.id)).scalars().all()
    engine.dispose()
    return list(payloads)


def _counts(row) -> tuple[str, str]:
    return row.locator("td.pending").text_content(), row.locator("td.done").text_content()


def _wait_next_task(page, selector: str) -> None:
    """After "Saved", wait for the *next* task page (not the old one still on screen) to be ready."""
    old = page.locator("#task").get_attribute("data-assignment")
    page.wait_for_function(
        "old => { const m = document.getElementById('task'); return m && m.dataset.assignment !== old; }", arg=old
    )
    page.wait_for_selector(selector)


def _place(page, target: list[int]) -> None:
    """Keyboard only: highlight each completion of ``target`` in turn and press its place."""
    for place, completion in enumerate(target):
        position = _display(page).index(completion)
        key = "ArrowDown" if position > _focused(page) else "ArrowUp"
        for _ in range(abs(position - _focused(page))):
            page.keyboard.press(key)
        page.keyboard.press(str(place + 1))


def test_untouched_ranking_is_refused_and_completions_are_rated_first(tmp_path):
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    app = create_app(FeedbackConfig(database_url=url))
    token = create_admin(url, "boss", token=True).token
    with live_server(app) as base:
        admin = FeedbackClient(base, token)
        admin.create_user("lena", password="lena-secret-pw")
        plain = admin.create_campaign("plain", "ranking", "Rank the answers, most helpful first.")
        admin.upload_items(plain["id"], ranking_items(2, prefix="plain"))
        admin.assign(plain["id"])
        rated = admin.create_campaign("rated", "ranking", "Rate each answer, then rank them.", rate_completions=True)
        nine = ranking_items(1, k=9, prefix="nine")
        nine[0]["completions"] = [f"Answer {j}. {LONG}" for j in range(9)]
        admin.upload_items(rated["id"], nine)
        admin.assign(rated["id"])

        with sync_playwright() as pw:
            browser = _launch(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            _login(page, base, "lena", "lena-secret-pw", "/tasks")
            page.goto(f"{base}/tasks/next")
            page.wait_for_selector('main[data-ready="1"] li.completion.focused')
            assert page.locator("#n-done").text_content() == "0" and page.locator("#n-remaining").text_content() == "3"
            assert page.locator("section.keys").is_visible()  # the shortcuts are above the fold
            assert page.locator("section.keys").bounding_box()["y"] < 300

            # 1. Enter on the untouched, shuffled order: refused, nothing stored
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.error")
            assert page.locator("#status").text_content().startswith("Place every completion before submitting: 4 not")
            assert page.locator("li.completion .place").all_text_contents() == ["?", "?", "?", "?"]
            _place(page, [2, 0])  # two placed: still refused, two to go
            page.keyboard.press("Enter")
            assert "2 not placed yet" in page.locator("#status").text_content()
            assert _labels(url) == []
            _place(page, [2, 0, 3])  # the fourth places itself: its place is the only one left
            assert page.locator("li.completion .place").all_text_contents() == ["1", "2", "3", "4"]
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")
            assert _labels(url) == [{"order": [2, 0, 3, 1], "ties": []}]

            # 2. the next one is confirmed as shown, with the box (an explicit decision)
            _wait_next_task(page, 'main[data-ready="1"] li.completion.focused')
            assert page.locator("#n-done").text_content() == "1"
            shown = _display(page)
            page.locator("#confirm-order").check()
            page.locator("li.completion").first.click()
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")
            assert _labels(url)[1] == {"order": shown, "ties": []}

            # 3. K = 9 long answers, rated one by one (Likert by digit) before ranking
            _wait_next_task(page, 'main[data-ready="1"][data-stage="rate"] li.completion.focused')
            assert page.locator("ol.completions.cards pre.text.clamp").count() == 9  # folded to their first lines
            assert page.locator("li.completion").nth(8).bounding_box()["y"] < 1600  # 9 cards, no endless scroll
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.error")
            assert "Rate every completion first: 9" in page.locator("#status").text_content()
            order = _display(page)
            scores = {c: 7 - (c % 7) for c in order}  # completion index -> Likert
            for c in order:  # each digit rates the highlighted card and moves on to the next unrated one
                page.keyboard.press(str(scores[c]))
            page.keyboard.press("f")  # flags of the highlighted card (still the last one rated)
            page.keyboard.press("Space")  # ticks its first flag
            page.keyboard.press("e")  # unfold the highlighted card
            assert page.locator("li.completion.focused pre.text.clamp").count() == 0
            _shot(page, tmp_path, "labeler_rate_k9.png")
            page.keyboard.press("r")
            page.wait_for_selector('main[data-stage="rank"]')
            _place(page, list(range(8)))
            _shot(page, tmp_path, "labeler_rank_k9.png")
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")
            page.wait_for_url(f"{base}/tasks")
            browser.close()

    stored = _labels(url)[2]
    assert stored["order"] == list(range(9)) and stored["ties"] == []
    assert [r["likert"] for r in stored["ratings"]] == [scores[c] for c in range(9)]
    flagged = [i for i, r in enumerate(stored["ratings"]) if any(r["flags"].values())]
    assert flagged == [order[-1]] and stored["ratings"][order[-1]]["flags"]["fails_to_follow_instruction"]


def test_admin_creates_assigns_watches_progress_and_reads_disagreement(tmp_path):
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    app = create_app(FeedbackConfig(database_url=url))
    create_admin(url, "boss", password="boss-password-1", token=False)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in ranking_items(3, prefix="q")), encoding="utf-8")
    with live_server(app) as base:
        with sync_playwright() as pw:
            browser = _launch(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            _login(page, base, "boss", "boss-password-1", "/admin")

            # labelers and a group, made in the console
            page.goto(f"{base}/admin/people")
            page.wait_for_selector('main[data-ready="1"]')
            page.fill("#group-name", "team-a")
            page.click("text=Create group")
            page.wait_for_selector("#console-status.ok")
            assert page.locator("#console-status").text_content() == "group 'team-a' created"
            for name in ("ann", "bob"):
                page.fill("#new-username", name)
                page.fill("#new-password", f"{name}-password")
                page.select_option("#new-group", "team-a")
                page.click("text=Create labeler")
                page.wait_for_function(
                    "n => document.getElementById('console-status').textContent.includes(n)", arg=repr(name)
                )
                page.wait_for_selector('main[data-ready="1"]')

            # a campaign from a file; a bad file first: the error names the line, nothing is created
            bad = tmp_path / "bad.jsonl"
            bad.write_text('{"prompt_id": "x", "prompt": "p", "completions": ["a", "b"]}\n', encoding="utf-8")
            page.goto(f"{base}/admin/campaigns/new")
            page.wait_for_selector('main[data-ready="1"]')
            page.set_input_files("#campaign-file", str(bad))
            page.fill("#campaign-name", "helpfulness")
            page.fill("#campaign-guidelines", "Rank the answers, most helpful first.")
            page.fill("#campaign-overlap", "2")
            page.uncheck("#campaign-assign")
            page.click("text=Create campaign")
            page.wait_for_selector("#console-status.error")
            said = page.locator("#console-status").text_content()
            assert "completions: a ranking task takes 4 to 9 completions, got 2" in said
            _shot(page, tmp_path, "admin_new_campaign.png")
            page.set_input_files("#campaign-file", str(items))
            page.click("text=Create campaign")
            page.wait_for_url("**/manage")
            page.wait_for_selector("#console-status.ok")
            assert page.locator("#console-status").text_content() == "campaign 'helpfulness' created with 3 items"

            # assign it from its page
            page.fill("#assign-groups", "team-a")
            page.click("button:has-text('Assign')")
            page.wait_for_selector("#console-status.ok")
            assert page.locator("#console-status").text_content() == "assigned 6 tasks to 2 labelers (overlap 2)"
            ann_row = page.locator('#campaign-progress tr[data-labeler="ann"]')
            assert _counts(ann_row) == ("3", "0")

            # the labelers work (through the API, as a script would), the admin's page shows it
            ann = FeedbackClient.login(base, "ann", "ann-password")
            bob = FeedbackClient.login(base, "bob", "bob-password")
            for t in sorted(ann.tasks(), key=lambda t: t["assignment_id"])[:2]:
                ann.submit(t["assignment_id"], {"order": [0, 1, 2, 3]})
            for i, t in enumerate(sorted(bob.tasks(), key=lambda t: t["assignment_id"])[:2]):
                bob.submit(t["assignment_id"], {"order": [3, 2, 1, 0] if i == 0 else [0, 1, 3, 2]})
            page.reload()
            page.wait_for_selector('main[data-ready="1"]')
            assert _counts(ann_row) == ("1", "2")
            _shot(page, tmp_path, "admin_campaign_progress.png")

            # the disagreement view: q0 (opposite orders) first, then q1 (one swapped pair)
            page.click("text=Disagreement")
            page.wait_for_selector("#disagreement")
            rows = page.locator("#disagreement tbody tr")
            assert rows.count() == 2
            assert rows.nth(0).locator("td").nth(0).text_content() == "q0"
            assert rows.nth(0).locator("td").nth(1).text_content() == "100 %"
            assert rows.nth(1).locator("td").nth(1).text_content() == "17 %"
            _shot(page, tmp_path, "admin_disagreement.png")
            page.goto(f"{base}/admin/people")
            page.wait_for_selector("#progress-table")
            _shot(page, tmp_path, "admin_people.png")
            page.goto(f"{base}/admin/campaigns/1/labels")
            _shot(page, tmp_path, "admin_labels.png")
            browser.close()


def test_api_docs_render_offline_from_the_packaged_swagger_ui(tmp_path):
    """/api/docs shows every route with no network: Swagger UI comes from swagger-ui-bundle, under our CSP."""
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    app = create_app(FeedbackConfig(database_url=url))
    with live_server(app) as base, sync_playwright() as pw:
        browser = _launch(pw)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())  # offline
        page.goto(f"{base}/api/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert "/api/tasks/{assignment_id}/label" in [p.replace("\u200b", "") for p in paths]
        assert not [e for e in errors if "Content Security Policy" in e and "script" in e]
        browser.close()
