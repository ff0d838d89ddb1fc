"""PPO arithmetic on hand-made tensors: rewards, KL estimators, GAE, whitening, losses, KL control."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.train import ppo_core as core
from alignloop.train.kl_controller import AdaptiveKLController, FixedKLController, make_kl_controller


def test_per_token_rewards_put_the_score_on_the_last_real_token() -> None:
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, non_score = core.per_token_rewards(scores, kl, mask, beta=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25, 0.05 + 2.0, 0.0]])
    assert torch.allclose(rewards, expected)
    assert torch.allclose(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.25, 0.05, 0.0]]))


def test_last_token_index_and_eos_penalty_only_without_eos() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    assert core.last_token_index(mask).tolist() == [3, 0, 2]
    scores = torch.tensor([0.3, -0.2, 1.5])
    has_eos = torch.tensor([False, True, True])
    assert core.apply_eos_penalty(scores, has_eos, -3.0).tolist() == pytest.approx([-3.0, -0.2, 1.5])
    assert core.apply_eos_penalty(scores, has_eos, None).tolist() == pytest.approx([0.3, -0.2, 1.5])


def test_kl_estimators_by_hand() -> None:
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert core.kl_k1(lp, ref).item() == pytest.approx(math.log(2))
    assert core.kl_k3(lp, ref).item() == pytest.approx((0.5 - 1) - math.log(0.5))
    same = torch.randn(4, 5)
    assert torch.equal(core.kl_k1(same, same), torch.zeros(4, 5))
    assert torch.equal(core.kl_k3(same, same), torch.zeros(4, 5))
    # k3 is never negative, k1 can be
    a, b = torch.randn(1000), torch.randn(1000)
    assert (core.kl_k3(a, b) >= 0).all() and (core.kl_k1(a, b) < 0).any()


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2]])
    adv, ret = core.gae(rewards, values, torch.ones(1, 2), gamma=1.0, lam=0.95)
    # delta_1 = 1 - 0.2 = 0.8; delta_0 = 0.2 - 0.5 = -0.3; A_0 = -0.3 + 0.95 * 0.8
    assert adv.tolist()[0] == pytest.approx([0.46, 0.8])
    assert ret.tolist()[0] == pytest.approx([0.96, 1.0])


def _gae_loop_reference(rewards, values, length, gamma, lam):
    """Plain per-episode GAE over the real tokens only (the textbook recursion)."""
    adv = [0.0] * length
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values, strict=False)]


def test_gae_matches_loop_reference_with_padding() -> None:
    g = torch.Generator().manual_seed(0)
    B, T = 5, 7
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [7, 1, 4, 6, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
        adv, ret = core.gae(rewards, values, mask, gamma, lam)
        for i, n in enumerate(lengths):
            ref_adv, ref_ret = _gae_loop_reference(rewards[i].tolist(), values[i].tolist(), n, gamma, lam)
            assert adv[i, :n].tolist() == pytest.approx(ref_adv, abs=1e-6)
            assert ret[i, :n].tolist() == pytest.approx(ref_ret, abs=1e-6)
            assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_masked_statistics_and_whitening() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.5)
    assert core.masked_var(x, mask).item() == pytest.approx(torch.tensor([1.0, 2, 3, 4]).var().item())
    assert core.masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.5])
    mean, var = core.moments_mean_var(core.masked_moments(x, mask))
    assert mean.item() == pytest.approx(2.5) and var.item() == pytest.approx(core.masked_var(x, mask).item())
    w = core.masked_whiten(x, mask)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert w[:, 2].abs().sum() == 0
    kept = core.masked_whiten(x, mask, shift_mean=False)
    assert core.masked_mean(kept, mask).item() == pytest.approx(2.5, abs=1e-5)
    # global moments summed over two halves equal the moments of the whole
    m = core.masked_moments(x[:1], mask[:1]) + core.masked_moments(x[1:], mask[1:])
    assert torch.allclose(core.masked_whiten(x[:1], mask[:1], moments=m), w[:1], atol=1e-6)


def test_response_logprobs_use_the_temperature() -> None:
    """The live log-prob/entropy code (:func:`response_logprobs`) on fixed logits: softmax(logits / T)."""
    from types import SimpleNamespace

    from alignloop.models.generation import response_logprobs

    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]])

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return SimpleNamespace(logits=logits[:, : input_ids.shape[1]])

    query, response = torch.tensor([[5]]), torch.tensor([[0, 2]])
    lp, ent = response_logprobs(Fixed(), query, torch.ones_like(query), response, 2.0)
    p = torch.softmax(logits[0, :2] / 2.0, -1)
    assert lp[0].tolist() == pytest.approx([math.log(p[0, 0].item()), math.log(p[1, 2].item())])
    assert ent[0].tolist() == pytest.approx((-(p * p.log()).sum(-1)).tolist())


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 16)
    assert fixed.value == 0.1
    ada = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ada.update(12.0, 16)  # error clipped at +0.2
    assert ada.value == pytest.approx(0.1 * (1 + 0.2 * 16 / 10000))
    ada.update(5.7, 100)  # error -0.05
    assert ada.value == pytest.approx(0.1 * (1 + 0.2 * 16 / 10000) * (1 - 0.05 * 100 / 10000))
    again = make_kl_controller(0.5, adaptive=True, target=6.0, horizon=10000)
    again.load_state_dict(ada.state_dict())
    assert again.value == ada.value
    assert isinstance(make_kl_controller(0.5, False, 6.0, 1), FixedKLController)


def test_ppo_policy_loss_by_hand() -> None:
    from alignloop.train.losses import ppo_policy_loss

    old = torch.zeros(1, 3)
    lp = torch.tensor([[math.log(1.5), math.log(1.5), 5.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = ppo_policy_loss(lp, old, adv, mask, clip_range=0.2)
    # token 0: ratio 1.5, A=+1 -> clipped term -1.2 wins; token 1: A=-1 -> unclipped 1.5 wins
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert m["clipfrac_sum"].item() == 1 and m["tokens"].item() == 2
    assert m["approx_kl_sum"].item() == pytest.approx(2 * 0.5 * math.log(1.5) ** 2)
    loss.backward()
    # d/dlp of -A*ratio is -A*ratio; the clipped token has no gradient, the masked one neither
    assert lp.grad.tolist()[0] == pytest.approx([0.0, 1.5 / 2, 0.0])
    # a global token count replaces the local one
    loss2, _ = ppo_policy_loss(lp.detach(), old, adv, mask, clip_range=0.2, token_count=4.0)
    assert loss2.item() == pytest.approx((-1.2 + 1.5) / 4)


def test_clip_fraction_counts_tokens_whose_ratio_left_the_clip_range() -> None:
    from alignloop.train.losses import ppo_policy_loss

    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    inside = torch.log(torch.tensor([[1.1, 0.9, 1.19, 0.81]]))  # every ratio within 1 +- 0.2
    assert ppo_policy_loss(inside, old, adv, mask, clip_range=0.2)[1]["clipfrac_sum"].item() == 0
    # beyond the range, the clipped term wins only where it is the pessimistic one: A > 0 with
    # ratio > 1.2 and A < 0 with ratio < 0.8 (tokens 0 and 3), not the reverse (tokens 1 and 2)
    beyond = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    assert ppo_policy_loss(beyond, old, adv, mask, clip_range=0.2)[1]["clipfrac_sum"].item() == 2
    assert ppo_policy_loss(beyond, old, -adv, mask, clip_range=0.2)[1]["clipfrac_sum"].item() == 2  # tokens 1, 2
    assert ppo_policy_loss(beyond, old, adv, mask * torch.tensor([[0, 1, 1, 1]]))[1]["clipfrac_sum"].item() == 1


def test_ppo_value_loss_by_hand() -> None:
    from alignloop.train.losses import ppo_value_loss

    values = torch.tensor([[1.0, 0.6, 3.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: clipped value 0.7 -> (1.3)^2 = 1.69 > 1.0; token 1: inside the clip range, 0.36
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.36) / 2)
    assert m["vf_clipfrac_sum"].item() == 1


def test_ptx_loss_is_the_mean_token_nll() -> None:
    from alignloop.train.losses import ptx_loss

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[1, 1, 0]])
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert ptx_loss(logits, labels, mask).item() == pytest.approx(expected, rel=1e-5)
