"""Reward-model over-optimisation across PPO checkpoints (Gao et al. 2022, "Scaling laws for RM overoptimization").

As PPO moves the policy away from its initialisation, the proxy reward (the RM score) keeps
rising while the true objective (the gold utility of the simulated labelers) first rises and
then falls. Gao et al. plot both against the distance d = sqrt(KL(pi || pi_init)) and fit, for RL,

    R_gold(d) = d * (alpha - beta * d)        (gold score relative to the initial policy)

whose peak at d* = alpha / (2 beta) is where optimising the proxy stops paying.

Two sources of points, both from a PPO run folder:

* :func:`points_from_metrics`: the rows of ``metrics.jsonl`` that log ``kl`` and ``rm_score``
  (and ``gold_score`` when the trainer had the gold judge at hand);
* :func:`evaluate_checkpoints`: sample from each saved checkpoint on held-out prompts and
  measure gold score, RM score and KL to the reference (k3 estimator, summed over tokens).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignloop.config import GenerationConfig
from alignloop.errors import AlignloopError

#: Column names accepted for each quantity in metrics.jsonl (the first present wins).
#: The PPO trainer logs ``kl`` (k1) and ``kl_k3`` (lower variance, never negative), ``rm_score`` and
#: ``score_gold`` (the gold judge as an extra scorer); other trainers' names are accepted too.
KL_KEYS = ("kl_k3", "kl", "kl_k1", "objective/kl")
RM_KEYS = ("rm_score", "score", "reward/rm")
GOLD_KEYS = ("score_gold", "gold_score", "gold")


@dataclass
class OveroptPoint:
    """One policy along the PPO run: its KL to the initial policy and both scores."""

    step: int
    kl: float
    rm_score: float | None
    gold_score: float | None
    source: str = "metrics"  # "metrics" | "checkpoint"

    @property
    def sqrt_kl(self) -> float:
        return math.sqrt(max(0.0, self.kl))


def _first(row: dict[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def points_from_metrics(run_dir: str | os.PathLike[str]) -> list[OveroptPoint]:
    """Points from a PPO run's metrics.jsonl: every row with a step, a KL and an RM or gold score."""
    from alignloop.train.runlog import read_metrics

    out = []
    for row in read_metrics(run_dir):
        kl = _first(row, KL_KEYS)
        rm, gold = _first(row, RM_KEYS), _first(row, GOLD_KEYS)
        if kl is None or "step" not in row or (rm is None and gold is None):
            continue
        out.append(OveroptPoint(int(row["step"]), kl, rm, gold, "metrics"))
    return sorted(out, key=lambda p: p.step)


def is_ppo_run(run_dir: str | os.PathLike[str]) -> bool:
    """A folder whose metrics.jsonl logs a KL and a reward score: a PPO (or PPO-like) run."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return False
    return bool(points_from_metrics(run_dir))


def fit_gao(points: Sequence[OveroptPoint]) -> dict[str, float] | None:
    """Least-squares fit of gold - gold_0 = alpha d - beta d^2 with d = sqrt(KL); None with < 3 gold points.

    gold_0 is the gold score of the point with the smallest KL (the initial policy).
    """
    pts = [p for p in points if p.gold_score is not None]
    if len(pts) < 3:
        return None
    start = min(pts, key=lambda p: p.kl)
    d = np.array([p.sqrt_kl for p in pts])
    y = np.array([p.gold_score - start.gold_score for p in pts])  # type: ignore[operator]
    design = np.stack([d, -(d**2)], axis=1)
    if np.linalg.matrix_rank(design) < 2:
        return None
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    peak = alpha / (2 * beta) if beta > 0 else math.inf
    return {"alpha": float(alpha), "beta": float(beta), "gold_0": float(start.gold_score), "d_peak": float(peak)}


POLICY_WEIGHTS = "policy.safetensors"  # what the PPO trainer saves: the policy's trainable weights


def load_checkpoint_policy(path: str | os.PathLike[str], reference: str, dtype: str = "float32"):
    """(model, tokenizer) of the policy in a checkpoint folder (or its ``model/`` subfolder).

    Three layouts: a full Hugging Face folder; a PEFT adapter folder (merged into its base); or the
    PPO trainer's ``policy.safetensors`` of trainable weights on top of ``reference`` (the policy PPO
    started from): all weights for full fine-tuning, LoRA weights when the run's ``config.yaml``
    says ``lora_r > 0`` (the adapters are rebuilt with its settings and merged). The tokenizer is the
    checkpoint's own if saved, else the reference's.
    """
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    p = Path(path)
    if (p / "model").is_dir():
        p = p / "model"
    if (p / POLICY_WEIGHTS).exists():
        model = load_causal_lm(reference, dtype)
        run_dir = (p.parent if p.name == "model" else p).parent.parent
        model = _apply_trainable(model, p / POLICY_WEIGHTS, _run_config(run_dir))
    elif (p / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        from alignloop.models.loading import torch_dtype

        model = AutoPeftModelForCausalLM.from_pretrained(str(p), dtype=torch_dtype(dtype)).merge_and_unload()
    else:
        model = load_causal_lm(str(p), dtype)
    try:
        tok = load_tokenizer(str(p))
    except Exception:  # a checkpoint without tokenizer files: the reference's tokenizer is the policy's
        tok = load_tokenizer(reference)
    model.eval()
    return model, tok


def _run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    f = run_dir / "config.yaml"
    data = yaml.safe_load(f.read_text(encoding="utf-8")) if f.exists() else None
    return data if isinstance(data, dict) else {}


def _apply_trainable(model: Any, weights: Path, run_config: dict[str, Any]) -> Any:
    """The reference with a PPO checkpoint's trainable weights: copied in (full fine-tuning) or as LoRA
    adapters rebuilt from the run's config and merged."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(weights))
    lora_r = int(run_config.get("lora_r") or 0)
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model

        from alignloop.models.lora import lora_targets

        targets = lora_targets(str(run_config.get("lora_target_modules") or "all-linear"))
        lora = LoraConfig(r=lora_r, lora_alpha=int(run_config.get("lora_alpha", 32)), lora_dropout=0.0,
                          target_modules=targets)  # fmt: skip
        model = get_peft_model(model, lora)
    params = dict(model.named_parameters())
    unknown = [n for n in state if n not in params]
    if unknown:
        raise AlignloopError(
            f"{weights}: {len(unknown)} weights (e.g. {unknown[0]!r}) are not parameters of the reference policy",
            "give --reference the policy this PPO run started from (and keep its config.yaml next to checkpoints/)",
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))
    return model.merge_and_unload() if lora_r > 0 else model


def measure_policy(
    model: Any,
    tokenizer: Any,
    reference: Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    gold: Any = None,
    rm: Any = None,
    seed: int = 0,
) -> dict[str, float]:
    """Sample one response per prompt; mean KL(pi || ref) (k3 estimator summed over tokens), gold and RM scores."""
    import torch

    from alignloop.models.generation import generate, response_logprobs
    from alignloop.models.scoring import score_all

    gen = generate(model, tokenizer, prompts, config, seed=seed, return_logprobs=True)
    with torch.no_grad():
        ref_lp, _ = response_logprobs(
            reference,
            gen.query_ids,
            gen.query_mask,
            gen.response_ids,
            config.temperature,
            response_mask=gen.response_mask,
        )
    assert gen.logprobs is not None
    # k3 = (r - 1) - log r with r = ref / pi per token: unbiased for KL under samples of pi, never negative
    # (k1 = -log r is unbiased too but noisy enough to go negative on a few samples)
    log_r = (ref_lp - gen.logprobs) * gen.response_mask
    kl = ((log_r.exp() - 1 - log_r) * gen.response_mask).sum(-1)
    out = {"kl": float(kl.mean())}
    if gold is not None:
        out["gold_score"] = float(np.mean(score_all(gold, list(prompts), gen.texts)))
    if rm is not None:
        out["rm_score"] = float(np.mean(score_all(rm, list(prompts), gen.texts)))
    return out


def evaluate_checkpoints(
    run_dir: str | os.PathLike[str],
    reference: str,
    prompts: Sequence[str],
    config: GenerationConfig,
    gold: Any = None,
    rm: Any = None,
    seed: int = 0,
    dtype: str = "float32",
) -> list[OveroptPoint]:
    """Gold score, RM score and KL of the reference (step 0) and of every checkpoint of a PPO run."""
    from alignloop.models.loading import load_policy
    from alignloop.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise AlignloopError(
            f"{run_dir} has no checkpoints", "run PPO with checkpoint_every > 0, or point to its run folder"
        )
    ref_model, ref_tok = load_policy(reference, dtype)
    ref_model.eval()
    points = []
    m = measure_policy(ref_model, ref_tok, ref_model, prompts, config, gold, rm, seed)
    points.append(OveroptPoint(0, 0.0, m.get("rm_score"), m.get("gold_score"), "checkpoint"))
    for ck in ckpts:
        step = int(ck.name.split("-")[-1])
        model, tok = load_checkpoint_policy(ck, reference, dtype)
        m = measure_policy(model, tok, ref_model, prompts, config, gold, rm, seed)
        points.append(OveroptPoint(step, m["kl"], m.get("rm_score"), m.get("gold_score"), "checkpoint"))
        del model
    return points
