"""A labeler in Debian's Chromium: logs in, ranks four completions with the keyboard alone, submits, goes on.

The ranking must then be in the database, and model text containing markup must have rendered
as text (no script ran). A screenshot of the ranking page is saved under the test's tmp dir and
copied to docs/screenshots/ranking_page.png.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.models import Label
from feedback_fixtures import live_server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "ranking_page.png"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
COMPLETIONS = [
    "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "Plants eat dirt.",
    "Plants use light energy to make glucose from CO2 and water; oxygen is released as a by-product. " + HOSTILE,
    "I don't know, ask a botanist.",
]
TARGET = [0, 2, 3, 1]  # the ranking the labeler enters: completion indices, best first


def _launch(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
        ],
    )


def _display(page) -> list[int]:
    return page.locator("li.completion").evaluate_all("els => els.map(e => Number(e.dataset.index))")


def _focused(page) -> int:
    return page.locator("li.completion").evaluate_all("els => els.findIndex(e => e.classList.contains('focused'))")


def test_labeler_ranks_by_keyboard_and_ranking_is_stored(tmp_path):
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    app = create_app(FeedbackConfig(database_url=url))
    admin_token = create_admin(url, "boss", token=True).token
    with live_server(app) as base:
        admin = FeedbackClient(base, admin_token)
        admin.create_user("lena", password="lena-secret-pw")
        c = admin.create_campaign(
            "photosynthesis",
            "ranking",
            "Rank the answers from most to least helpful. Prefer answers that are correct and clear.",
        )
        item = {"prompt_id": "bio-1", "prompt": "Explain photosynthesis <b>briefly</b>.", "completions": COMPLETIONS}
        admin.upload_items(c["id"], [item])
        admin.assign(c["id"])
        for task_type in ("thumbs", "rating"):  # queued after the ranking: labeling goes on by keyboard
            t = admin.create_campaign(task_type, task_type, f"Judge the answer ({task_type}).")
            admin.upload_items(t["id"], [{"prompt_id": task_type, "prompt": "Say hi.", "completions": ["Hi!"]}])
            admin.assign(t["id"])

        with sync_playwright() as pw:
            browser = _launch(pw)
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(f"{base}/login")
            page.wait_for_selector('input[name="username"]:focus')  # autofocus lands after the first paint
            page.keyboard.type("lena")
            page.keyboard.press("Tab")
            page.keyboard.type("lena-secret-pw")
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/tasks")
            page.wait_for_selector("#start:focus")
            page.keyboard.press("Enter")  # "Start labeling" has focus
            page.wait_for_url("**/tasks/*")
            page.wait_for_selector('main[data-ready="1"] li.completion.focused')

            # Model text is shown as text: the markup is visible, nothing in it ran.
            assert page.locator("#prompt-text").text_content() == item["prompt"]
            texts = page.locator("li.completion pre.text").all_text_contents()
            assert sorted(texts) == sorted(COMPLETIONS)
            assert page.evaluate("window.__pwned") is None
            assert page.locator("li.completion img").count() == 0
            assert "Rank the answers" in page.locator(".guidelines").text_content()

            # Keyboard only: arrows move the highlight, a digit puts the highlighted completion at that place.
            for place, completion in enumerate(TARGET):
                position = _display(page).index(completion)
                key = "ArrowDown" if position > _focused(page) else "ArrowUp"
                for _ in range(abs(position - _focused(page))):
                    page.keyboard.press(key)
                page.keyboard.press(str(place + 1))
                assert _display(page)[place] == completion
            assert _display(page) == TARGET
            assert page.locator("li.completion .place").all_text_contents() == ["1", "2", "3", "4"]

            shot = tmp_path / "ranking_page.png"
            page.screenshot(path=str(shot), full_page=True)
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")  # the page says "Saved" once the server answered 201
            assert page.locator("#status").text_content().startswith("Saved")

            page.wait_for_selector('main[data-ready="1"] input[name="thumb"]')  # the next task opens by itself
            page.keyboard.press("d")
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")
            page.wait_for_selector('main[data-ready="1"] input[name="likert"]')
            page.keyboard.press("6")
            page.keyboard.press("Enter")
            page.wait_for_selector("#status.ok")
            page.wait_for_url(f"{base}/tasks")  # nothing left
            browser.close()

    assert shot.stat().st_size > 10_000
    DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, DOCS_SHOT)

    engine = create_engine(url)
    with engine.connect() as conn:
        payloads = conn.execute(select(Label.payload).order_by(Label.id)).scalars().all()
    engine.dispose()
    assert payloads[0] == {"order": TARGET, "ties": []}
    assert payloads[1] == {"up": False}
    assert payloads[2]["likert"] == 6 and not any(payloads[2]["flags"].values())
