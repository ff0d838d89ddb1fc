"""Loss functions of the training stages, as small pure functions of tensors.

Each function takes plain tensors and returns ``(loss, metrics)`` so it can be checked on
hand-made numbers; the trainers only decide what goes in. The reward-model loss is here; the
PPO losses sit beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rm_kway_loss(
    scores: torch.Tensor, ranks: torch.Tensor, k_mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The InstructGPT reward-model loss with all comparisons of a prompt as ONE batch element.

    ``scores[b, i]`` is the reward r(x_b, y_i) of completion i of prompt b (one forward pass per
    completion), ``ranks[b, i]`` its rank from the labeler (0 = best; tied completions share a
    rank) and ``k_mask[b, i]`` is 1 for the K_b real completions of prompt b, 0 for padding, so K
    may vary from 2 to 9 inside one batch. Padded slots must hold finite scores (e.g. 0).

    Every ordered untied pair (y_w ranked above y_l) contributes -log sigma(r_w - r_l). A
    prompt's pair losses are divided by the number of pairs counted for it: C(K,2) when it has no
    ties, C(K,2) minus its tied pairs otherwise (a tie says nothing about which is better, so it
    is skipped, and the prompt keeps weight 1 like any other). The loss is the mean over the
    prompts that have at least one counted pair.

    Metrics (over all counted pairs of the batch, detached): ``accuracy`` (share with r_w > r_l),
    ``margin`` (mean r_w - r_l), ``n_pairs`` and ``n_prompts`` (counts, for weighting chunks).
    """
    # loss(theta) = -1/C(K,2) * E_{(x, y_w, y_l) ~ D} [ log sigma(r_theta(x, y_w) - r_theta(x, y_l)) ]   (paper eq. 1)
    #
    # Readable loop version of what the tensors below compute:
    #   for b in prompts: pairs = [(w, l) for w in K_b for l in K_b if ranks[b, w] < ranks[b, l]]
    #                     loss_b = mean(-logsigmoid(scores[b, w] - scores[b, l]) for (w, l) in pairs)
    #   loss = mean(loss_b for b with pairs)
    if scores.shape != ranks.shape or scores.shape != k_mask.shape or scores.dim() != 2:
        raise ValueError(
            f"scores, ranks and k_mask must all be [B, Kmax]; got {tuple(scores.shape)}, "
            f"{tuple(ranks.shape)}, {tuple(k_mask.shape)}"
        )
    real = k_mask.bool()
    # wins[b, w, l]: completion w of prompt b was ranked strictly above completion l
    wins = (ranks[:, :, None] < ranks[:, None, :]) & real[:, :, None] & real[:, None, :]
    margin = scores[:, :, None] - scores[:, None, :]  # r_w - r_l for every ordered pair
    pair_loss = torch.where(wins, -F.logsigmoid(margin), torch.zeros_like(margin))
    pairs_per_prompt = wins.sum(dim=(1, 2))  # C(K_b, 2) minus tied pairs
    per_prompt = pair_loss.sum(dim=(1, 2)) / pairs_per_prompt.clamp(min=1)
    n_prompts = (pairs_per_prompt > 0).sum()
    loss = per_prompt.sum() / n_prompts.clamp(min=1)

    with torch.no_grad():
        n_pairs = pairs_per_prompt.sum()
        correct = (wins & (margin > 0)).sum()
        metrics = {
            "accuracy": correct.float() / n_pairs.clamp(min=1),
            "margin": torch.where(wins, margin, torch.zeros_like(margin)).sum() / n_pairs.clamp(min=1),
            "n_pairs": n_pairs,
            "n_prompts": n_prompts,
        }
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# PPO (SPEC section 6). ``mask`` marks the response tokens up to and including the first EOS.
# ``token_count`` divides the summed token losses: by default the minibatch's own token count;
# under data parallelism the trainer passes (global token count / world size), so that DDP's
# gradient average equals the gradient of the mean over every token of the global minibatch.


def _token_mean(x: torch.Tensor, mask: torch.Tensor, token_count: torch.Tensor | float | None) -> torch.Tensor:
    total = (x * mask).sum()
    count = mask.sum().clamp(min=1) if token_count is None else token_count
    return total / count


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    token_count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate objective, negated: mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps)).

    rho_t = pi_phi(y_t|.) / pi_old(y_t|.) = exp(logprobs - old_logprobs) per response token.
    Metrics (detached, token sums for exact averaging across minibatches and ranks):
    ``clipfrac_sum`` (tokens where the clipped term was chosen), ``approx_kl_sum``
    (0.5 * (log rho)^2, the low-variance estimate of KL(pi_old || pi_phi)) and ``tokens``.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _token_mean(torch.maximum(unclipped, clipped), mask, token_count)
    with torch.no_grad():
        metrics = {
            "clipfrac_sum": ((clipped > unclipped).float() * mask).sum(),
            "approx_kl_sum": (0.5 * log_ratio**2 * mask).sum(),
            "tokens": mask.sum(),
        }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    token_count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped value loss: 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old -+ eps) - R_t)^2).

    Clipping keeps the value function from moving further than ``clip_range`` from the values
    it predicted at rollout time. Metrics: ``vf_clipfrac_sum`` (tokens where the clipped error
    was larger) and ``tokens``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(err_unclipped, err_clipped), mask, token_count)
    with torch.no_grad():
        metrics = {"vf_clipfrac_sum": ((err_clipped > err_unclipped).float() * mask).sum(), "tokens": mask.sum()}
    return loss, metrics


def ptx_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, token_count: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Pretraining loss of PPO-ptx: -mean_t log pi_phi(x_t | x_<t) on plain text (temperature 1).

    ``logits[:, t]`` predicts ``labels[:, t]``; the objective adds gamma * E[log pi(x)], so the
    trainer adds ``gamma * ptx_loss`` to the policy loss.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    return _token_mean(nll, mask.to(nll.dtype), token_count)
