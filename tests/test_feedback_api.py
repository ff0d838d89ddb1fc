"""The feedback service's API on SQLite and PostgreSQL: campaigns, forms, assignment, idempotency, export."""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from alignloop.data.records import METADATA_FLAGS, Ranking
from alignloop.feedback.client import FeedbackError
from alignloop.feedback.models import Assignment, Label
from feedback_fixtures import database_url, pg_database, pg_url, ranking_items, service  # noqa: F401

GUIDE = "Prefer the answer that is most helpful, truthful and harmless."


def _count(url: str, model) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(model)).scalar_one()
    engine.dispose()
    return n


def _ranking_campaign(svc, name="rank", n=2, k=4, overlap=1, **kw):
    c = svc.admin.create_campaign(name, "ranking", GUIDE, overlap=overlap, **kw)
    up = svc.admin.upload_items(c["id"], ranking_items(n, k))
    return c, up


def test_rank_submit_retry_conflict_and_export(service):
    svc = service
    alice = svc.labeler("alice")
    c, up = _ranking_campaign(svc, n=2)
    assert (up["created"], up["existing"]) == (2, 0)
    assert svc.admin.upload_items(c["id"], ranking_items(2))["existing"] == 2  # re-push adds nothing
    assert svc.admin.assign(c["id"])["created"] == 2
    tasks = alice.tasks()
    assert [t["task_type"] for t in tasks] == ["ranking", "ranking"]
    task = alice.task(tasks[0]["assignment_id"])
    assert task["guidelines"] == GUIDE and len(task["completions"]) == 4
    assert sorted(task["display_order"]) == [0, 1, 2, 3]

    aid = task["assignment_id"]
    first = alice.submit(aid, {"order": [2, 0, 3, 1]}, idempotency_key="k1")
    assert first["status"] == "done" and first["duplicate"] is False
    again = alice.submit(aid, {"order": [2, 0, 3, 1]}, idempotency_key="k1")  # a retried request
    assert again["duplicate"] is True and again["label_id"] == first["label_id"]
    with pytest.raises(FeedbackError) as err:
        alice.submit(aid, {"order": [0, 1, 2, 3]})
    assert err.value.status == 409 and "already answered" in str(err.value)
    assert _count(svc.url, Label) == 1

    rankings = svc.admin.export_records("rm", [c["name"]])
    assert len(rankings) == 1 and isinstance(rankings[0], Ranking)
    r = rankings[0]
    assert r.order == [2, 0, 3, 1] and r.labeler_id == "alice" and r.sources == ["sft", "ppo", "sft", "ppo"]
    assert r.completions[2] == "Answer 2 about topic 0."
    trl = svc.admin.export("rm", "trl", [c["id"]])
    assert len(trl) == 6  # C(4, 2) comparisons
    order = [2, 0, 3, 1]
    expected = {(r.completions[order[i]], r.completions[order[j]]) for i in range(4) for j in range(i + 1, 4)}
    assert {(row["chosen"], row["rejected"]) for row in trl} == expected
    assert all(row["prompt"] == r.prompt for row in trl)


def test_malformed_answers_get_422_and_change_nothing(service):
    svc = service
    bob = svc.labeler("bob")
    c, _ = _ranking_campaign(svc, n=1)
    svc.admin.assign(c["id"])
    aid = bob.tasks()[0]["assignment_id"]
    cases = [
        ({"order": [0, 0, 1, 2]}, "order: must be a permutation of 0..3"),
        ({"order": [0, 1, 2]}, "order: must be a permutation of 0..3"),
        ({"order": [0, 1, 2, 3], "ties": [[0, 1]]}, "ties: this campaign does not allow ties"),
        ({"best": 1}, "best: not part of a ranking answer"),
        ({}, "order: required for a ranking answer"),
        ({"order": "0123"}, "order: expected a list of completion indices"),
    ]
    for answer, message in cases:
        with pytest.raises(FeedbackError) as err:
            bob.submit(aid, answer)
        assert err.value.status == 422 and message in str(err.value), (answer, str(err.value))
    raw = svc.http.post(f"/api/tasks/{aid}/label", content=b"[1, 2", headers={"Authorization": f"Bearer {bob.token}"})
    assert raw.status_code == 422
    assert _count(svc.url, Label) == 0
    assert bob.tasks()[0]["assignment_id"] == aid  # still pending
    with pytest.raises(FeedbackError, match="reason: give a reason"):
        bob.skip(aid, "   ")
    assert bob.submit(aid, {"order": [3, 2, 1, 0]})["status"] == "done"


def test_every_feedback_form(service):
    svc = service
    lab = svc.labeler("carol")
    rules = ["makes things up", "is rude"]
    specs = {
        "demonstration": ([], {"text": "A careful answer."}),
        "ranking": (["a", "b", "c", "d"], {"order": [1, 0, 3, 2], "ties": [[3, 2]]}),
        "best_pick": (["a", "b", "c"], {"best": 2}),
        "thumbs": (["a"], {"up": False}),
        "rating": (["a"], {"likert": 6, "flags": {"hallucination": True}}),
        "rule_violations": (["a", "b"], {"order": [1, 0], "violations": [["is rude"], []]}),
    }
    for task_type, (completions, _) in specs.items():
        kw = {"rules": rules} if task_type == "rule_violations" else {}
        if task_type == "ranking":
            kw["allow_ties"] = True
        c = svc.admin.create_campaign(task_type, task_type, GUIDE + " " + task_type, **kw)
        item = {"prompt_id": f"q-{task_type}", "prompt": "Say hi.", "completions": completions, "category": "chat"}
        svc.admin.upload_items(c["id"], [item])
        svc.admin.assign(c["id"])
    answered = {}
    for t in lab.tasks():
        task = lab.task(t["assignment_id"])
        assert task["guidelines"].endswith(task["task_type"])  # the guidelines travel with every task
        if task["task_type"] == "rating":
            assert task["flags"] == list(METADATA_FLAGS)
        lab.submit(task["assignment_id"], specs[task["task_type"]][1])
        answered[task["task_type"]] = True
    assert sorted(answered) == sorted(specs)

    (demo,) = svc.admin.export_records("sft", ["demonstration"])
    assert (demo.prompt_id, demo.completion, demo.category) == ("q-demonstration", "A careful answer.", "chat")
    rm = {r.prompt_id: r for r in svc.admin.export_records("rm")}
    assert rm["q-ranking"].ties == [[3, 2]] and rm["q-ranking"].ranks() == [1, 0, 2, 2]
    assert rm["q-best_pick"].order[0] == 2 and rm["q-best_pick"].ties == [[0, 1]]  # best-pick = degenerate ranking
    assert rm["q-rule_violations"].order == [1, 0]
    (thumb,) = svc.admin.export_records("thumbs")
    assert thumb.up is False
    (rating,) = svc.admin.export_records("ratings")
    assert rating.likert == 6 and rating.flags["hallucination"] is True and rating.flags["sexual_content"] is False
    (rv,) = svc.admin.export_records("rule_violations")
    assert rv.violations == [["is rude"], []]
    sft_trl = svc.admin.export("sft", "trl", ["demonstration"])
    assert sft_trl == [{"prompt": "Say hi.", "completion": "A careful answer."}]
    ppo = svc.admin.export_records("ppo")
    assert sorted(p.id for p in ppo) == sorted(f"q-{t}" for t in specs)


def test_item_validation_is_all_or_nothing(service):
    svc = service
    c = svc.admin.create_campaign("rank", "ranking", GUIDE)
    items = ranking_items(3, 4)
    items[2]["completions"] = ["only", "three", "here"]
    with pytest.raises(FeedbackError, match=r"items\[2\]\.completions: a ranking task takes 4 to 9 completions, got 3"):
        svc.admin.upload_items(c["id"], items)
    assert svc.admin.campaign(c["id"])["n_items"] == 0
    with pytest.raises(FeedbackError, match="rules: a rule_violations campaign needs"):
        svc.admin.create_campaign("rv", "rule_violations", GUIDE)
    with pytest.raises(FeedbackError) as err:
        svc.admin.create_campaign("bad", "essay", GUIDE)
    assert err.value.status == 422 and "task_type" in str(err.value)
    with pytest.raises(FeedbackError, match="409.*exists"):
        svc.admin.create_campaign("rank", "ranking", GUIDE)


def test_skip_with_reason_and_ppo_prompts(service):
    svc = service
    dan = svc.labeler("dan")
    c, _ = _ranking_campaign(svc, n=2)
    svc.admin.assign(c["id"])
    first, second = dan.tasks()
    assert dan.skip(first["assignment_id"], "intent unclear")["status"] == "skipped"
    assert dan.skip(first["assignment_id"], "intent unclear")["duplicate"] is True
    dan.submit(second["assignment_id"], {"order": [0, 1, 2, 3]})
    labels = svc.admin.labels(c["id"])
    assert [lb["skip_reason"] for lb in labels] == ["intent unclear", None]
    assert len(svc.admin.export_records("rm")) == 1  # the skip is no ranking
    ppo = svc.admin.export_records("ppo")
    assert [p.id for p in ppo] == ["p1"]  # a prompt everyone skipped as unclear is left out


def test_overlap_assignment_never_repeats_a_labeler(service):
    svc = service
    for name in ("l1", "l2", "l3"):
        svc.labeler(name)
    c, _ = _ranking_campaign(svc, n=5, overlap=2)
    out = svc.admin.assign(c["id"])
    assert out["created"] == 10 and out["short"] == []
    assert sorted(out["per_labeler"].values()) == [3, 3, 4]  # load kept even
    assert svc.admin.assign(c["id"])["created"] == 0  # already at overlap
    more = svc.admin.assign(c["id"], overlap=4)
    assert more["created"] == 5 and len(more["short"]) == 5 and all(s["missing"] == 1 for s in more["short"])
    engine = create_engine(svc.url)
    with engine.connect() as conn:
        pairs = conn.execute(select(Assignment.item_id, Assignment.labeler_id)).all()
    engine.dispose()
    assert len(pairs) == len(set(pairs)) == 15  # every item: all 3 labelers, each once


def test_labelers_see_only_their_tasks(service):
    svc = service
    eve, fay = svc.labeler("eve"), svc.labeler("fay")
    c, _ = _ranking_campaign(svc, n=1)
    svc.admin.assign(c["id"], labelers=["eve"])
    aid = eve.tasks()[0]["assignment_id"]
    assert fay.tasks() == []
    for call in (lambda: fay.task(aid), lambda: fay.submit(aid, {"order": [0, 1, 2, 3]}), lambda: fay.skip(aid)):
        with pytest.raises(FeedbackError) as err:
            call()
        assert err.value.status == 404
    assert _count(svc.url, Label) == 0


def test_held_out_group_stays_out_of_training_exports(service):
    svc = service
    svc.admin.create_group("train")
    svc.admin.create_group("heldout", held_out=True)
    svc.labeler("t1", group="train")
    svc.labeler("h1", group="heldout")
    c, _ = _ranking_campaign(svc, n=2, overlap=2)
    svc.admin.assign(c["id"])
    for lab in svc.labelers.values():
        for t in lab.tasks():
            lab.submit(t["assignment_id"], {"order": [3, 2, 1, 0]})
    assert {r.labeler_id for r in svc.admin.export_records("rm")} == {"t1"}
    assert {r.labeler_id for r in svc.admin.export_records("rm", held_out="only")} == {"h1"}
    assert len(svc.admin.export_records("rm", held_out="include")) == 4
    assert len(svc.admin.export("rm", "trl")) == 2 * 6


def test_screening_decides_who_gets_real_tasks(service):
    svc = service
    good, bad = svc.labeler("good"), svc.labeler("bad")
    gold_c = svc.admin.create_campaign("gold", "ranking", GUIDE, screening=True)
    ids = svc.admin.upload_items(gold_c["id"], ranking_items(3, 4, prefix="g"))["item_ids"]
    with pytest.raises(FeedbackError, match="no gold labels"):
        svc.admin.screen(gold_c["id"])
    for item_id in ids:
        svc.admin.set_gold(item_id, {"order": [0, 1, 2, 3]})
    assert svc.admin.assign(gold_c["id"])["created"] == 6  # everyone labels the whole gold set
    for t in good.tasks():
        good.submit(t["assignment_id"], {"order": [0, 1, 3, 2]})  # 5 of 6 pairs agree with gold
    for t in bad.tasks():
        bad.submit(t["assignment_id"], {"order": [3, 2, 1, 0]})  # 0 of 6
    result = {r["labeler"]: r for r in svc.admin.screen(gold_c["id"], threshold=0.7)["labelers"]}
    assert result["good"]["gold_agreement"] == pytest.approx(5 / 6) and result["good"]["qualified"] is True
    assert result["bad"]["gold_agreement"] == 0.0 and result["bad"]["qualified"] is False
    real, _ = _ranking_campaign(svc, name="real", n=2, overlap=2, screened_only=True)
    out = svc.admin.assign(real["id"])
    assert out["per_labeler"] == {"good": 2} and out["eligible_labelers"] == 1
    assert bad.tasks() == [] and len(good.tasks()) == 2
    assert svc.admin.export_records("rm") == []  # screening labels are never training data
    assert len(svc.admin.export_records("rm", [gold_c["name"]])) == 6  # unless the gold campaign is named


def test_agreement_and_policy_ratings(service):
    svc = service
    labs = [svc.labeler(n) for n in ("a1", "a2", "a3")]
    c, _ = _ranking_campaign(svc, n=2, overlap=3)
    svc.admin.assign(c["id"])
    answers = {"a1": [0, 2, 1, 3], "a2": [0, 2, 1, 3], "a3": [1, 3, 0, 2]}
    for lab, name in zip(labs, answers, strict=True):
        for t in lab.tasks():
            lab.submit(t["assignment_id"], {"order": answers[name]})
    ag = svc.admin.agreement(c["id"])
    # per item: a1 = a2 on all 6 pairs; a3 vs a1/a2: ranks a1 = [0,2,1,3], a3 = [2,0,3,1] -> agree on 2 of 6
    assert ag["pairwise_agreement"]["rate"] == pytest.approx((6 + 2 + 2) / 18)
    assert ag["pairwise_agreement"]["n_items"] == 2 and ag["pairwise_agreement"]["n_judgments"] == 36
    rows = {r["labeler"]: r for r in ag["labelers"]}
    assert rows["a1"]["consensus_agreement"] > rows["a3"]["consensus_agreement"]
    # Fleiss by hand over the 12 pair units (3 raters each): 4 unanimous (P_i = 1), 8 split 2:1 (P_i = 1/3),
    # so P = 5/9; "earlier completion wins" in 26 of 36 labels, so P_e = (26^2 + 10^2) / 36^2 = 194/324
    p_bar, p_e = 5 / 9, 194 / 324
    assert ag["fleiss_kappa"] == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert ag["krippendorff_alpha"] is not None and ag["krippendorff_alpha"] < ag["pairwise_agreement"]["rate"]
    assert len(ag["cohen_kappa_pairs"]) == 3
    pair = {(p["labeler_a"], p["labeler_b"]): p["kappa"] for p in ag["cohen_kappa_pairs"]}
    assert pair[("a1", "a2")] == pytest.approx(1.0)
    ratings = svc.admin.ratings([c["name"]], bootstrap=50)
    bt = {r["policy"]: r for r in ratings["bradley_terry"]}
    # sources: completions 0, 2 are "sft", 1, 3 "ppo"; a1/a2 put sft first on most cross pairs
    assert bt["sft"]["rating"] > bt["ppo"]["rating"]
    assert bt["sft"]["ci_low"] <= bt["sft"]["rating"] <= bt["sft"]["ci_high"]
    assert {r["policy"] for r in ratings["elo"]} == {"sft", "ppo"}


def test_demonstration_campaign_has_no_agreement(service):
    svc = service
    c = svc.admin.create_campaign("demo", "demonstration", GUIDE)
    with pytest.raises(FeedbackError, match="422"):
        svc.admin.agreement(c["id"])


def test_rating_agreement_is_per_item(service):
    svc = service
    labs = {n: svc.labeler(n) for n in ("x1", "x2", "x3")}
    c = svc.admin.create_campaign("likert", "rating", GUIDE, overlap=3)
    items = [{"prompt_id": f"r{i}", "prompt": "Rate it.", "completions": [f"answer {i}"]} for i in range(2)]
    svc.admin.upload_items(c["id"], items)
    svc.admin.assign(c["id"])
    scores = {"x1": (5, 7), "x2": (5, 7), "x3": (3, 7)}
    for name, lab in labs.items():
        for t in lab.tasks():
            prompt_index = int(lab.task(t["assignment_id"])["completions"][0].split()[-1])
            lab.submit(t["assignment_id"], {"likert": scores[name][prompt_index]})
    ag = svc.admin.agreement(c["id"])
    # item r0: (5, 5) agree, (5, 3) twice not; item r1: all three pairs agree -> 4 of 6
    assert ag["pairwise_agreement"]["rate"] == pytest.approx(4 / 6)
    assert ag["krippendorff_level"] == "ordinal" and -1 <= ag["krippendorff_alpha"] <= 1
    rows = {r["labeler"]: r for r in ag["labelers"]}
    # consensus of the others, a split majority counting half: x1 on r0 meets {5, 3} -> 1/2, on r1 -> 1
    assert rows["x1"]["consensus_agreement"] == pytest.approx(0.75)
    assert rows["x3"]["consensus_agreement"] == pytest.approx(0.5)  # r0: others say 5, not 3
