"""``alignloop compare`` on the tiny model with two methods: the table, the plot, the intervals."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import CompareBudget, CompareConfig, load_config
from alignloop.data.jsonl import read_jsonl, write_jsonl
from alignloop.data.records import Prompt, Ranking
from alignloop.errors import AlignloopError
from alignloop.models.loading import load_tokenizer
from alignloop.models.reward import pad_id

ANSWERS = ["Yes, gladly.", "Sure.", "Maybe later.", "No."]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(tmp_path, methods: str, budget: str = "{kind: samples}", episodes: int = 4, dpo_epochs: int = 1) -> Path:
    """The tiny model's compare config and its input files in ``tmp_path``."""
    rankings = [
        Ranking.from_ranks(f"p{i}", f"Question {i}?", ANSWERS[:3] if i % 2 else ANSWERS[1:], [0, 1, 2])
        for i in range(8)
    ]
    write_jsonl(tmp_path / "rankings.jsonl", rankings)
    write_jsonl(tmp_path / "prompts.jsonl", [Prompt(f"q{i}", f"Tell me about {i}.", "u") for i in range(4)])
    write_jsonl(tmp_path / "eval.jsonl", [Prompt(f"e{i}", f"Say something nice about {i}.", "h") for i in range(3)])
    (tmp_path / "ptx.txt").write_text("The cat sat on the mat.\n\nRain falls in spring.\n")
    (tmp_path / "compare.yaml").write_text(
        f"""
policy: tiny
rankings: {tmp_path / "rankings.jsonl"}
prompts: {tmp_path / "prompts.jsonl"}
eval_prompts: {tmp_path / "eval.jsonl"}
ptx_corpus: {tmp_path / "ptx.txt"}
methods: {methods}
budget: {budget}
rm: {{model: {{name: tiny}}, lr: 0.01, val_fraction: 0.25}}
ppo: {{total_episodes: {episodes}, batch_size: 4, minibatch_size: 4, ppo_epochs: 1, group_size: 2, lr: 0.01,
      generation: {{max_new_tokens: 4}}}}
dpo: {{lr: 0.01, val_fraction: 0.25, epochs: {dpo_epochs}}}
rejection_ft: {{n: 2, generation: {{max_new_tokens: 4, batch_size: 2}},
               sft: {{lr: 0.01, epochs: 1, batch_size: 1, lora_r: 4}}}}
eval: {{samples_per_prompt: 2, bootstrap: 50, generation: {{max_new_tokens: 4}}}}
"""
    )
    return tmp_path / "compare.yaml"


def test_compare_two_methods_writes_the_table_and_the_plot(tmp_path) -> None:
    config = _inputs(tmp_path, "[rloo, dpo, bon2, rejection_ft]")
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "compare.md").read_text()
    for method in ("rloo", "dpo", "bon2", "rejection_ft", "sft"):
        assert f"| {method} |" in table
    assert "gold win rate vs SFT [95 % CI]" in result.output
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]}
    for method in ("rloo", "dpo", "bon2"):
        r = rows[method]
        for judge in ("gold", "rm"):
            lo, hi = r[f"{judge}_ci"]
            assert 0 <= lo <= r[f"{judge}_win_rate"] <= hi <= 1
        assert r["perplexity"] > 1
    assert rows["bon2"]["kl"] == pytest.approx(0.6931 - 0.5, abs=1e-4) and rows["bon2"]["samples"] == 2 * 3 * 2
    assert rows["rloo"]["samples"] == 4 and rows["dpo"]["samples"] == 0 and rows["dpo"]["kl"] != 0
    assert (tmp_path / "out" / "rloo" / "policy").is_dir() and (tmp_path / "out" / "dpo" / "policy").is_dir()
    # rejection-sampling FT: best-of-2 on total_episodes / 2 = 2 prompts (4 policy samples, as RLOO), then
    # 2 SFT steps (batch 1) on the RM's favourites, which are the training data it wrote
    rs = rows["rejection_ft"]
    assert rs["samples"] == 4 and rs["steps"] == 2 and rs["stopped"] == "complete" and rs["kl"] != 0
    best = [json.loads(line) for line in (tmp_path / "out" / "rejection_ft" / "best_of_n.jsonl").open()]
    assert [b["prompt_id"] for b in best] == ["q0", "q1"] and all(len(b["completions"]) == 2 for b in best)
    assert all(b["best_score"] == max(b["scores"]) for b in best)
    assert rows["rloo"]["stopped"] == rows["dpo"]["stopped"] == "complete"
    assert "Budget: the same number of policy samples" in table
    # the HTML report of the run folder shows the comparison: its table (every method, with intervals) and plot
    result = CliRunner().invoke(app, ["report", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    section = page[page.index("Methods compared on the same feedback") :]
    for method in ("rloo", "dpo", "bon2", "rejection_ft", "sft"):
        assert f"<td>{method}</td>" in section
    lo, hi = rows["dpo"]["gold_ci"]
    assert f"{100 * rows['dpo']['gold_win_rate']:.1f} % [{100 * lo:.1f} %, {100 * hi:.1f} %]" in section
    png = (tmp_path / "out" / "compare.png").read_bytes()
    assert base64.b64encode(png).decode() in section
    assert sorted(p.name for p in (tmp_path / "out" / "report").glob("*compare.png"))


def test_compare_wall_time_budget_stops_every_method_at_a_step_boundary(tmp_path) -> None:
    """A budget spent at once: each trained method stops after its first step (a deterministic stand-in
    for a budget crossed mid-run), writes a policy, and the table says what each spent."""
    config = _inputs(tmp_path, "[ppo_ptx, dpo, rejection_ft]", "{kind: wall_time, seconds: 0.001}", episodes=400,
                     dpo_epochs=50)  # fmt: skip
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]}
    assert all(rows[m]["stopped"] == "budget" for m in ("ppo_ptx", "dpo", "rejection_ft"))
    # PPO-ptx (with its value model): one iteration of its 100 (4 samples); its policy exists
    assert rows["ppo_ptx"]["steps"] == 1 and rows["ppo_ptx"]["samples"] == 4
    assert (tmp_path / "out" / "ppo_ptx" / "policy" / "config.json").exists()
    metrics = [json.loads(line) for line in (tmp_path / "out" / "ppo_ptx" / "metrics.jsonl").open()]
    assert max(m["step"] for m in metrics) == 1
    # rejection FT: one sampling chunk (batch 2 / n 2 = 1 prompt: 2 samples of the 400 / 2 budgeted), one SFT step
    assert rows["rejection_ft"]["samples"] == 2 and rows["rejection_ft"]["steps"] == 1
    # DPO: one step of its 100 (50 epochs of 2), whose policy is written
    assert rows["dpo"]["steps"] == 1 and rows["dpo"]["samples"] == 0
    assert (tmp_path / "out" / "dpo" / "policy" / "config.json").exists()
    assert "Budget: the same wall time" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_config_errors_name_the_key(tmp_path) -> None:
    from alignloop.compare import run_compare

    with pytest.raises(AlignloopError, match="methods: unknown method 'sac'"):
        run_compare(CompareConfig(policy="tiny", rankings="r", eval_prompts="e", methods=["sac"]), tmp_path)
    with pytest.raises(AlignloopError, match="ptx_corpus"):
        run_compare(
            CompareConfig(policy="tiny", rankings="r", eval_prompts="e", prompts="p", methods=["ppo_ptx"]), tmp_path
        )
    with pytest.raises(AlignloopError, match="budget.kind: must be samples or wall_time"):
        run_compare(
            CompareConfig(policy="tiny", rankings="r", eval_prompts="e", budget=CompareBudget("time")), tmp_path
        )
    with pytest.raises(AlignloopError, match="budget.seconds"):
        run_compare(
            CompareConfig(policy="t", rankings="r", eval_prompts="e", budget=CompareBudget("wall_time")), tmp_path
        )


def test_wall_time_budget_is_scoped_and_spent_at_its_deadline() -> None:
    from alignloop.train.checkpoint import budget_active, budget_spent, wall_time_budget

    assert not budget_active() and not budget_spent()
    with wall_time_budget(3600):
        assert budget_active() and not budget_spent()
        with wall_time_budget(0.0):  # a nested budget replaces the outer one while it lasts
            assert budget_spent()
        assert not budget_spent()
    with wall_time_budget(None):
        assert not budget_active()
    assert not budget_active()


def test_dpo_stops_at_the_first_step_boundary_past_the_budget_with_that_steps_policy(tmp_path, monkeypatch) -> None:
    """DPO under a wall-time budget found spent as step 2 ends (of 3 epochs x 2 steps): the run ends
    there, as finished, and its policy (LoRA merged) has step 2's weights, those of an unbudgeted run."""
    from alignloop import compare
    from alignloop.models.loading import load_causal_lm
    from alignloop.train import checkpoint
    from alignloop.train.dpo import sequence_logprobs, train_dpo
    from alignloop.train.runlog import read_metrics
    from alignloop.train.sft import _build_model, build_example

    cfg = load_config(_inputs(tmp_path, "[dpo]", "{kind: wall_time, seconds: 3600}", dpo_epochs=3), CompareConfig)
    cfg.dpo.lora_r = 4
    calls = iter([False, True])  # budget_spent() as DPO's steps 1 and 2 end
    monkeypatch.setattr(checkpoint, "budget_spent", lambda: next(calls))
    rankings = read_jsonl(tmp_path / "rankings.jsonl", Ranking)
    with checkpoint.wall_time_budget(3600):
        folder, spent = compare._dpo(cfg, rankings, tmp_path / "dpo")
    assert spent == {"samples": 0, "steps": 2, "stopped": "budget"}
    assert folder == str(tmp_path / "dpo" / "policy")
    assert max(r["step"] for r in read_metrics(tmp_path / "dpo")) == 2
    assert checkpoint.list_checkpoints(tmp_path / "dpo") == []  # finished: no checkpoint for a resume to take
    assert json.loads((tmp_path / "dpo" / "finished.json").read_text())["stopped_by_budget"] is True

    # the same run without a budget, stopped after step 3 with checkpoints of steps 1 and 2
    dpo_cfg = dataclasses.replace(cfg.dpo, model=dataclasses.replace(cfg.dpo.model, name="tiny"))
    ref_cfg = dataclasses.replace(dpo_cfg, checkpoint_every=1, keep_checkpoints=3)

    def stop(step: int, _metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpo(ref_cfg, rankings, tmp_path / "ref", progress=False, on_step=stop)
    steps = {c.name: _build_model(dpo_cfg, c / "model").eval() for c in checkpoint.list_checkpoints(tmp_path / "ref")}
    assert sorted(steps) == ["step-000001", "step-000002"]
    policy, sft = load_causal_lm(folder).eval(), load_causal_lm("tiny").eval()
    tok = load_tokenizer(folder)
    rows = [build_example(tok, "Question 1?", a, 64) for a in ANSWERS]
    with torch.no_grad():
        logps = {
            name: sequence_logprobs(m, rows, pad_id(tok), torch.device("cpu"))
            for name, m in (*steps.items(), ("policy", policy), ("sft", sft))
        }
    assert torch.allclose(logps["policy"], logps["step-000002"], atol=1e-5)
    assert not torch.allclose(logps["policy"], logps["step-000001"], atol=1e-4)
    assert not torch.allclose(logps["policy"], logps["sft"], atol=1e-4)


def test_compare_resumes_after_an_interruption_keeping_what_finished(tmp_path, monkeypatch) -> None:
    """Interrupted while DPO trains, then while DPO's KL is measured: each resume keeps the reward
    model, RLOO's policy and every answer set already drawn, and redoes only what was unfinished."""
    from alignloop import compare

    config = _inputs(tmp_path, "[rloo, dpo, bon2]")
    cfg, out = load_config(config, CompareConfig), tmp_path / "out"
    trained, sampled, real_train, real_sample = [], [], compare._train, compare.sample_completions_for_eval

    def train(cfg, method, *args):
        trained.append(method)
        if method == "dpo" and trained.count("dpo") == 1:
            (args[-1] / "partial").mkdir(parents=True)  # what an interrupted trainer leaves
            raise KeyboardInterrupt
        return real_train(cfg, method, *args)

    def sample(cfg, policy, texts, *args):
        sampled.append(policy)
        return real_sample(cfg, policy, texts, *args)

    def kl(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "_train", train)
    monkeypatch.setattr(compare, "sample_completions_for_eval", sample)
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(cfg, out)
    assert trained == ["rloo", "dpo"] and (out / "rloo" / "compare_stage.json").exists()
    with pytest.raises(AlignloopError, match="pass --resume"):
        compare.run_compare(cfg, out)
    changed = dataclasses.replace(cfg, eval_seed=7)
    with pytest.raises(AlignloopError, match="eval_seed"):
        compare.run_compare(changed, out, resume=True)

    real_kl = compare._kl_to_sft
    monkeypatch.setattr(compare, "_kl_to_sft", kl)
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(cfg, out, resume=True)
    assert trained == ["rloo", "dpo", "dpo"] and not (out / "dpo" / "partial").exists()
    assert len(sampled) == 3  # SFT, RLOO and DPO answered once; then KL was interrupted
    monkeypatch.setattr(compare, "_kl_to_sft", real_kl)
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert trained == ["rloo", "dpo", "dpo"] and len(sampled) == 3  # nothing trained or drawn again
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert set(rows) == {"rloo", "dpo", "bon2", "sft"} and rows["rloo"]["samples"] == 4
    assert rows["dpo"]["kl"] != 0 and "| dpo |" in result.output
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(tmp_path / "none"), "--resume"])
    assert isinstance(result.exception, AlignloopError) and "nothing to resume" in str(result.exception)


def test_ppo_ptx_never_trains_on_the_documents_perplexity_is_measured_on(tmp_path, monkeypatch) -> None:
    """The alignment-tax column would only say PPO-ptx saw the text if it trained on it: the corpus's last
    ``ptx_heldout_fraction`` of documents is held out for perplexity, the rest is PPO-ptx's data."""
    from alignloop import compare
    from alignloop.train import ppo

    config = _inputs(tmp_path, "[ppo_ptx]")
    docs = [f"Document number {i} talks about rivers and hills." for i in range(8)]
    (tmp_path / "ptx.txt").write_text("\n\n".join(docs) + "\n")
    seen: dict[str, list] = {"trained": [], "measured": []}
    real_train_ppo, real_perplexity = ppo.train_ppo, compare._perplexity

    def train_ppo(*args, ptx_texts=None, **kwargs):
        seen["trained"].append(list(ptx_texts))
        return real_train_ppo(*args, ptx_texts=ptx_texts, **kwargs)

    def perplexity(policy, corpus):
        seen["measured"].append(list(corpus))
        return real_perplexity(policy, corpus)

    monkeypatch.setattr(ppo, "train_ppo", train_ppo)
    monkeypatch.setattr(compare, "_perplexity", perplexity)
    compare.run_compare(load_config(config, CompareConfig), tmp_path / "out")
    assert seen["trained"] == [docs[:6]]  # 8 documents, a quarter held out
    assert seen["measured"] == [docs[6:], docs[6:]]  # SFT and PPO-ptx
    (tmp_path / "one.txt").write_text("Only one document.\n")
    cfg = load_config(config, CompareConfig)
    cfg.ptx_corpus = str(tmp_path / "one.txt")
    with pytest.raises(AlignloopError, match="at least 2 are needed"):
        compare.run_compare(cfg, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # the bad input left nothing behind
    with pytest.raises(AlignloopError, match="ptx_heldout_fraction"):
        compare.run_compare(dataclasses.replace(cfg, ptx_heldout_fraction=1.0), tmp_path / "out3")
