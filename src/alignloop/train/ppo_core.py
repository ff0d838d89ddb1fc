"""The tensor arithmetic of PPO-RLHF as small pure functions, testable on hand-made tensors.

Shapes: ``B`` rollouts, ``T`` response tokens. ``mask`` is 1 on the response tokens up to and
including the first EOS and 0 on the padding after it (the generator's response mask). Every
function here is free of models, optimizers and processes; :mod:`alignloop.train.experience` wires
them together. Where a statistic must cover the whole global batch under data parallelism,
the function accepts precomputed ``moments`` (see :func:`masked_moments`), which the trainer
sums across processes first.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Masked statistics


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 where the mask is empty)."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """``[sum, sum of squares, count]`` of the masked entries: additive, so processes can
    ``all_reduce`` them and get the statistics of the global batch."""
    x = x.detach().to(torch.float64)
    m = mask.to(torch.float64)
    return torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])


def moments_mean_var(moments: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Mean and variance from :func:`masked_moments` (Bessel-corrected when ``unbiased``)."""
    s, ss, n = moments.unbind()
    mean = s / n.clamp(min=1)
    var = (ss / n.clamp(min=1) - mean * mean).clamp(min=0)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return mean, var


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries (two-pass, so it is exact for small batches too)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, moments: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """``(x - mean) / std`` over the masked entries; ``shift_mean=False`` keeps the mean (used for
    rewards, whose sign matters). ``moments`` from the global batch replace the local statistics."""
    if moments is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = (t.to(x.dtype) for t in moments_mean_var(moments))
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------
# KL penalty: log pi_RL(y_t|x, y_<t) - log pi_SFT(y_t|x, y_<t) per sampled token


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log(pi/pi_ref): unbiased per token, may be negative; the estimator in the reward."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = pi_ref/pi: unbiased, always >= 0, lower variance; reported."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


# ---------------------------------------------------------------------------------------------
# Rewards


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of ``mask`` (the EOS, or the last token without one)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)


def apply_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float | None) -> Tensor:
    """Replace the score of every response that never emitted EOS by the fixed ``penalty`` score
    (None leaves scores unchanged)."""
    if penalty is None:
        return scores
    return torch.where(has_eos.bool(), scores, torch.full_like(scores, penalty))


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """r_t = -beta * KL_t on every response token, plus the sequence score on the last token.

    Paper: R(x, y) = r_theta(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x)), spread over tokens.
    Returns ``(rewards, non_score_rewards)``, both ``[B, T]`` and zero on padding.
    """
    non_score = -beta * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


# ---------------------------------------------------------------------------------------------
# Advantages


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lambda * A_{t+1};  returns = A + V.
    V beyond the last real token is 0 (the episode ends there), so values and rewards are masked
    first. The loop runs over the T tokens, vectorised over the batch.
    """
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
        next_value = values[:, t]
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# Critic-free advantages (``ppo.algorithm: rloo | grpo``). The batch holds ``group_size``
# consecutive samples of each prompt (rows [g*k, (g+1)*k) are prompt g's); the other samples of
# the same prompt stand in for the value model as the baseline.


def _groups(x: Tensor, group_size: int) -> Tensor:
    if group_size < 2 or x.shape[0] % group_size:
        raise ValueError(f"group_size: need >= 2 samples per prompt dividing the batch {x.shape[0]}, got {group_size}")
    return x.view(-1, group_size)


def rloo_advantages(scores: Tensor, kl: Tensor, mask: Tensor, beta: float, group_size: int) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024; Kool et al. 2019), KL in the reward.

    R_i = score_i - beta * sum_t KL_t (the sequence's RLHF reward, k1 summed over its tokens);
    A_i = R_i - 1/(k-1) * sum_{j != i in i's group} R_j, the same for every token of response i.
    Returns ``(advantages [B, T] zero on padding, R [B])``.
    """
    rewards = scores.to(kl.dtype) - beta * (kl * mask).sum(1)
    g = _groups(rewards, group_size)
    baseline = (g.sum(1, keepdim=True) - g) / (group_size - 1)  # mean of the group's other samples
    advantages = (g - baseline).reshape(-1)
    return advantages[:, None] * mask, rewards


def grpo_advantages(scores: Tensor, mask: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al. 2024): A_i = (s_i - mean_g s) / (std_g s + eps),
    std with Bessel's correction, the same for every token of response i; no KL here (GRPO puts it
    in the loss, :func:`~alignloop.train.losses.kl_penalty_loss`). A group whose samples all scored
    the same gets advantage 0."""
    g = _groups(scores.to(mask.dtype), group_size)
    centred, std = g - g.mean(1, keepdim=True), g.std(1, keepdim=True)
    advantages = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred)).reshape(-1)
    return advantages[:, None] * mask
