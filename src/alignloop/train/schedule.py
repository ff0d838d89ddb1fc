"""Optimizer and learning-rate schedules shared by the SFT, reward-model, DPO and PPO trainers.

The paper trains SFT with cosine learning-rate decay; we add a linear warm-up, which keeps the
first steps of Adam (whose second-moment estimate is still noisy) from wrecking a pretrained
model. Weight decay applies to matrices only: biases and norm gains are not regularised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length from a ratio of the total; at least one step when the ratio is positive."""
    if warmup_ratio <= 0 or total_steps <= 0:
        return 0
    return max(1, round(total_steps * warmup_ratio))


def cosine_with_warmup_factor(step: int, total_steps: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at ``step`` (0-based: the step about to be taken).

    Linear from 1/(warmup+1) up to 1 over ``warmup`` steps, then
    min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2, reaching ``min_ratio`` at ``total_steps``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`cosine_with_warmup_factor`; call ``step()`` after each optimizer step.

    Its state_dict holds only the step count, so a resumed run rebuilds it with the same
    arguments and loads the state."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup_factor(s, total_steps, warmup, min_ratio)
    )


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and non-decayed (biases, norms) groups."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (LoRA adapters only, when the base is frozen).
    ``betas``/``eps``: the stage config's ``adam_betas``/``adam_eps`` (the defaults are SFTConfig's;
    see there why). ``fused``: the fused kernel (one pass per tensor, no temporaries) where every
    parameter's device and dtype allow it; the same arithmetic, less memory traffic."""
    groups = param_groups(model.named_parameters(), weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    fused = fused and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def constant_or_linear(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """PPO's schedules: ``constant``, or ``linear`` decay from the full rate to 0 over ``total_steps``."""
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
