"""Update, PPO step 6: ``ppo_epochs`` passes over shuffled minibatches of the rollout.

Each minibatch makes one policy step on :func:`policy_objective` (the paper's objective,
negated: the clipped surrogate, plus gamma times the pretraining loss for PPO-ptx) and one value
step on the clipped value loss toward the GAE returns. The two steps are independent of each
other (the value model is its own network), so on a CPU they may run side by side.

Loss sums are divided by (global tokens / processes): DDP's gradient mean is then the gradient
of the mean over every token of the global minibatch, and N processes compute what one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignloop.train.cpu_lanes import release_freed_memory
from alignloop.train.experience import Rollout, micro_batches, policy_logprobs, values_of
from alignloop.train.losses import kl_penalty_loss, ppo_policy_loss, ppo_value_loss, ptx_loss
from alignloop.train.rollout import endless_epochs

if TYPE_CHECKING:
    from alignloop.train.ppo import PPOTrainer


def policy_objective(
    logprobs: Tensor,
    part: Rollout,
    tokens: Tensor,
    clip_range: float,
    *,
    kl_coef: float | None = None,
    ptx: Tensor | float = 0.0,
    ptx_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one policy step (InstructGPT eq. 2, negated), with its statistics:

        L(phi) = L_clip(phi) + kl_coef * L_KL(phi) + ptx_coef * L_ptx(phi)

    L_clip: PPO's clipped surrogate on the rollout's advantages (KL k1 is in the reward already);
    L_KL: the k3 KL to the reference as a loss term (GRPO only; ``kl_coef`` None otherwise);
    L_ptx: the mean token NLL of a pretraining batch (PPO-ptx, gamma = ``ptx_coef``; 0 without)."""
    clipped, stats = ppo_policy_loss(
        logprobs, part.logprobs, part.advantages, part.mask, clip_range, token_count=tokens
    )
    kl = 0.0 if kl_coef is None else kl_penalty_loss(logprobs, part.ref_logprobs, part.mask, token_count=tokens)
    loss = clipped + (kl_coef or 0.0) * kl + ptx_coef * ptx
    stats["policy_loss_sum"] = (clipped + kl_coef * kl if kl_coef is not None else clipped).detach() * tokens
    if kl_coef is not None:
        stats["kl_loss_sum"] = kl.detach() * tokens
    return loss, stats


def ppo_update(t: PPOTrainer, rollout: Rollout, iteration: int) -> dict[str, float]:
    """``ppo_epochs`` passes over shuffled minibatches; each minibatch makes one policy step
    and one value step (critic-free: no value step)."""
    cfg = t.config
    t.policy.train()
    steps = [partial(policy_step, t)]
    if t.value is not None:
        t.value.train()
        steps.append(partial(value_step, t))
    totals: dict[str, Tensor] = {}
    update = 0
    for epoch in range(cfg.ppo_epochs):
        # The minibatch order: the data seed, the iteration and the epoch (not the sampling RNG).
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration * 1_009 + epoch)
        perm = torch.randperm(len(rollout), generator=g)
        for k in range(t.n_minibatches):
            mb = rollout.select(perm[k * t.local_minibatch : (k + 1) * t.local_minibatch].to(t.device))
            tokens = t.all_sum(mb.mask.sum().double()).float() / t.world
            parts = micro_batches(mb, cfg.micro_batch_size)
            ptx_rows = ptx_batch(t, iteration, update) if cfg.gamma_ptx > 0 else None
            results = t.lanes.run(
                partial(steps[0], parts, tokens, ptx_rows),
                *(partial(step, parts, tokens) for step in steps[1:]),
                balanced=t.balanced_update,
            )
            for stats in results:
                for name, v in stats.items():
                    totals[name] = totals.get(name, 0) + v.detach().double()
            update += 1

    names = sorted(totals)
    summed = t.all_sum(torch.stack([totals[k] for k in names])) if names else torch.zeros(0)
    s = dict(zip(names, summed.tolist(), strict=True))
    n_tokens = max(s.get("tokens", 1.0), 1.0)
    metrics = {
        "policy_loss": s["policy_loss_sum"] / n_tokens,
        "clipfrac": s["clipfrac_sum"] / n_tokens,
        "approx_kl": s["approx_kl_sum"] / n_tokens,
        "lr": t.policy_sched.get_last_lr()[0],
    }
    if "value_loss_sum" in s:
        metrics["value_loss"] = s["value_loss_sum"] / n_tokens
        metrics["vf_clipfrac"] = s["vf_clipfrac_sum"] / n_tokens
    if "kl_loss_sum" in s:  # grpo
        metrics["kl_loss"] = s["kl_loss_sum"] / n_tokens
    if "ptx_loss_sum" in s:
        metrics["ptx_loss"] = s["ptx_loss_sum"] / max(s["ptx_tokens"], 1.0)
    return metrics


def policy_step(
    t: PPOTrainer, parts: list[Rollout], tokens: Tensor, ptx_rows: tuple[Tensor, Tensor] | None
) -> dict[str, Tensor]:
    """One policy step: :func:`policy_objective` over the micro-batches (gradients accumulated);
    the pretraining batch joins the last micro-batch's objective."""
    cfg = t.config
    kl_coef = t.kl_ctl.value if cfg.algorithm == "grpo" else None  # critic-free GRPO: KL as a loss term
    stats: dict[str, Tensor] = {}
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        with sync_if(t, t.policy, last):
            logprobs, _ = policy_logprobs(t, part.query_ids, part.query_mask, part.response_ids, part.mask, t.policy)
            ptx, s = ptx_loss_of(t, *ptx_rows) if last and ptx_rows is not None else (0.0, {})
            loss, pg = policy_objective(
                logprobs, part, tokens, cfg.clip_range, kl_coef=kl_coef, ptx=ptx, ptx_coef=cfg.gamma_ptx
            )
            t.precision.backward(t.acc, loss)
        release_freed_memory()
        _accumulate(stats, {**pg, **s})
    optimizer_step(t, t.policy, t.policy_opt, t.policy_sched)
    return stats


def value_step(t: PPOTrainer, parts: list[Rollout], tokens: Tensor) -> dict[str, Tensor]:
    """One value step: the clipped value loss toward the GAE returns."""
    cfg = t.config
    stats: dict[str, Tensor] = {}
    for i, part in enumerate(parts):
        with sync_if(t, t.value, i == len(parts) - 1):
            (values,) = values_of(t, part.query_ids, part.query_mask, part.response_ids, part.mask)
            loss, s = ppo_value_loss(
                values, part.values, part.returns, part.mask, cfg.clip_range_value, token_count=tokens
            )
            t.precision.backward(t.acc, cfg.vf_coef * loss)
        release_freed_memory()
        _accumulate(stats, {"vf_clipfrac_sum": s["vf_clipfrac_sum"], "value_loss_sum": loss.detach() * tokens})
    optimizer_step(t, t.value, t.value_opt, t.value_sched)
    return stats


def ptx_batch(t: PPOTrainer, iteration: int, update: int) -> tuple[Tensor, Tensor]:
    """This process's share of the update's pretraining batch (ids, mask), right-padded: the
    next positions of the endless epochs over the corpus (seed + 1, shared by processes)."""
    from alignloop.train.distributed import rank_slice

    cfg = t.config
    step = iteration * cfg.ppo_epochs * t.n_minibatches + update
    b = cfg.ptx_batch_size
    chosen = endless_epochs(len(t.ptx), cfg.seed + 1, step * b, b)
    rows = [t.ptx[i] for i in rank_slice(chosen, t.rank, t.world)]
    ids, attn = t.right_pad(rows)
    return ids.to(t.device), attn.to(t.device)


def ptx_loss_of(t: PPOTrainer, ids: Tensor, attn: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-ptx: the mean token NLL of a pretraining batch under the policy (temperature 1)."""
    logits = t.policy(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
    labels, mask = ids[:, 1:], attn[:, 1:].float()
    tokens = t.all_sum(mask.sum().double()).float() / t.world
    loss = ptx_loss(logits, labels, mask, token_count=tokens)
    return loss, {"ptx_loss_sum": loss.detach() * tokens, "ptx_tokens": mask.sum()}


def sync_if(t: PPOTrainer, model: Any, sync: bool) -> Any:
    """Gradients are averaged across processes on the last backward of an update only."""
    return contextlib.nullcontext() if sync else t.acc.no_sync(model)


def optimizer_step(t: PPOTrainer, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Clip, step, advance the schedule, and free the gradients at once (memory)."""
    t.precision.step(optimizer, [p for p in model.parameters() if p.requires_grad], t.config.max_grad_norm)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    release_freed_memory()


def _accumulate(into: dict[str, Tensor], stats: Mapping[str, Tensor]) -> None:
    for k, v in stats.items():
        into[k] = into.get(k, 0) + v.detach()
