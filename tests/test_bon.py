"""Best-of-N picks the highest-scoring sample; rejection-sampling FT moves the policy toward it."""

from __future__ import annotations

import json

import pytest

from alignloop.config import BoNConfig, GenerationConfig, ModelConfig, SFTConfig
from alignloop.data.records import Prompt
from alignloop.models import load_policy, load_tokenizer
from alignloop.models.scoring import FunctionScorer, score_all
from alignloop.train.rejection import BestOfN, best_of_n, rejection_sampling_finetune, write_best_of_n
from alignloop.train.sft import build_example


def count_e(prompt: str, completion: str) -> float:
    return float(completion.count("e"))


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny")


def test_best_of_n_returns_the_max_scoring_sample_per_prompt(tiny) -> None:
    model, tok = tiny
    prompts = ["Tell me about the sea.", "Hi", "Name three fruits."]
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=5)
    result = best_of_n(model, tok, prompts, FunctionScorer(count_e), 4, gen, seed=1)
    assert result.n == 4 and len(result.completions) == 3 and all(len(c) == 4 for c in result.completions)
    for p, comps, scores, best, best_score in zip(
        prompts, result.completions, result.scores, result.best, result.best_scores, strict=True
    ):
        assert scores == [count_e(p, c) for c in comps]
        assert best_score == max(scores) and best == comps[scores.index(max(scores))]
        assert len(set(comps)) > 1  # N independent samples, not one sample N times
    again = best_of_n(model, tok, prompts, FunctionScorer(count_e), 4, gen, seed=1)
    assert again.completions == result.completions


def test_ties_go_to_the_first_sample_and_the_summary_is_exact() -> None:
    r = BestOfN(
        prompts=["a", "b"],
        completions=[["x", "y", "z"], ["u", "v", "w"]],
        scores=[[1.0, 3.0, 3.0], [0.0, 0.0, 0.0]],
        has_eos=[[True, False, True], [True, True, True]],
    )
    assert r.best_index == [1, 0] and r.best == ["y", "u"] and r.best_scores == [3.0, 0.0]
    s = r.summary()
    assert s["bon/best_score_mean"] == 1.5
    assert s["bon/sample_score_mean"] == pytest.approx(7 / 6)
    assert s["bon/eos_rate"] == pytest.approx(5 / 6)
    demos = r.demonstrations()
    assert [d.completion for d in demos] == ["y", "u"] and demos[0].labeler_id == "best-of-3"


def test_records_round_trip(tmp_path) -> None:
    r = BestOfN(["a"], [["x", "yy"]], [[1.0, 2.0]], [[True, False]], prompt_ids=["p1"])
    path = write_best_of_n(r, tmp_path)
    rows = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert rows == [
        {"prompt_id": "p1", "prompt": "a", "completions": ["x", "yy"], "scores": [1.0, 2.0],
         "has_eos": [True, False], "best": "yy", "best_score": 2.0}
    ]  # fmt: skip
    assert BestOfN.from_records(rows) == r
    assert json.loads((tmp_path / "summary.json").read_text())["bon/best_score_mean"] == 2.0


def test_scorer_must_return_one_score_per_completion() -> None:
    class Broken:
        def score_batch(self, prompts, completions):
            return [0.0]

    with pytest.raises(ValueError, match="returned 1 scores for 2 completions"):
        score_all(Broken(), ["a", "b"], ["x", "y"])


def test_a_cut_off_sample_is_trained_without_eos() -> None:
    tok = load_tokenizer("tiny")
    ended = build_example(tok, "Hi", "Hello there", 256, ends=True)
    cut = build_example(tok, "Hi", "Hello there", 256, ends=False)
    assert ended.input_ids == cut.input_ids + [tok.eos_token_id]
    assert cut.labels[-1] != tok.eos_token_id


@pytest.mark.slow
def test_rejection_sampling_finetune_raises_the_score(tiny, tmp_path) -> None:
    model, tok = tiny
    scorer = FunctionScorer(count_e)
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=32)
    prompts = [Prompt(f"p{i}", f"Tell me about topic {i}.", "u1") for i in range(8)]
    sft = SFTConfig(epochs=6, lr=5e-2, batch_size=2, warmup_ratio=0.0, eval_at_start=False)
    cfg = BoNConfig(policy=ModelConfig(name="tiny"), n=8, generation=gen, sft=sft)
    samples, result = rejection_sampling_finetune(cfg, prompts, scorer, tmp_path / "run")
    assert samples.summary()["bon/best_score_mean"] > samples.summary()["bon/sample_score_mean"]
    assert (tmp_path / "run" / "best_of_n.jsonl").exists() and (tmp_path / "run" / "bon_config.yaml").exists()

    held_out = [f"Tell me about topic {i}." for i in range(100, 116)]  # prompts the FT never saw, 4 samples each
    before = best_of_n(model, tok, held_out, scorer, 4, gen, seed=5).summary()["bon/sample_score_mean"]
    tuned, tuned_tok = load_policy(str(result.final_dir))
    after = best_of_n(tuned, tuned_tok, held_out, scorer, 4, gen, seed=5).summary()["bon/sample_score_mean"]
    assert after > before + 1.0, (before, after)


def test_cli_bon_writes_samples_and_needs_a_scorer(tmp_path) -> None:
    from typer.testing import CliRunner

    from alignloop.cli.main import app
    from alignloop.data.jsonl import write_jsonl
    from alignloop.errors import AlignloopError

    write_jsonl(
        tmp_path / "prompts.jsonl", [Prompt(f"p{i}", f"Write a happy line about topic {i}.", "u") for i in range(2)]
    )
    (tmp_path / "bon.yaml").write_text("generation:\n  max_new_tokens: 5\n  temperature: 1.0\n")
    args = ["bon", "--policy", "tiny", "--prompts", str(tmp_path / "prompts.jsonl"), "--n", "3",
            "--out", str(tmp_path / "out"), "--config", str(tmp_path / "bon.yaml")]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--judge", "gold"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "best_of_n.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["p0", "p1"]
    assert all(len(r["completions"]) == 3 and r["best_score"] == max(r["scores"]) for r in rows)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["bon/n"] == 3.0
    with pytest.raises(AlignloopError, match="needs a scorer"):
        CliRunner().invoke(app, args, catch_exceptions=False)
    with pytest.raises(AlignloopError, match="unknown judge 'silver'"):
        CliRunner().invoke(app, [*args, "--judge", "silver"], catch_exceptions=False)
