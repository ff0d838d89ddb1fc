"""Experience, PPO steps 3-5: scores, reference log-probs and values, then rewards and advantages.

3. The RM scores each response truncated after its first EOS; a response without EOS gets the
   fixed penalty score instead (optionally after running score normalisation).
4. log pi_SFT(y_t) from the frozen reference (with LoRA: the policy with its adapters off),
   V(y_<t) from the value model, and log pi_old(y_t): the sampler's (as TRL), or recomputed.
5. r_t = -beta * KL_t with KL k1 = log pi_old - log pi_SFT, the score added on the last token;
   GAE(gamma, lambda) and whitened advantages (critic-free: the group baselines of
   :mod:`~alignloop.train.ppo_core`). k3 is reported beside k1.

The arithmetic is in :mod:`alignloop.train.ppo_core`; this module runs the passes. Every pass goes
through micro-batches of ``micro_batch_size`` rows grouped by query length and trimmed of their
common padding, and logits are computed only where a response token is predicted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignloop.models.generation import Generation, position_ids_from_mask, response_logprobs
from alignloop.models.scoring import score_all
from alignloop.train import ppo_core as core
from alignloop.train.cpu_lanes import block_params, plan_lanes
from alignloop.train.runlog import Timer

if TYPE_CHECKING:
    from alignloop.train.ppo import PPOTrainer


@dataclass
class Rollout:
    """One batch of experience on this process; every tensor has the batch as its first axis.

    ``mask`` covers the response tokens up to and including the first EOS; ``scores`` are the
    per-sequence scores that entered the reward (normalised, with the EOS penalty applied)."""

    prompts: list[str]
    texts: list[str]
    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    mask: Tensor
    has_eos: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor
    metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: Tensor) -> Rollout:
        """The rows ``idx`` (a minibatch)."""
        rows = idx.tolist()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, Tensor) else [v[i] for i in rows] if isinstance(v, list) else v
        return Rollout(**out)

    def trimmed(self) -> Rollout:
        """The same rows without the columns that are padding in every row (left of the queries,
        right of the responses): fewer tokens through the models, identical results."""
        q_width = int(self.query_mask.sum(1).max())
        r_width = max(1, int(self.mask.sum(1).max()))
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("query_ids", "query_mask"):
                v = v[:, v.shape[1] - q_width :]
            elif isinstance(v, Tensor) and v.dim() == 2:
                v = v[:, :r_width]
            out[f.name] = v
        return Rollout(**out)


def experience_lanes(
    policy: Any, value: Any, rm: Any, lora_reference: bool, policy_pass: bool = True
) -> list[tuple[str, ...]]:
    """The passes of step 4 split into two lanes of about equal cost (see :func:`plan_lanes`).
    Passes through the same weights stay in one lane: with LoRA the reference is the policy with
    its adapters switched off, and a shared value model switches its adapters on in the RM's trunk;
    that switch is module state every thread sees (overlapping it would make pi_old == pi_SFT, or
    score with the value's adapters). ``policy_pass``: False when pi_old is the sampler's."""
    p = block_params(policy)
    cost = {"policy": p, "reference": p, "value": block_params(value.trunk) if value is not None else 0}
    cost["reward"] = block_params(rm) if rm is not None else 0
    if value is None:  # critic-free: no value pass
        del cost["value"]
    if not policy_pass:
        del cost["policy"]
    together = [{"policy", "reference"}] if lora_reference and policy_pass else []
    if value is not None and value.shares_trunk:
        together.append({"value", "reward"})
    return plan_lanes(cost, together)


@torch.no_grad()
def make_experience(t: PPOTrainer, prompts: list[str], gen: Generation, timer: Timer | None = None) -> Rollout:
    """Score the sampled responses and turn them into per-token rewards and advantages."""
    cfg = t.config
    timer = timer or Timer()
    q_ids, q_mask = gen.query_ids.to(t.device), gen.query_mask.to(t.device)
    r_ids, has_eos = gen.response_ids.to(t.device), gen.has_eos.to(t.device)
    mask = gen.response_mask.to(t.device).float()
    sampled = cfg.pi_old_from_sampler and gen.logprobs is not None and gen.entropy is not None

    # 3. scores; 4. log pi_old (unless the sampler's), log pi_SFT and V at the sampling temperature.
    passes: dict[str, Callable[[], Any]] = {
        "policy": lambda: chunked(t, partial(policy_logprobs, t), q_ids, q_mask, r_ids, mask),
        "reference": lambda: chunked(t, partial(ref_logprobs, t), q_ids, q_mask, r_ids, mask)[0],
        "value": lambda: chunked(t, partial(values_of, t, model=t.unwrapped_value), q_ids, q_mask, r_ids, mask)[0],
        "reward": lambda: (
            torch.tensor(score_all(t.scorer, prompts, gen.texts, cfg.score_batch_size), dtype=torch.float32),
            {
                n: torch.tensor(score_all(s, prompts, gen.texts, cfg.score_batch_size))
                for n, s in t.extra_scorers.items()
            },
        ),
    }
    plan = t.experience_lanes
    if sampled:
        del passes["policy"]
    elif not any("policy" in names for names in plan):  # a generation without the sampler's log-probs
        plan = experience_lanes(t.unwrapped_policy, t.unwrapped_value, t.rm, t.ref is None)

    def lane(names: tuple[str, ...]) -> dict[str, Any]:
        return {name: passes[name]() for name in names if name in passes}

    with timer.phase("score"):
        lanes = t.lanes.run(*(partial(lane, names) for names in plan))
    out = {k: v for done in lanes for k, v in done.items()}
    if sampled:
        out["policy"] = (gen.logprobs.to(t.device) * mask, gen.entropy.to(t.device) * mask)
    (logprobs, entropy), ref_lp = out["policy"], out["reference"]
    values = out["value"] if "value" in out else torch.zeros_like(mask)  # critic-free: no value pass
    rm_scores, extra = out["reward"]
    rm_scores = rm_scores.to(t.device)
    scores = rm_scores
    if cfg.score_norm:  # running statistics of the whole run, summed over processes
        t.score_moments += t.all_sum(core.masked_moments(rm_scores, torch.ones_like(rm_scores))).cpu()
        mean, var = core.moments_mean_var(t.score_moments)
        scores = (rm_scores - mean.float()) / torch.sqrt(var.float() + 1e-8)
    scores = core.apply_eos_penalty(scores, has_eos, cfg.no_eos_penalty)

    # 5. Per-token rewards: -beta * KL_t (k1) with the score on the last token; GAE; whitening.
    kl = core.kl_k1(logprobs, ref_lp) * mask
    beta_in_reward = 0.0 if cfg.algorithm == "grpo" else t.kl_ctl.value  # GRPO: KL in the loss instead
    rewards, non_score = core.per_token_rewards(scores, kl, mask, beta_in_reward)
    if cfg.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False, moments=t.moments(rewards, mask))
    if cfg.algorithm == "rloo":  # critic-free: the baseline is the prompt's other samples
        advantages, _ = core.rloo_advantages(scores, kl, mask, t.kl_ctl.value, cfg.group_size)
        returns = advantages
    elif cfg.algorithm == "grpo":
        advantages = returns = core.grpo_advantages(scores, mask, cfg.group_size)
    else:
        advantages, returns = core.gae(rewards, values, mask, cfg.gae_gamma, cfg.gae_lambda)
    if cfg.whiten_advantages and cfg.algorithm != "grpo":  # GRPO's are normalised per group already
        advantages = core.masked_whiten(advantages, mask, moments=t.moments(advantages, mask))

    # Metrics of the global batch: per-sequence sums averaged over sequences, token means over tokens.
    seq = {
        "rm_score": rm_scores,
        "score": scores,
        "kl": kl.sum(1),
        "kl_k3": (core.kl_k3(logprobs, ref_lp) * mask).sum(1),
        "non_score_reward": non_score.sum(1),
        "reward": rewards.sum(1),
        "response_length": mask.sum(1),
        "eos_rate": has_eos.float(),
        **{f"score_{name}": s.to(t.device, torch.float32) for name, s in extra.items()},
    }
    if t.rm is not None and t.rm.info.gain:
        seq["rm_score_raw"] = (rm_scores - t.rm.info.bias) / t.rm.info.gain
    ones = torch.ones_like(rm_scores)
    sums = t.all_sum(torch.stack([v.double().sum() for v in seq.values()] + [ones.double().sum()]))
    metrics = {k: (sums[i] / sums[-1]).item() for i, k in enumerate(seq)}
    tok = t.all_sum(torch.stack([(entropy * mask).sum(), (values * mask).sum(), mask.sum()]).double())
    metrics["entropy"] = (tok[0] / tok[2]).item()
    metrics["value_mean"] = (tok[1] / tok[2]).item()
    ret_m, res_m = t.moments(returns, mask), t.moments(returns - values, mask)
    var_ret = core.moments_mean_var(ret_m)[1]
    metrics["explained_variance"] = (1 - core.moments_mean_var(res_m)[1] / var_ret.clamp(min=1e-8)).item()
    return Rollout(
        prompts=list(prompts),
        texts=list(gen.texts),
        query_ids=q_ids,
        query_mask=q_mask,
        response_ids=r_ids,
        mask=mask,
        has_eos=has_eos,
        logprobs=logprobs,
        ref_logprobs=ref_lp,
        values=values,
        scores=scores,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        metrics=metrics,
    )


# ---------------------------------------------------------------------------------------------
# Forward passes: (query ids, query mask, response ids, response mask) -> per-token outputs


def policy_logprobs(t: PPOTrainer, q, qm, r, mask, model: Any = None) -> tuple[Tensor, Tensor]:
    """log pi(y_t) and the entropy at the sampling temperature (the training model when given)."""
    model = t.unwrapped_policy if model is None else model
    return response_logprobs(model, q, qm, r, t.config.generation.temperature, response_mask=mask)


def ref_logprobs(t: PPOTrainer, q, qm, r, mask) -> tuple[Tensor, Tensor]:
    """log pi_SFT(y_t): the frozen reference, or with LoRA the policy with its adapters off."""
    temperature = t.config.generation.temperature
    if t.ref is not None:
        return response_logprobs(t.ref, q, qm, r, temperature, response_mask=mask)
    with t.unwrapped_policy.disable_adapter():
        return response_logprobs(t.unwrapped_policy, q, qm, r, temperature, response_mask=mask)


def values_of(t: PPOTrainer, q, qm, r, mask, model: Any = None) -> tuple[Tensor]:
    """V at the positions that predict each response token (the state before it); the training
    model by default, the unwrapped one (no DDP hooks) for the rollout."""
    model = t.value if model is None else model
    ids = torch.cat([q, r], dim=1)
    attn = torch.cat([qm, torch.ones_like(r)], dim=1)
    values = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), keep=r.shape[1] + 1)
    return (values[:, :-1] * mask,)


def row_groups(query_mask: Tensor, size: int) -> list[Tensor]:
    """Rows in micro-batches of ``size`` (0 = all), grouped by query length (less padding)."""
    n = query_mask.shape[0]
    size = size or n
    order = torch.argsort(query_mask.sum(1), descending=True, stable=True) if size < n else torch.arange(n)
    return [order[i : i + size].to(query_mask.device) for i in range(0, n, size)]


def micro_batches(batch: Rollout, size: int) -> list[Rollout]:
    """Micro-batches of ``size`` rows, grouped by query length and trimmed of their common padding."""
    return [batch.select(rows).trimmed() for rows in row_groups(batch.query_mask, size)]


def chunked(t: PPOTrainer, fn: Callable[..., tuple[Tensor, ...]], q, qm, r, mask) -> tuple[Tensor, ...]:
    """``fn`` over micro-batches of rows trimmed of their common padding; per-token outputs are
    put back in row order at the full response width."""
    outs: list[Tensor] | None = None
    for rows in row_groups(qm, t.config.micro_batch_size):
        q_width = int(qm[rows].sum(1).max())
        r_width = max(1, int(mask[rows].sum(1).max()))
        part = fn(q[rows, -q_width:], qm[rows, -q_width:], r[rows, :r_width], mask[rows, :r_width])
        if outs is None:
            outs = [x.new_zeros((q.shape[0], r.shape[1])) for x in part]
        for out, x in zip(outs, part, strict=True):
            out[rows, :r_width] = x
    return tuple(outs or ())
