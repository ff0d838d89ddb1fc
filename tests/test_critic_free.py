"""Critic-free RL (``ppo.algorithm: rloo | grpo``): the advantages on hand-made batches, the GRPO
KL term, and the trainer without any value model (PPO-ptx included), exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.config import GenerationConfig, PPOConfig
from alignloop.errors import AlignloopError
from alignloop.models.generation import generate
from alignloop.models.reward import RewardScorer, init_reward_model
from alignloop.models.scoring import FunctionScorer
from alignloop.train import ppo_core as core
from alignloop.train.losses import kl_penalty_loss
from alignloop.train.ppo import PPOTrainer, train_ppo
from alignloop.train.runlog import read_metrics

PROMPTS = ["Name a fruit.", "Say hello.", "Count to three.", "Describe the sea."]
CORPUS = ["The cat sat on the mat.", "Rain falls in spring.", "Bread is made from flour and water."]

# -- advantages on hand-made batches ----------------------------------------------------------------


def test_rloo_advantage_is_the_reward_minus_the_mean_of_the_others() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, -1.0, -2.0, -3.0, -6.0])  # two prompts, 4 samples each
    mask = torch.tensor([[1, 1, 0]] * 4 + [[1, 1, 1]] * 4, dtype=torch.float32)
    kl = torch.tensor([[0.5, 0.25, 9.0]] * 4 + [[0.1, 0.1, 0.1]] * 4)  # 9.0 sits on padding: ignored
    adv, rewards = core.rloo_advantages(scores, kl, mask, beta=0.2, group_size=4)
    expected_r = [s - 0.2 * (0.75 if i < 4 else 0.3) for i, s in enumerate(scores.tolist())]
    assert rewards.tolist() == pytest.approx(expected_r)
    for i in range(8):
        g = range(0, 4) if i < 4 else range(4, 8)
        others = [expected_r[j] for j in g if j != i]
        assert adv[i, 0].item() == pytest.approx(expected_r[i] - sum(others) / 3, abs=1e-6)
        assert torch.equal(adv[i], adv[i, 0] * mask[i])  # the same for every token, 0 on padding
    assert adv[0, 0].item() == pytest.approx(1 - (2 + 3 + 6) / 3)  # KL equal within the group: it cancels
    with pytest.raises(ValueError, match="group_size"):
        core.rloo_advantages(scores[:6], kl[:6], mask[:6], 0.2, group_size=4)


def test_grpo_advantage_is_the_group_normalised_score() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    mask = torch.tensor([[1, 0]] * 8, dtype=torch.float32)
    adv = core.grpo_advantages(scores, mask, group_size=4, eps=0.0)
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # Bessel-corrected
    assert adv[:4, 0].tolist() == pytest.approx([(s - 3) / std for s in (1, 2, 3, 6)])
    assert adv[4:].abs().sum() == 0  # a group whose samples all scored the same teaches nothing
    assert adv[:, 1].abs().sum() == 0


def test_kl_penalty_loss_is_the_token_mean_of_k3() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = kl_penalty_loss(logp, ref, mask)
    k3 = [math.exp(-0.5) - 1 + 0.5, 0.0]  # r = pi_ref/pi; k3 = r - 1 - log r
    assert loss.item() == pytest.approx(sum(k3) / 2)
    loss.backward()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0 and logp.grad[0, 0] != 0


# -- the trainer ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(**changes) -> PPOConfig:
    base = dict(
        total_episodes=8,
        batch_size=4,
        minibatch_size=4,
        ppo_epochs=2,
        lr=1e-2,
        group_size=2,
        no_eos_penalty=None,
        generation=GenerationConfig(max_new_tokens=4, temperature=1.0),
    )
    return PPOConfig(**{**base, **changes})


def letter_e() -> FunctionScorer:
    return FunctionScorer(lambda prompt, completion: float(completion.count("e")))


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_no_value_model_is_built_or_stepped_and_ptx_still_trains(algorithm: str) -> None:
    rm, rm_tok = init_reward_model("tiny", kind="causal")  # a reward model a PPO value model would copy
    rm_dir_state = {k: v.clone() for k, v in rm.state_dict().items()}
    scorer = RewardScorer(rm, rm_tok)
    trainer = PPOTrainer(
        small(algorithm=algorithm, gamma_ptx=0.5, ptx_batch_size=2), "tiny", scorer, PROMPTS, None,
        ptx_texts=CORPUS, progress=False,
    )  # fmt: skip
    assert trainer.value is None and trainer.value_opt is None and trainer.value_sched is None
    assert all("value" not in lane for lane in trainer.experience_lanes)
    optimised = {id(p) for g in trainer.policy_opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in trainer.policy.parameters() if p.requires_grad}
    # one iteration's prompts: batch_size / group_size prompts, each sampled group_size times in a row
    prompts = trainer.batch_prompts(0)
    assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3] and prompts[0] != prompts[2]
    res = trainer.train()
    assert len(res.metrics) == 2
    for m in res.metrics:
        assert "value_loss" not in m and "vf_clipfrac" not in m and m["ptx_loss"] > 0
        assert ("kl_loss" in m) == (algorithm == "grpo")
    assert res.metrics[1]["kl"] != 0.0  # the policy moved
    for k, v in rm.state_dict().items():
        assert torch.equal(v, rm_dir_state[k]), k  # nothing trained the reward model's trunk either


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_experience_uses_the_group_advantages(algorithm: str) -> None:
    trainer = PPOTrainer(small(algorithm=algorithm, whiten_advantages=False), "tiny", letter_e(), PROMPTS, None,
                         progress=False)  # fmt: skip
    prompts = trainer.batch_prompts(0)
    gen = generate(trainer.unwrapped_policy, trainer.tokenizer, prompts, trainer.config.generation, seed=3)
    ro = trainer.make_experience(prompts, gen)
    kl = (ro.logprobs - ro.ref_logprobs) * ro.mask
    if algorithm == "rloo":
        expected, _ = core.rloo_advantages(ro.scores, kl, ro.mask, trainer.kl_ctl.value, 2)
    else:
        expected = core.grpo_advantages(ro.scores, ro.mask, 2)
    assert torch.allclose(ro.advantages, expected) and ro.values.abs().sum() == 0


def test_interrupted_grpo_run_resumes_exactly(tmp_path) -> None:
    cfg = small(algorithm="grpo", total_episodes=12, checkpoint_every=1)
    whole = train_ppo(cfg, "tiny", letter_e(), PROMPTS, tmp_path / "whole", progress=False)

    def crash(iteration: int, _m: dict) -> None:
        if iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, "tiny", letter_e(), PROMPTS, tmp_path / "cut", progress=False, on_iteration=crash)
    train_ppo(cfg, "tiny", letter_e(), PROMPTS, tmp_path / "cut", progress=False, resume=True)

    def comparable(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]

    assert comparable(read_metrics(tmp_path / "cut")) == comparable(read_metrics(tmp_path / "whole"))
    assert len(whole.metrics) == 3


def test_group_size_must_divide_the_batch() -> None:
    with pytest.raises(AlignloopError, match="group_size"):
        PPOTrainer(small(algorithm="rloo", group_size=3), "tiny", letter_e(), PROMPTS, None, progress=False)
    with pytest.raises(AlignloopError, match="algorithm"):
        PPOTrainer(small(algorithm="reinforce"), "tiny", letter_e(), PROMPTS, None, progress=False)
