"""The KL reference of a later round is the SFT policy, not the policy the round starts from,
and the accept rule rejects a round whose interval straddles 0.5."""

from __future__ import annotations

import pytest
import torch

from alignloop.config import GenerationConfig, LoopConfig, PPOConfig
from alignloop.errors import AlignloopError
from alignloop.loop_eval import accepts, deciding_judge
from alignloop.models.generation import response_logprobs
from alignloop.models.loading import load_policy, load_tokenizer
from alignloop.models.registry import tiny_config
from alignloop.models.scoring import FunctionScorer
from alignloop.train.experience import ref_logprobs
from alignloop.train.ppo import PPOTrainer

PROMPTS = ["Name a fruit.", "Say hello.", "Count to three.", "Describe the sea."]


def _save_tiny(path, seed: int) -> str:
    from transformers import LlamaForCausalLM

    cfg = tiny_config()
    cfg.initializer_range = 1.0  # peaked distributions: two seeds give clearly different log-probs
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    load_tokenizer("tiny").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_round_two_reference_logprobs_are_the_sft_policys(tmp_path, lora_r: int) -> None:
    torch.set_num_threads(1)
    sft, round1 = _save_tiny(tmp_path / "sft", 0), _save_tiny(tmp_path / "round1", 1)
    cfg = PPOConfig(total_episodes=4, batch_size=4, minibatch_size=4, ppo_epochs=1, lora_r=lora_r,
                    generation=GenerationConfig(max_new_tokens=4, temperature=1.0))  # fmt: skip
    scorer = FunctionScorer(lambda p, c: float(len(c)))
    trainers = {
        "sft": PPOTrainer(cfg, round1, scorer, PROMPTS, None, reference=sft, progress=False),
        "default": PPOTrainer(cfg, round1, scorer, PROMPTS, None, progress=False),
    }
    gen = trainers["sft"].rollout(PROMPTS)
    q, qm, r, mask = gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask
    ref = ref_logprobs(trainers["sft"], q, qm, r, mask)[0]
    default_ref = ref_logprobs(trainers["default"], q, qm, r, mask)[0]
    expected = {name: response_logprobs(load_policy(path)[0].eval(), q, qm, r, 1.0, response_mask=mask)[0]
                for name, path in (("sft", sft), ("round1", round1))}  # fmt: skip
    torch.testing.assert_close(ref, expected["sft"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(default_ref, expected["round1"], atol=1e-5, rtol=1e-5)
    assert (expected["sft"] - expected["round1"]).abs().max() > 0.1  # the two references really differ


def test_the_loop_asks_for_the_sft_reference_from_round_two() -> None:
    from alignloop.loop import _Run

    run = _Run.__new__(_Run)
    run.cfg = LoopConfig()
    run.state = type("S", (), {"data": {"sft_policy": "runs/x/sft/best"}})()
    assert run.reference({"index": 1, "policy": "runs/x/sft/best"}) is None  # the start is the reference
    assert run.reference({"index": 2, "policy": "runs/x/round-1/ppo/policy"}) == "runs/x/sft/best"
    run.cfg = LoopConfig(reference="previous")
    assert run.reference({"index": 2, "policy": "runs/x/round-1/ppo/policy"}) is None


def test_accept_rule_rejects_an_interval_that_straddles_half() -> None:
    straddling = {"rate": 0.62, "ci_low": 0.44, "ci_high": 0.78}
    clear = {"rate": 0.7, "ci_low": 0.56, "ci_high": 0.83}
    cfg = LoopConfig()
    assert (cfg.accept_rule, cfg.accept_threshold) == ("ci_low", 0.5)
    assert not accepts(cfg.accept_rule, straddling, cfg.accept_threshold) and accepts(cfg.accept_rule, clear)
    assert accepts("rate", straddling) and not accepts("rate", {"rate": 0.5, "ci_low": 0.4})
    assert accepts("rate > 0.5", straddling) and accepts("ci_low > 0.5", clear)  # the older spellings
    # the threshold is the config's, not a constant: 0.6 rejects the clear interval's lower bound 0.56
    assert not accepts("ci_low", clear, 0.6) and accepts("ci_low", clear, 0.55)
    assert accepts("always", {"rate": 0.1, "ci_low": 0.0})
    with pytest.raises(ValueError, match="fixes the threshold at 0.5"):
        LoopConfig(accept_rule="rate > 0.5", accept_threshold=0.6).validate()


def test_round_seed_follows_the_configured_stride() -> None:
    from alignloop.loop import _Run

    run = _Run.__new__(_Run)
    run.cfg = LoopConfig(round_seed_stride=7)
    assert [run.seed({"index": i}) for i in (1, 2)] == [run.cfg.ppo.seed + 7, run.cfg.ppo.seed + 14]


def test_deciding_judge_exists_in_the_setting() -> None:
    assert deciding_judge(LoopConfig(), has_service=True, has_gold=False) == "human"
    assert deciding_judge(LoopConfig(), has_service=False, has_gold=True) == "gold"
    with pytest.raises(AlignloopError, match="gold utility"):
        deciding_judge(LoopConfig(judge="gold"), has_service=True, has_gold=False)
    with pytest.raises(AlignloopError, match="ranking_source: service"):
        deciding_judge(LoopConfig(judge="human"), has_service=False, has_gold=True)
