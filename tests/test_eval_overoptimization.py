"""Over-optimisation: points from a PPO run folder, the Gao et al. fit, and checkpoints measured with the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignloop.config import GenerationConfig
from alignloop.errors import AlignloopError
from alignloop.evaluate import overoptimization as oo
from alignloop.models.scoring import FunctionScorer
from alignloop.train.checkpoint import save_checkpoint


def _write_metrics(run, rows):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_points_from_metrics(tmp_path):
    run = tmp_path / "ppo"
    _write_metrics(
        run,
        [
            {"step": 2, "kl": 0.7, "kl_k3": 0.5, "rm_score": 0.3, "score_gold": 0.6, "loss": 1.0},
            {"step": 1, "kl": 0.1, "rm_score": 0.1},
            {"step": 3, "loss": 0.5},  # no KL: not a point
            {"step": 4, "kl": None, "rm_score": 0.2},  # a NaN logged as null
        ],
    )
    pts = oo.points_from_metrics(run)
    assert [(p.step, p.kl, p.rm_score, p.gold_score) for p in pts] == [(1, 0.1, 0.1, None), (2, 0.5, 0.3, 0.6)]
    assert pts[1].sqrt_kl == pytest.approx(math.sqrt(0.5))
    assert oo.is_ppo_run(run) and not oo.is_ppo_run(tmp_path)


def test_gao_fit_recovers_alpha_and_beta():
    alpha, beta, g0 = 0.8, 0.5, 0.2
    pts = []
    for i, d in enumerate([0.0, 0.3, 0.7, 1.0, 1.5, 2.0]):
        pts.append(oo.OveroptPoint(i, d * d, rm_score=d, gold_score=g0 + d * (alpha - beta * d)))
    fit = oo.fit_gao(pts)
    assert fit["alpha"] == pytest.approx(alpha) and fit["beta"] == pytest.approx(beta)
    assert fit["gold_0"] == pytest.approx(g0) and fit["d_peak"] == pytest.approx(alpha / (2 * beta))
    assert oo.fit_gao(pts[:2]) is None


def test_checkpoints_measured_against_the_reference(tmp_path):
    from alignloop.models.loading import load_policy

    model, tok = load_policy("tiny")
    run = tmp_path / "ppo"

    def saver(m):
        return lambda path: m.save_pretrained(str(path))

    def trainable(m):  # the PPO trainer's layout: policy.safetensors of the trainable weights
        def save(path):
            from safetensors.torch import save_file

            path.mkdir(parents=True)
            save_file({n: p.detach().contiguous() for n, p in m.named_parameters()}, str(path / oo.POLICY_WEIGHTS))

        return save

    save_checkpoint(run, 1, saver(model))  # a full HF folder identical to the reference: KL 0
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(run, 2, trainable(model))  # perturbed: KL > 0
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, batch_size=8)
    gold = FunctionScorer(lambda p, c: len(c) / 100)
    pts = oo.evaluate_checkpoints(run, "tiny", ["Say hi.", "Name a color.", "Count to three."], cfg, gold, None, 0)
    assert [p.step for p in pts] == [0, 1, 2]
    assert pts[0].kl == 0.0 and abs(pts[1].kl) < 1e-3
    assert pts[2].kl > 0.01
    assert all(p.gold_score is not None and p.rm_score is None for p in pts)
    with pytest.raises(AlignloopError, match="has no checkpoints"):
        oo.evaluate_checkpoints(tmp_path / "empty", "tiny", ["x"], cfg, gold)


def test_checkpoint_with_foreign_weights_names_the_problem(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "step-000003" / "model"
    folder.mkdir(parents=True)
    save_file({"base_model.model.lora_A.weight": torch.zeros(2, 2)}, str(folder / oo.POLICY_WEIGHTS))
    with pytest.raises(AlignloopError, match="not parameters of the reference policy"):
        oo.load_checkpoint_policy(folder.parent, "tiny")


def test_lora_checkpoint_is_rebuilt_from_the_run_config(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from alignloop.models.loading import load_causal_lm

    torch.manual_seed(0)
    peft_model = get_peft_model(load_causal_lm("tiny"), LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # LoRA B starts at zero; make the adapters matter
    run = tmp_path / "ppo"
    folder = run / "checkpoints" / "step-000002" / "model"
    folder.mkdir(parents=True)
    trainable = {n: p.detach().contiguous() for n, p in peft_model.named_parameters() if p.requires_grad}
    save_file(trainable, str(folder / oo.POLICY_WEIGHTS))
    (run / "config.yaml").write_text("lora_r: 2\nlora_alpha: 4\nlora_target_modules: all-linear\n")

    merged, _ = oo.load_checkpoint_policy(folder.parent, "tiny")
    ids = torch.tensor([[5, 17, 300, 42]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base = load_causal_lm("tiny")(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, base, atol=1e-3)


def test_eval_cli_writes_the_curve_of_a_ppo_run(tmp_path):
    from typer.testing import CliRunner

    from alignloop.cli.main import app

    run = tmp_path / "ppo"
    rows = [{"step": s, "kl_k3": 0.04 * s * s, "rm_score": 0.1 * s, "score_gold": 0.5 + 0.2 * s - 0.05 * s * s}
            for s in range(5)]  # fmt: skip
    _write_metrics(run, rows)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--reference", "tiny", "--ppo-run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "overoptimization.json").read_text())
    (entry,) = doc["runs"]
    assert [p["step"] for p in entry["metrics"]] == [0, 1, 2, 3, 4] and "checkpoints" not in entry
    # gold - 0.5 = 0.2 s - 0.05 s^2 with d = 0.2 s: alpha = 1.0, beta = 1.25
    assert entry["fit"]["alpha"] == pytest.approx(1.0) and entry["fit"]["beta"] == pytest.approx(1.25)
