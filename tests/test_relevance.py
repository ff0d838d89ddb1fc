"""The reward model's relevance feature: the frozen sentence encoder's prompt-answer cosine, its weight
fitted on the training rankings, and a trained model whose every score (training loss, held-out
accuracy, scorer) includes it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from alignloop.config import ModelConfig, RMConfig
from alignloop.data.records import Ranking
from alignloop.models.relevance import fit_weight, shared
from alignloop.models.reward import RewardModelInfo, RewardScorer, load_reward_model
from alignloop.train.reward import train_reward_model
from alignloop.train.reward_data import EncodedRanking, score_chunk
from alignloop.train.reward_eval import evaluate_reward_model, ranking_pairs
from alignloop.train.runlog import read_metrics

TOPICS = {
    "How do I bake bread at home?": ("Mix flour, water, yeast and salt, let the dough rise, then bake the loaf.",
                                     "The stock market closed higher today after the bank's report."),
    "What should I pack for a beach holiday?": ("Pack sunscreen, a swimsuit, a towel and sandals for the beach.",
                                                "Compilers translate source code into machine instructions."),
    "How can I learn to play the guitar?": ("Practise chords daily, learn to strum slowly and play simple songs.",
                                            "Volcanoes erupt when pressure builds up under the crust."),
    "How do I care for a houseplant?": ("Water the plant when the soil is dry and give it bright, indirect light.",
                                        "The football team won the league after a long season."),
}  # fmt: skip


def test_fit_weight_recovers_the_weight_that_generated_the_preferences() -> None:
    rng = np.random.default_rng(0)
    rel = rng.uniform(-1, 1, 4000)
    pairs = []
    for a in range(0, 4000, 2):
        p = 1 / (1 + math.exp(-3.0 * (rel[a] - rel[a + 1])))
        pairs.append((a, a + 1) if rng.random() < p else (a + 1, a))
    fit = fit_weight(rel.tolist(), pairs)
    assert fit["weight"] == pytest.approx(3.0, rel=0.15) and fit["pairs"] == 2000
    assert fit_weight(rel.tolist(), [(q, p) for p, q in pairs])["weight"] == pytest.approx(-fit["weight"], rel=1e-6)
    assert fit_weight(rel.tolist(), [])["weight"] == 0.0
    separable = fit_weight([0.0, 1.0], [(1, 0)])  # every pair agrees: the penalty keeps the weight finite
    assert math.isfinite(separable["weight"]) and separable["weight"] > 0


def test_on_topic_answers_are_more_relevant_and_prompts_are_cached() -> None:
    rel = shared("minilm-l6")
    prompts = [p for p in TOPICS for _ in (0, 1)]
    answers = [a for pair in TOPICS.values() for a in pair]
    sims = rel.similarity(prompts, answers)
    assert all(sims[i] > sims[i + 1] + 0.1 for i in range(0, len(sims), 2)), sims
    assert all(p in rel._prompts for p in TOPICS)
    assert rel.similarity(prompts, answers) == pytest.approx(sims, abs=1e-6)  # from the cache, the same
    with pytest.raises(ValueError, match="relevance_model"):
        RewardModelInfo("encoder", "mean", relevance_weight=1.0).validate()


def test_score_chunk_adds_each_completions_offset() -> None:
    class Constant(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return torch.zeros(input_ids.shape[0])

    items = [([1, 2, 3], None), ([4, 5], None)]
    scores, _, _ = score_chunk(Constant(), [EncodedRanking(items, [0, 1], offsets=[0.5, -2.0])], 0, torch.device("cpu"))
    assert scores.tolist() == [[0.5, -2.0]]


def rankings(n_copies: int) -> list[Ranking]:
    """Labelers who prefer the on-topic answer, on the same prompts under different ids."""
    out = []
    for c in range(n_copies):
        for i, (prompt, (good, bad)) in enumerate(TOPICS.items()):
            out.append(Ranking(f"p{c}-{i}", f"{prompt} ({c})", [bad, good], [1, 0], f"lab{c % 3}"))
    return out


def test_a_reward_model_trained_with_relevance_scores_with_it_everywhere(tmp_path) -> None:
    cfg = RMConfig(model=ModelConfig(name="minilm-l6"), lr=1e-5, max_length=64, prompts_per_step=4,
                   val_fraction=0.25, relevance="minilm-l6", normalize=False)  # fmt: skip
    res = train_reward_model(cfg, rankings(4), tmp_path / "rm", progress=False)
    assert res.relevance["weight"] > 0 and res.relevance["accuracy"] == 1.0  # every pair prefers the on-topic one
    model, tok = load_reward_model(res.model_dir)
    assert model.info.relevance_model == "minilm-l6" and model.info.relevance_weight == res.relevance["weight"]
    scorer = RewardScorer(model, tok)
    prompts, completions, pairs = ranking_pairs(rankings(1))
    head, rel = scorer.head_scores(prompts, completions), scorer.relevance(prompts, completions)
    full = scorer.raw_scores(prompts, completions)
    assert full == pytest.approx([h + model.info.relevance_weight * r for h, r in zip(head, rel, strict=True)])
    # Held-out accuracy is that of the whole score: the same model without its relevance term differs.
    with_rel = evaluate_reward_model(res.model_dir, rankings(1))
    info = json.loads((res.model_dir / "reward_config.json").read_text())
    (res.model_dir / "reward_config.json").write_text(json.dumps(info | {"relevance_weight": 0.0}))
    without = evaluate_reward_model(res.model_dir, rankings(1))
    assert with_rel["eval/margin"] != pytest.approx(without["eval/margin"])
    assert with_rel["eval/accuracy"] == 1.0
    assert [row for row in read_metrics(res.run_dir) if "relevance/weight" in row]
