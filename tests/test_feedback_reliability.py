"""No label is lost: concurrent labelers, the server killed with SIGKILL mid-load, restarted, retries land once.

The service runs as a real ``alignloop serve`` subprocess. Every submission the server
acknowledged before the kill must be in the database afterwards with the answer that was sent;
submissions in flight at the kill are retried after the restart and stored exactly once.
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine, select

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.db import migrate
from alignloop.feedback.models import Assignment, Label
from feedback_fixtures import database_url, free_port, live_server, pg_database, pg_url, ranking_items  # noqa: F401

N_LABELERS, N_ITEMS, OVERLAP = 4, 40, 2


def start_server(url: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alignloop.cli.main", "serve", "--db", url, "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"alignloop serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("alignloop serve did not start within 60 s")


class Labeler(threading.Thread):
    """Submits its tasks one after another; stops at the first connection error (the server died)."""

    def __init__(self, base: str, token: str, tasks: list[int], seed: int) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.tasks = base, token, list(tasks)
        rng = random.Random(seed)
        self.answers = {aid: rng.sample(range(4), 4) for aid in tasks}
        self.acked: dict[int, int] = {}  # assignment -> HTTP status (201 new, 200 retry)
        self.in_flight: int | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as http:
            for aid in [a for a in self.tasks if a not in self.acked]:
                self.in_flight = aid
                try:
                    resp = http.post(f"/api/tasks/{aid}/label", json={"order": self.answers[aid]})
                except httpx.HTTPError:
                    return
                assert resp.status_code in (200, 201), resp.text
                self.acked[aid] = resp.status_code
                self.in_flight = None


def _stored(url: str) -> dict[int, list[int]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Label.assignment_id, Label.payload)).all()
        pending = conn.execute(select(Assignment.id).where(Assignment.status == "pending")).all()
    engine.dispose()
    stored = {aid: payload["order"] for aid, payload in rows}
    assert len(stored) == len(rows), "two labels for one assignment"
    return stored | {"pending": len(pending)}


@pytest.mark.slow
def test_no_label_lost_when_killed_under_load(database_url):
    url = database_url
    migrate(url)
    admin_token = create_admin(url, "boss", token=True).token
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(url, port)
    try:
        admin = FeedbackClient(base, admin_token)
        tokens = [admin.create_user(f"lab{i}", token=True)["token"] for i in range(N_LABELERS)]
        c = admin.create_campaign("load", "ranking", "Rank them.", overlap=OVERLAP)
        admin.upload_items(c["id"], ranking_items(N_ITEMS, 4))
        assert admin.assign(c["id"])["created"] == N_ITEMS * OVERLAP
        plans = [[t["assignment_id"] for t in FeedbackClient(base, tok).tasks(limit=1000)] for tok in tokens]

        labelers = [Labeler(base, tok, plan, seed) for seed, (tok, plan) in enumerate(zip(tokens, plans, strict=True))]
        for lab in labelers:
            lab.start()
        deadline = time.monotonic() + 60
        while sum(len(lab.acked) for lab in labelers) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the server and its workers mid-load
        proc.wait(timeout=10)
        for lab in labelers:
            lab.join(timeout=20)
        acked = {aid: lab.answers[aid] for lab in labelers for aid in lab.acked}
        in_flight = {lab.in_flight for lab in labelers} - {None}
        assert 20 <= len(acked) < N_ITEMS * OVERLAP, "the kill must land mid-load"

        stored = _stored(url)
        stored.pop("pending")
        for aid, order in acked.items():  # everything acknowledged survived the kill, unchanged
            assert stored.get(aid) == order
        assert set(stored) <= set(acked) | in_flight  # and nothing else appeared

        proc = start_server(url, port)
        retried = [Labeler(base, lab.token, lab.tasks, seed) for seed, lab in enumerate(labelers)]
        for new, old in zip(retried, labelers, strict=True):
            new.acked = dict(old.acked)  # resume: the in-flight submission is retried first
            new.start()
        for lab in retried:
            lab.join(timeout=60)
        final = _stored(url)
        assert final.pop("pending") == 0
        assert len(final) == N_ITEMS * OVERLAP
        assert final == {aid: lab.answers[aid] for lab in retried for aid in lab.tasks}
        for lab in retried:  # a retried submission that had been committed before the kill is a 200, not a new label
            for aid in in_flight & set(lab.tasks):
                assert lab.acked[aid] == (200 if aid in stored else 201)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


def test_concurrent_duplicate_submissions_store_one_label(database_url):
    """Simultaneous copies of one submission (a client retrying): one 201, the rest 200 with the same label id."""
    url = database_url
    app = create_app(FeedbackConfig(database_url=url))
    admin_token = create_admin(url, "boss", token=True).token
    with live_server(app) as base:
        admin = FeedbackClient(base, admin_token)
        token = admin.create_user("dup", token=True)["token"]
        c = admin.create_campaign("dup", "ranking", "Rank them.")
        admin.upload_items(c["id"], ranking_items(1, 4))
        admin.assign(c["id"])
        aid = FeedbackClient(base, token).tasks()[0]["assignment_id"]
        results: list[httpx.Response] = []
        barrier = threading.Barrier(8)

        def fire() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
                barrier.wait()
                results.append(http.post(f"/api/tasks/{aid}/label", json={"order": [1, 0, 3, 2]}))

        threads = [threading.Thread(target=fire) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 7 + [201]
    assert len({r.json()["label_id"] for r in results}) == 1
    stored = _stored(url)
    assert stored.pop("pending") == 0 and stored == {aid: [1, 0, 3, 2]}
