"""The simulated panel labels whole campaigns through the HTTP API; the export feeds reward-model training.

Screening catches the careless simulated labelers, only qualified labelers get the real
campaign, every ranking makes the round trip (panel -> HTTP -> database -> export) unchanged,
the held-out group stays out of the training export, and that export trains a reward model.
``FeedbackClient.collect_rankings`` is the loop's interface: it must return what the panel gave.
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import threading

import pytest

from alignloop.config import ModelConfig, PanelConfig, RMConfig
from alignloop.data.jsonl import read_jsonl, write_jsonl
from alignloop.data.records import Prompt, Ranking
from alignloop.feedback.client import FeedbackClient
from alignloop.labelers import SimulatedPanel
from feedback_fixtures import database_url, pg_database, pg_url, service  # noqa: F401

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
TOPICS = ["the ocean", "gravity", "a birthday party", "fresh bread", "the moon", "a volcano", "recycling", "sleep",
          "a compass", "the heart", "autumn leaves", "a solar panel", "a lost kitten", "the internet", "a rainbow",
          "electricity", "a garden", "a robot", "the night sky", "a lighthouse"]  # fmt: skip
SOURCES = ["helpful", "rude", "terse", "rambling"]


def _prompts(n: int, offset: int = 0) -> list[Prompt]:
    return [
        Prompt(f"q{offset + i}", f"Write a short friendly note about {TOPICS[(offset + i) % len(TOPICS)]}.", f"u{i}")
        for i in range(n)
    ]


def _completions(panel: SimulatedPanel, p: Prompt) -> list[str]:
    topic = p.text.split("about ", 1)[1].rstrip(".")
    return [
        panel.write_demonstration(p).completion,
        f"I hate questions about {topic}. This is stupid and boring, go away.",
        "ok.",
        f"Well, {topic}, hmm. There are many things one could say, and some people say things, "
        "while other people say other things, and that is how it is, more or less, in general.",
    ]


def _label_all(panel: SimulatedPanel, clients: dict[str, FeedbackClient]) -> int:
    """Every simulated labeler answers all its tasks through the API; returns how many were answered."""
    n = 0
    for labeler_id, client in clients.items():
        for task in client.iter_tasks():
            r = panel.rank(task["prompt"], task["completions"], labeler=labeler_id)
            client.submit(task["assignment_id"], {"order": r.order, "ties": r.ties})
            n += 1
    return n


@pytest.fixture
def panel() -> SimulatedPanel:
    return SimulatedPanel(PanelConfig(n_labelers=6, careless_fraction=0.34, n_groups=3, temperature=0.05, seed=3))


def _enrol(svc, panel: SimulatedPanel, held_out_group: int | None = None) -> dict[str, FeedbackClient]:
    for g in sorted({lab.group for lab in panel.labelers}):
        svc.admin.create_group(f"g{g}", held_out=(g == held_out_group))
    return {lab.id: svc.labeler(lab.id, group=f"g{lab.group}") for lab in panel.labelers}


@pytest.mark.slow  # trains a (tiny) reward model
@SQLITE_ONLY
def test_panel_labels_a_campaign_through_http_and_the_export_trains_an_rm(service, panel, tmp_path):
    svc = service
    clients = _enrol(svc, panel, held_out_group=2)
    careless = {lab.id for lab in panel.labelers if lab.careless}
    assert len(careless) == 2

    # 1. Screening: admins' gold order is the gold judge's; careless labelers must fail it.
    screening = svc.admin.create_campaign("screening", "ranking", "Rank by helpfulness.", screening=True)
    gold_items = []
    for p in _prompts(8, offset=100):
        comps = _completions(panel, p)
        utility = panel.judge.score_batch([p.text] * 4, comps)
        gold = sorted(range(4), key=lambda i: -utility[i])
        gold_items.append({"prompt_id": p.id, "prompt": p.text, "completions": comps, "gold": {"order": gold}})
    svc.admin.upload_items(screening["id"], gold_items)
    svc.admin.assign(screening["id"])
    assert _label_all(panel, clients) == 8 * 6
    result = {r["labeler"]: r for r in svc.admin.screen(screening["id"], threshold=0.75)["labelers"]}
    assert {name for name, r in result.items() if not r["qualified"]} == careless
    assert all(result[name]["gold_agreement"] < 0.75 for name in careless)

    # 2. The real campaign goes to qualified labelers only, two per item.
    prompts = _prompts(16)
    items = [
        {"prompt_id": p.id, "prompt": p.text, "completions": _completions(panel, p), "sources": SOURCES,
         "user_id": p.user_id, "category": p.category}
        for p in prompts
    ]  # fmt: skip
    real = svc.admin.create_campaign("round-1", "ranking", "Rank by helpfulness.", overlap=2, screened_only=True,
                                     allow_ties=True)  # fmt: skip
    svc.admin.upload_items(real["id"], items)
    out = svc.admin.assign(real["id"])
    assert set(out["per_labeler"]) == set(clients) - careless and out["short"] == []
    assert _label_all(panel, clients) == 16 * 2

    # 3. Every ranking made the round trip unchanged; the held-out group is not in the training export.
    held_out = {lab.id for lab in panel.labelers if lab.group == 2}
    everything = svc.admin.export_records("rm", ["round-1"], held_out="include")
    assert len(everything) == 32
    for r in everything:
        again = panel.rank(r.prompt, r.completions, labeler=r.labeler_id)
        assert (r.order, r.ties) == (again.order, again.ties)
    train = svc.admin.export_records("rm", ["round-1"])
    assert {r.labeler_id for r in train} == {r.labeler_id for r in everything} - held_out
    assert len(train) == sum(r.labeler_id not in held_out for r in everything)
    assert all(r.sources == SOURCES for r in train)
    agreement = svc.admin.agreement(real["id"])
    assert agreement["pairwise_agreement"]["n_items"] == 16 and agreement["pairwise_agreement"]["rate"] > 0.6
    ratings = {r["policy"]: r["rating"] for r in svc.admin.ratings(["round-1"], bootstrap=20)["bradley_terry"]}
    assert max(ratings, key=ratings.get) == "helpful"

    # 4. The exported file is what the reward-model trainer reads, and it trains on it.
    path = tmp_path / "rm.jsonl"
    write_jsonl(path, svc.admin.export("rm", "alignloop", ["round-1"]))
    rankings = read_jsonl(path, Ranking)
    assert rankings == train
    trl = svc.admin.export("rm", "trl", ["round-1"])
    assert len(trl) == sum(len(r.comparisons()) for r in train)
    reward = pytest.importorskip("alignloop.train.reward", reason="the reward-model trainer is not in this checkout")
    cfg = RMConfig(model=ModelConfig(name="tiny"), epochs=1, lr=1e-2, prompts_per_step=4, micro_batch_completions=16)
    res = reward.train_reward_model(cfg, rankings, tmp_path / "rm", val=rankings[:4], progress=False)
    assert res.steps == -(-len(rankings) // cfg.prompts_per_step)
    assert (res.model_dir).is_dir() and "val/accuracy" in res.val


@SQLITE_ONLY
def test_collect_rankings_is_the_loops_interface(service, panel):
    """The loop pushes comparisons and blocks; simulated labelers answer through HTTP meanwhile."""
    svc = service
    clients = _enrol(svc, panel)
    prompts = _prompts(5)
    completions = [_completions(panel, p) for p in prompts]
    done = threading.Event()

    def labelers_at_work() -> None:
        while not done.is_set():
            _label_all(panel, clients)
            done.wait(0.05)

    worker = threading.Thread(target=labelers_at_work, daemon=True)
    worker.start()
    try:
        got = svc.admin.collect_rankings(prompts, completions, sources=[SOURCES] * 5, overlap=2, timeout=60, poll=0.1)
    finally:
        done.set()
        worker.join(timeout=10)
    assert len(got) == 5 * 2 and all(isinstance(r, Ranking) for r in got)
    assert {r.prompt_id for r in got} == {p.id for p in prompts}
    for r in got:
        expected = panel.rank(r.prompt, r.completions, labeler=r.labeler_id)
        assert (r.order, r.ties) == (expected.order, expected.ties)
        assert r.completions == completions[int(r.prompt_id[1:])]
