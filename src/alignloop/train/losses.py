"""Loss functions of the training stages, as small pure functions of tensors.

Each function takes plain tensors and returns ``(loss, metrics)`` so it can be checked on
hand-made numbers; the trainers only decide what goes in. The reward-model loss is here, with
the DPO family on the same K-way rankings (one shared pairwise core) and the PPO losses beside it.
"""

from __future__ import annotations

from collections.abc import Callable

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
    return kway_pair_loss(scores, ranks, k_mask, lambda margin: -F.logsigmoid(margin))


def kway_pair_loss(
    values: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor,
    pair_loss: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over prompts of the mean over a prompt's untied pairs of ``pair_loss(v_w - v_l)``.

    The shared core of every pairwise loss on K-way rankings (the RM loss, DPO, IPO): ``values``,
    ``ranks`` and ``k_mask`` are ``[B, Kmax]`` as in :func:`rm_kway_loss`; ``pair_loss`` maps the
    tensor of margins v_w - v_l (winner minus loser) to per-pair losses elementwise.
    Metrics as in :func:`rm_kway_loss` (accuracy and margin are over the values given).
    """
    # Readable loop version of what the tensors below compute:
    #   for b in prompts: pairs = [(w, l) for w in K_b for l in K_b if ranks[b, w] < ranks[b, l]]
    #                     loss_b = mean(pair_loss(values[b, w] - values[b, l]) for (w, l) in pairs)
    #   loss = mean(loss_b for b with pairs)
    _check_kway(values, ranks, k_mask)
    real = k_mask.bool()
    # wins[b, w, l]: completion w of prompt b was ranked strictly above completion l
    wins = (ranks[:, :, None] < ranks[:, None, :]) & real[:, :, None] & real[:, None, :]
    margin = values[:, :, None] - values[:, None, :]  # v_w - v_l for every ordered pair
    per_pair = torch.where(wins, pair_loss(margin), torch.zeros_like(margin))
    pairs_per_prompt = wins.sum(dim=(1, 2))  # C(K_b, 2) minus tied pairs
    per_prompt = per_pair.sum(dim=(1, 2)) / pairs_per_prompt.clamp(min=1)
    n_prompts = (pairs_per_prompt > 0).sum()
    loss = per_prompt.sum() / n_prompts.clamp(min=1)
    return loss, _pair_metrics(wins, margin.detach(), pairs_per_prompt, n_prompts)


def _check_kway(values: torch.Tensor, ranks: torch.Tensor, k_mask: torch.Tensor) -> None:
    if values.shape != ranks.shape or values.shape != k_mask.shape or values.dim() != 2:
        raise ValueError(
            f"scores, ranks and k_mask must all be [B, Kmax]; got {tuple(values.shape)}, "
            f"{tuple(ranks.shape)}, {tuple(k_mask.shape)}"
        )


def _pair_metrics(
    wins: torch.Tensor, margin: torch.Tensor, pairs_per_prompt: torch.Tensor, n_prompts: torch.Tensor
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        n_pairs = pairs_per_prompt.sum()
        correct = (wins & (margin > 0)).sum()
        return {
            "accuracy": correct.float() / n_pairs.clamp(min=1),
            "margin": torch.where(wins, margin, torch.zeros_like(margin)).sum() / n_pairs.clamp(min=1),
            "n_pairs": n_pairs,
            "n_prompts": n_prompts,
        }


# ----------------------------------------------------------------------------------------------
# Direct preference optimisation on K-way rankings. ``logps[b, i]`` = log pi_phi(y_i | x_b) summed
# over the response tokens, ``ref_logps`` the same under the reference (SFT) policy; the implicit
# reward of a completion is h_i = beta * (logps_i - ref_logps_i) (Rafailov et al. 2023).

DPO_LOSSES = ("sigmoid", "ipo", "plackett_luce")


def dpo_kway_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    ranks: torch.Tensor,
    k_mask: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO and relatives with all C(K,2) comparisons of a prompt as one batch element.

    * ``sigmoid`` (DPO): per untied pair, -log sigma(h_w - h_l); a prompt's pairs averaged, then
      prompts averaged: exactly the mean of the pairwise DPO losses computed one by one per prompt;
    * ``ipo`` (Azar et al. 2023): per pair, ((h_w - h_l) / beta - 1 / (2 beta))^2, i.e.
      (log-ratio difference - 1/(2 tau))^2 with tau = beta, on summed log-probs;
    * ``plackett_luce`` (listwise, the DPO paper's appendix A.3): per completion i that beats at
      least one other, -log( exp(h_i) / sum_{j in {i} + worse(i)} exp(h_j) ), averaged over those
      completions. Without ties this is the Plackett-Luce likelihood of the ranking (divided by
      K - 1); a tie is skipped: tied completions are not in each other's denominator. K = 2 gives DPO.

    Ties are skipped in every form; a prompt with no untied pair is left out of the mean.
    Metrics (detached): ``accuracy`` (implicit-reward accuracy: share of untied pairs with
    h_w > h_l), ``margin`` (mean h_w - h_l), ``chosen``/``rejected`` (mean h of the winners and
    losers over pairs), ``n_pairs``, ``n_prompts``.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type: must be one of {', '.join(DPO_LOSSES)}, got {loss_type!r}")
    _check_kway(logps, ranks, k_mask)
    rewards = beta * (logps - ref_logps)
    rewards = torch.where(k_mask.bool(), rewards, torch.zeros_like(rewards))  # padded slots stay finite
    if loss_type == "sigmoid":
        loss, metrics = kway_pair_loss(rewards, ranks, k_mask, lambda m: -F.logsigmoid(m))
    elif loss_type == "ipo":
        loss, metrics = kway_pair_loss(rewards, ranks, k_mask, lambda m: (m / beta - 1.0 / (2.0 * beta)) ** 2)
    else:
        loss = plackett_luce_loss(rewards, ranks, k_mask)
        _, metrics = kway_pair_loss(rewards.detach(), ranks, k_mask, lambda m: m * 0)
    with torch.no_grad():
        real = k_mask.bool()
        wins = (ranks[:, :, None] < ranks[:, None, :]) & real[:, :, None] & real[:, None, :]
        n = wins.sum().clamp(min=1)
        metrics["chosen"] = (wins * rewards[:, :, None]).sum() / n
        metrics["rejected"] = (wins * rewards[:, None, :]).sum() / n
    return loss, metrics


def plackett_luce_loss(values: torch.Tensor, ranks: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
    """Listwise negative log-likelihood of the rankings under Plackett-Luce with scores ``values``.

    Loop version: for each prompt b, for each completion i with at least one strictly worse
    completion: term_i = -(v_i - logsumexp(v_j for j == i or ranks[j] > ranks[i])); loss_b =
    mean of its terms; loss = mean over prompts with at least one term.
    """
    _check_kway(values, ranks, k_mask)
    real = k_mask.bool()
    worse = (ranks[:, :, None] < ranks[:, None, :]) & real[:, :, None] & real[:, None, :]  # [b, i, j]: j worse than i
    eye = torch.eye(values.shape[1], dtype=torch.bool, device=values.device)[None]
    competitors = values[:, None, :].expand_as(worse).masked_fill(~(worse | eye), float("-inf"))
    terms = torch.logsumexp(competitors, dim=-1) - values  # [b, i]
    counted = worse.any(-1)
    per_prompt = torch.where(counted, terms, torch.zeros_like(terms)).sum(1) / counted.sum(1).clamp(min=1)
    n_prompts = counted.any(1).sum()
    return per_prompt.sum() / n_prompts.clamp(min=1)


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


def kl_penalty_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    token_count: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """GRPO's KL term: the mean over response tokens of k3 = pi_ref/pi - log(pi_ref/pi) - 1, an
    unbiased, non-negative estimate of KL(pi || pi_ref) whose gradient pulls pi toward pi_ref.
    The trainer adds ``beta * kl_penalty_loss`` to the policy loss (instead of KL in the reward)."""
    log_r = ref_logprobs - logprobs
    return _token_mean(torch.expm1(log_r) - log_r, mask, token_count)
