"""The K-way reward-model loss: hand-computed values, ties, K varying by mask, gradients vs the naive form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignloop.train.losses import rm_kway_loss


def softplus_neg(d: float) -> float:
    """-log sigmoid(d), by hand."""
    return math.log1p(math.exp(-d))


def test_k4_loss_matches_hand_computation_with_the_1_over_C_K_2_factor() -> None:
    scores = torch.tensor([[1.0, 0.5, -0.2, 0.3]])
    ranks = torch.tensor([[0, 1, 2, 3]])  # completion 0 best, 3 worst
    loss, m = rm_kway_loss(scores, ranks, torch.ones(1, 4))
    # the 6 = C(4,2) pairs (w, l) and r_w - r_l
    diffs = [1.0 - 0.5, 1.0 + 0.2, 1.0 - 0.3, 0.5 + 0.2, 0.5 - 0.3, -0.2 - 0.3]
    expected = sum(softplus_neg(d) for d in diffs) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.519324567, abs=1e-6)
    assert m["accuracy"].item() == pytest.approx(5 / 6)
    assert m["margin"].item() == pytest.approx(sum(diffs) / 6)
    assert int(m["n_pairs"]) == 6 and int(m["n_prompts"]) == 1


def test_rank_order_is_respected_not_position() -> None:
    # Same scores, ranking reversed: completion 3 best. Pairs flip sign.
    scores = torch.tensor([[1.0, 0.5, -0.2, 0.3]])
    loss, m = rm_kway_loss(scores, torch.tensor([[3, 2, 1, 0]]), torch.ones(1, 4))
    diffs = [-(1.0 - 0.5), -(1.0 + 0.2), -(1.0 - 0.3), -(0.5 + 0.2), -(0.5 - 0.3), 0.2 + 0.3]
    assert loss.item() == pytest.approx(sum(softplus_neg(d) for d in diffs) / 6, abs=1e-6)
    assert m["accuracy"].item() == pytest.approx(1 / 6)


def test_tied_pairs_are_skipped_and_the_prompt_normalised_by_its_counted_pairs() -> None:
    scores = torch.tensor([[1.0, 0.5, -0.2, 0.3]])
    ranks = torch.tensor([[0, 1, 1, 2]])  # completions 1 and 2 tied: 5 of the 6 pairs count
    loss, m = rm_kway_loss(scores, ranks, torch.ones(1, 4))
    diffs = [1.0 - 0.5, 1.0 + 0.2, 1.0 - 0.3, 0.5 - 0.3, -0.2 - 0.3]
    assert loss.item() == pytest.approx(sum(softplus_neg(d) for d in diffs) / 5, abs=1e-6)
    assert loss.item() == pytest.approx(0.542552271, abs=1e-6)
    assert int(m["n_pairs"]) == 5


def test_fully_tied_prompt_is_left_out_of_the_mean() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.0], [0.3, 0.1, 7.0]], requires_grad=True)
    ranks = torch.tensor([[0, 1, 0], [1, 1, 1]])  # second prompt: all tied, no information
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # first prompt has K=2; its third slot is padding
    loss, m = rm_kway_loss(scores, ranks, mask)
    assert loss.item() == pytest.approx(softplus_neg(3.0), abs=1e-6)
    assert int(m["n_prompts"]) == 1 and int(m["n_pairs"]) == 1
    loss.backward()
    assert torch.all(scores.grad[1] == 0) and scores.grad[0, 2] == 0


def test_all_tied_batch_gives_zero_loss_with_a_graph() -> None:
    scores = torch.randn(2, 3, requires_grad=True)
    loss, m = rm_kway_loss(scores, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and int(m["n_pairs"]) == 0 and torch.all(scores.grad == 0)


def _random_batch(seed: int, ks: list[int], tie_prob: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    kmax = max(ks)
    scores = torch.randn(len(ks), kmax, generator=g) * 2
    ranks = torch.zeros(len(ks), kmax, dtype=torch.long)
    mask = torch.zeros(len(ks), kmax, dtype=torch.long)
    for b, k in enumerate(ks):
        r = torch.randperm(k, generator=g)
        if tie_prob:
            tie = torch.rand(k, generator=g) < tie_prob
            r = torch.where(tie, r // 2, r)  # merge some neighbours into ties
        ranks[b, :k] = r
        mask[b, :k] = 1
    return scores, ranks, mask


def test_k_varying_2_to_9_in_one_batch_equals_each_prompt_separately() -> None:
    ks = [2, 3, 4, 5, 6, 7, 8, 9]
    scores, ranks, mask = _random_batch(0, ks, tie_prob=0.3)
    scores[mask == 0] = 123.0  # whatever sits in padded slots must not matter
    batched, m = rm_kway_loss(scores, ranks, mask)
    singles, pairs = [], 0
    for b, k in enumerate(ks):
        loss_b, m_b = rm_kway_loss(scores[b : b + 1, :k], ranks[b : b + 1, :k], mask[b : b + 1, :k])
        if int(m_b["n_pairs"]):
            singles.append(loss_b)
        pairs += int(m_b["n_pairs"])
    assert batched.item() == pytest.approx(torch.stack(singles).mean().item(), abs=1e-6)
    assert int(m["n_pairs"]) == pairs


def naive_pairwise_loss(scores: torch.Tensor, ranks: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """The formulation written pair by pair, as one would expand comparisons into rows."""
    per_prompt = []
    for b, k in enumerate(ks):
        terms = []
        for w in range(k):
            for lo in range(k):
                if ranks[b, w] < ranks[b, lo]:
                    terms.append(-F.logsigmoid(scores[b, w] - scores[b, lo]))
        if terms:
            per_prompt.append(torch.stack(terms).sum() / len(terms))
    return torch.stack(per_prompt).mean()


@pytest.mark.parametrize("tie_prob", [0.0, 0.4])
def test_gradient_equals_the_naive_pair_by_pair_formulation(tie_prob: float) -> None:
    ks = [4, 9, 2, 6, 9]
    base, ranks, mask = _random_batch(1, ks, tie_prob)
    fast = base.clone().requires_grad_(True)
    slow = base.clone().requires_grad_(True)
    loss_fast, _ = rm_kway_loss(fast, ranks, mask)
    loss_slow = naive_pairwise_loss(slow, ranks, ks)
    loss_fast.backward()
    loss_slow.backward()
    assert loss_fast.item() == pytest.approx(loss_slow.item(), abs=1e-6)
    assert torch.allclose(fast.grad, slow.grad, atol=1e-7)
    assert fast.grad[mask == 0].abs().sum() == 0
    assert fast.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="must all be"):
        rm_kway_loss(torch.zeros(2, 4), torch.zeros(2, 3), torch.ones(2, 4))
