"""Win rates: judgments by hand, scoring and pairwise judges, leaderboards, and the human campaign round trip."""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import json

import pytest

from alignloop.data.records import Prompt
from alignloop.errors import AlignloopError
from alignloop.evaluate import human
from alignloop.evaluate.winrate import (
    ScoreJudge,
    battles_from_scores,
    evaluate_win_rates,
    outcome,
    pairwise_battles,
    summarize_battles,
)
from alignloop.models.scoring import FunctionScorer
from alignloop.stats.ratings import Battle
from feedback_fixtures import database_url, pg_database, pg_url, service  # noqa: F401

PROMPTS = [Prompt("p1", "Write about the sea.", "u1"), Prompt("p2", "Describe a cat.", "u2")]


def test_outcome_and_battles_from_scores():
    assert outcome(1.0, 0.5) == "a" and outcome(0.2, 0.5) == "b" and outcome(0.5, 0.55, tolerance=0.1) == "tie"
    scores = {"base": [[0.5, 0.5], [0.1, 0.9]], "ppo": [[0.6, 0.4], [0.1, 0.8]], "bon": [[0.7, 0.7], [0.7, 0.7]]}
    battles = battles_from_scores(["p1", "p2"], scores)
    assert len(battles) == 3 * 2 * 2  # 3 policy pairs x 2 prompts x 2 samples
    assert [b.winner for b in battles if {b.model_a, b.model_b} == {"base", "ppo"}] == ["b", "a", "tie", "a"]


def test_win_rate_from_given_judgments():
    # ppo vs base on two prompts: win, win, tie, loss -> (2 + 0.5) / 4
    battles = [
        Battle("ppo", "base", "a", "p1"),
        Battle("base", "ppo", "b", "p1"),
        Battle("ppo", "base", "tie", "p2"),
        Battle("ppo", "base", "b", "p2"),
    ]
    res = summarize_battles(battles, ["base", "ppo"], "base", n_bootstrap=200)
    r = res["win_rates"]["ppo"]
    assert r["rate"] == pytest.approx(0.625)
    assert (r["wins"], r["ties"], r["losses"], r["n"], r["n_prompts"]) == (2, 1, 1, 4, 2)
    # prompts are resampled: p1 alone gives 1.0, p2 alone 0.25; the interval spans exactly those
    assert r["ci_low"] == pytest.approx(0.25) and r["ci_high"] == pytest.approx(1.0)
    board = res["leaderboard"]["bradley_terry"]
    assert board[0]["model"] == "ppo" and board[1]["model"] == "base" and board[1]["rating"] == pytest.approx(1000.0)
    assert {row["model"] for row in res["leaderboard"]["elo"]} == {"base", "ppo"}


def test_evaluate_win_rates_with_a_scoring_judge():
    samples = {
        "sft": [["short", "tiny"], ["a b", "c"]],
        "ppo": [["a much longer answer", "also long answer"], ["x", "a long answer here"]],
        "ptx": [["mid size", "mid"], ["mid size", "m"]],
    }
    judge = ScoreJudge(FunctionScorer(lambda p, c: len(c)), "length")
    res = evaluate_win_rates(judge, ["p1", "p2"], [p.text for p in PROMPTS], samples, "sft", n_bootstrap=100)
    # ppo vs sft: (20>5 win, 16>4 win, 1<3 loss, 18>1 win) -> 3/4
    assert res["win_rates"]["ppo"]["rate"] == pytest.approx(0.75)
    # ptx vs sft: (8>5, 3<4, 8>3, 1=1 tie) -> 2.5/4
    assert res["win_rates"]["ptx"]["rate"] == pytest.approx(0.625)
    assert res["mean_score"]["sft"] == pytest.approx((5 + 4 + 3 + 1) / 4)
    assert res["n_battles"] == 12  # all three pairs of policies, 4 comparisons each
    assert [r["model"] for r in res["leaderboard"]["bradley_terry"]][0] == "ppo"
    with pytest.raises(AlignloopError, match="no samples of the baseline"):
        evaluate_win_rates(judge, ["p1", "p2"], ["a", "b"], samples, "base")


def test_pairwise_judge_only_meets_the_baseline():
    class FirstLonger:
        name = "pairwise"

        def judge(self, prompts, a, b):
            return ["a" if len(x) > len(y) else "b" for x, y in zip(a, b, strict=True)]

    samples = {"sft": [["aa"], ["aaaa"]], "ppo": [["aaa"], ["a"]], "ptx": [["aaaaa"], ["aaaaa"]]}
    battles = pairwise_battles(FirstLonger(), ["p1", "p2"], ["x", "y"], samples, "sft")
    assert {(b.model_a, b.model_b) for b in battles} == {("ppo", "sft"), ("ptx", "sft")}
    res = evaluate_win_rates(FirstLonger(), ["p1", "p2"], ["x", "y"], samples, "sft", n_bootstrap=50)
    assert res["win_rates"]["ppo"]["rate"] == 0.5 and res["win_rates"]["ptx"]["rate"] == 1.0


class FakeService:
    """A feedback service in memory: stores the uploaded items, returns the labels a test sets."""

    def __init__(self):
        self.items, self.label_rows, self.created = [], [], 0

    def create_pairwise_campaign(self, name, guidelines, items):
        self.created += 1
        self.items = items
        return {"campaign_id": 7, "item_ids": [100 + i for i in range(len(items))]}

    def labels(self, campaign_id):
        assert campaign_id == 7
        return self.label_rows


def test_human_campaign_pending_then_win_rates(tmp_path):
    samples = {"sft": [["s1"], ["s2"]], "ppo": [["p1"], ["p2"]]}
    svc = FakeService()
    first = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=svc)
    assert first["status"] == "pending" and first["n_items"] == 2 and svc.created == 1
    assert svc.items[0]["completions"] == ["p1", "s1"] and svc.items[0]["sources"] == ["ppo", "sft"]
    state = json.loads((tmp_path / human.STATE_FILE).read_text())
    assert [i["item_id"] for i in state["items"]] == [100, 101]

    again = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=svc)
    assert again["status"] == "pending" and svc.created == 1  # no second campaign

    svc.label_rows = [{"item_id": 100, "payload": {"best": 0}}]  # ppo's completion picked
    partial = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=svc)
    assert partial["status"] == "partial" and partial["win_rates"]["ppo"]["rate"] == 1.0
    svc.label_rows += [
        {"item_id": 101, "payload": {"order": [1, 0], "ties": [[1, 0]]}},  # a tie
        {"item_id": 101, "payload": None, "skip_reason": "unclear"},
    ]
    done = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=svc)
    assert done["status"] == "complete" and done["n_labeled_items"] == 2
    assert done["win_rates"]["ppo"]["rate"] == pytest.approx(0.75)


def test_human_judge_without_a_client_reports_unavailable(tmp_path, monkeypatch):
    def no_client(url, token=None):
        raise AlignloopError("human judging needs the feedback client")

    monkeypatch.setattr(human, "FeedbackClientBackend", no_client)
    res = human.human_win_rates("http://fb", tmp_path, PROMPTS, {"sft": [["a"], ["b"]], "ppo": [["c"], ["d"]]}, "sft")
    assert res["status"] == "unavailable" and "feedback client" in res["reason"]


def test_human_win_rates_through_the_feedback_service(service, tmp_path):
    """The real service in process: campaign created, two labeler groups answer, win rates per group."""
    svc = service
    svc.admin.create_group("trainers")
    svc.admin.create_group("heldout", held_out=True)
    alice, bob = svc.labeler("alice", "trainers"), svc.labeler("bob", "heldout")
    backend = human.FeedbackClientBackend("unused", client=svc.admin, overlap=2)
    samples = {"sft": [["s1"], ["s2"]], "ppo": [["p1"], ["p2"]]}
    first = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=backend)
    assert first["status"] == "pending" and first["n_items"] == 2

    def answer(client, prefer_policy):
        for task in client.iter_tasks():
            policy_first = task["completions"][0].startswith("p")  # completions keep upload order: [policy, sft]
            assert policy_first
            client.submit(task["assignment_id"], {"best": 0 if prefer_policy else 1})

    answer(alice, prefer_policy=True)
    answer(bob, prefer_policy=False)
    done = human.human_win_rates("http://fb", tmp_path, PROMPTS, samples, "sft", 100, backend=backend)
    assert done["status"] == "complete" and done["n_labeled_items"] == 2
    assert done["win_rates"]["ppo"]["rate"] == 0.5 and done["win_rates"]["ppo"]["n"] == 4
    assert done["by_group"]["trainers"]["ppo"]["rate"] == 1.0
    assert done["by_group"]["heldout"]["ppo"]["rate"] == 0.0


def test_reward_model_judge_from_a_saved_folder(tmp_path):
    from alignloop.evaluate.suite import make_scoring_judge
    from alignloop.models.reward import RewardScorer, init_reward_model

    model, tok = init_reward_model("tiny")
    model.save(tmp_path / "rm", tok)
    judge = make_scoring_judge(f"rm:{tmp_path / 'rm'}")
    assert judge.name == f"rm:{tmp_path / 'rm'}"
    prompts = ["Write about the sea.", "Describe a cat."]
    samples = {"sft": [["The sea is blue."], ["A cat."]], "ppo": [["Waves roll in at dawn."], ["Cats purr softly."]]}
    direct = RewardScorer(model, tok).score_batch(prompts * 2, [s[0] for s in samples["sft"] + samples["ppo"]])
    res = evaluate_win_rates(judge, ["p1", "p2"], prompts, samples, "sft", n_bootstrap=20)
    assert res["mean_score"]["sft"] == pytest.approx((direct[0] + direct[1]) / 2, abs=1e-5)
    expected = sum(1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(direct[:2], direct[2:], strict=True)) / 2
    assert res["win_rates"]["ppo"]["rate"] == pytest.approx(expected)
