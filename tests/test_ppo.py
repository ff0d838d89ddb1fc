"""The PPO trainer on tiny models: KL at the start, learning a toy reward, EOS penalty, PPO-ptx
gradients, LoRA reference, value model from the RM, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignloop.config import GenerationConfig, PPOConfig
from alignloop.errors import AlignloopError
from alignloop.models.generation import Generation, decode_responses, generate, left_pad, query_token_ids
from alignloop.models.generation import response_logprobs as policy_logprobs
from alignloop.models.loading import load_causal_lm, load_policy, load_tokenizer
from alignloop.models.registry import tiny_config
from alignloop.models.scoring import FunctionScorer
from alignloop.train import update
from alignloop.train.ppo import PPOTrainer, train_ppo
from alignloop.train.runlog import read_metrics

PROMPTS = ["Name a fruit.", "Say hello.", "Count to three.", "Describe the sea."]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (their ops are too small to split), and a busy
    2-core machine makes two spinning threads much slower still."""
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
        lr=1e-3,
        no_eos_penalty=None,
        generation=GenerationConfig(max_new_tokens=4, temperature=1.0),
    )
    base.update(changes)
    return PPOConfig(**base)


def letter_e() -> FunctionScorer:
    return FunctionScorer(lambda prompt, completion: float(completion.count("e")))


def peaked_tiny(seed: int = 0):
    """A tiny Llama whose next-token distributions are peaked (entropy about 4 nats, as in a
    trained LM) instead of the near-uniform 49k-way distribution of the 0.02-initialised one,
    so a few dozen PPO steps can visibly move it."""
    from transformers import LlamaForCausalLM

    cfg = tiny_config()
    cfg.initializer_range = 1.0
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), load_tokenizer("tiny")


@pytest.mark.parametrize("lora_r,sampler", [(0, False), (4, False), (0, True)])
def test_kl_is_zero_at_the_first_step(lora_r: int, sampler: bool) -> None:
    """pi_old recomputed after sampling: exactly pi_SFT at the first step; pi_old from the sampler
    (the default, as TRL): equal up to the numerical noise of a KV-cached forward (~1e-6)."""
    cfg = small(lora_r=lora_r, lr=1e-2, pi_old_from_sampler=sampler)
    res = train_ppo(cfg, "tiny", letter_e(), PROMPTS, None, progress=False)
    first, second = res.metrics
    if sampler:
        assert abs(first["kl"]) < 1e-4 and 0 <= first["kl_k3"] < 1e-6 and abs(first["non_score_reward"]) < 1e-5
    else:
        assert first["kl"] == 0.0 and first["kl_k3"] == 0.0 and first["non_score_reward"] == 0.0
    assert second["kl"] != 0.0 and second["kl_k3"] > 0.0  # the policy moved away from the reference
    for name in ("rm_score", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance", "lr", "beta"):
        assert name in first and name in second
    # k1 of one batch is a noisy estimate that can be negative; its size and k3 (never negative) must grow
    assert abs(second["kl"]) > 10 * abs(first["kl"]) and second["kl_k3"] > 10 * first["kl_k3"]
    assert first["eos_rate"] == 0.0 and first["response_length"] == 4.0


def test_ppo_raises_a_toy_reward() -> None:
    model, tok = peaked_tiny()
    cfg = small(
        total_episodes=8 * 30,
        batch_size=8,
        minibatch_size=8,
        ppo_epochs=4,
        lr=3e-3,
        beta=0.05,
    )
    res = train_ppo(cfg, model, letter_e(), ["Say something."], None, tokenizer=tok, progress=False)
    scores = [m["rm_score"] for m in res.metrics]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 1.5, scores
    assert res.metrics[-1]["kl"] > 1.0  # bought with a KL to the reference


def _handmade_generation(tok) -> Generation:
    eos, pad = tok.eos_token_id, tok.pad_token_id
    q_ids, q_mask = left_pad([query_token_ids(tok, p) for p in PROMPTS[:3]], pad)
    r_ids = torch.tensor([[300, 301, eos, pad], [302, 303, 304, 305], [eos, pad, pad, pad]])
    r_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    has_eos = torch.tensor([True, False, True])
    return Generation(q_ids, q_mask, r_ids, r_mask, decode_responses(tok, r_ids, r_mask, has_eos), has_eos)


def test_eos_penalty_applies_only_to_responses_without_eos() -> None:
    seen = []

    def judge(prompt: str, completion: str) -> float:
        seen.append(completion)
        return 2.0

    trainer = PPOTrainer(
        small(batch_size=3, minibatch_size=3, total_episodes=3, no_eos_penalty=-3.0, beta=0.1),
        "tiny",
        FunctionScorer(judge),
        PROMPTS,
        None,
        progress=False,
    )
    gen = _handmade_generation(trainer.tokenizer)
    ro = trainer.make_experience(PROMPTS[:3], gen)
    assert ro.scores.tolist() == [2.0, -3.0, 2.0]
    assert "<|im_end|>" not in "".join(seen) and seen[2] == ""  # scored text stops before EOS
    # the score sits on the last real token (the EOS, or the last token without one); KL elsewhere
    non_score = -0.1 * (ro.logprobs - ro.ref_logprobs) * ro.mask
    for row, last in enumerate([2, 3, 0]):
        assert ro.rewards[row, last].item() == pytest.approx(ro.scores[row].item() + non_score[row, last].item())
        assert ro.rewards[row, last + 1 :].abs().sum() == 0
    assert ro.metrics["eos_rate"] == pytest.approx(2 / 3)
    assert ro.metrics["response_length"] == pytest.approx((3 + 4 + 1) / 3)


def test_ptx_term_changes_the_gradient_as_its_coefficient_says(monkeypatch) -> None:
    corpus = ["The cat sat on the mat.", "Rain falls in spring.", "Bread is made from flour and water."]
    trainer = PPOTrainer(
        small(gamma_ptx=1.0, ptx_batch_size=2, ppo_epochs=1, max_grad_norm=0.0),
        "tiny",
        letter_e(),
        PROMPTS,
        None,
        ptx_texts=corpus,
        progress=False,
    )
    grads: list[dict[str, torch.Tensor]] = []

    def capture(model, optimizer, scheduler) -> None:  # record the policy gradient, do not step
        if model is trainer.policy:
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        optimizer.zero_grad(set_to_none=True)

    monkeypatch.setattr(update, "optimizer_step", lambda t, *args: capture(*args))
    gen = generate(trainer.unwrapped_policy, trainer.tokenizer, PROMPTS, trainer.config.generation, seed=0)
    ro = trainer.make_experience(PROMPTS, gen)
    for gamma in (0.0, 0.5, 2.0):
        trainer.config.gamma_ptx = gamma
        metrics = trainer.ppo_update(ro, iteration=0)
    g0, g_half, g_two = grads
    # the pretraining gradient on its own: -mean log p(x) of the same batch
    trainer.config.gamma_ptx = 1.0
    trainer.policy.zero_grad(set_to_none=True)
    loss, _ = update.ptx_loss_of(trainer, *update.ptx_batch(trainer, 0, 0))
    loss.backward()
    ptx_grad = {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}
    assert metrics["ptx_loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, g in g0.items():
        assert torch.allclose(g_half[name] - g, 0.5 * ptx_grad[name], atol=1e-6)
        assert torch.allclose(g_two[name] - g, 2.0 * ptx_grad[name], atol=1e-6)
    assert any(ptx_grad[n].abs().max() > 1e-4 for n in ptx_grad)


def test_lora_reference_is_the_base_with_adapters_disabled() -> None:
    trainer = PPOTrainer(small(lora_r=4, lr=5e-2), "tiny", letter_e(), PROMPTS, None, progress=False)
    assert trainer.ref is None
    base_params = sum(p.numel() for p in load_causal_lm("tiny").parameters())
    held = {p.data_ptr(): p.numel() for p in trainer.unwrapped_policy.parameters()}
    lora_params = sum(p.numel() for p in trainer.unwrapped_policy.parameters() if p.requires_grad)
    assert sum(held.values()) == base_params + lora_params  # one copy of the base weights
    trainer.train()  # 2 iterations; merges the adapters at the end
    fresh = load_causal_lm("tiny")
    gen = generate(fresh, trainer.tokenizer, PROMPTS, trainer.config.generation, seed=1)
    args = (gen.query_ids, gen.query_mask, gen.response_ids, 1.0)
    with torch.no_grad():
        base_lp, _ = policy_logprobs(fresh, *args)
        trained_lp, _ = policy_logprobs(trainer.unwrapped_policy, *args)
    assert not torch.allclose(base_lp, trained_lp, atol=1e-4)


def test_lora_reference_logprobs_equal_the_sft_model() -> None:
    trainer = PPOTrainer(small(lora_r=4, lr=5e-2), "tiny", letter_e(), PROMPTS, None, progress=False)
    gen = generate(trainer.unwrapped_policy, trainer.tokenizer, PROMPTS, trainer.config.generation, seed=0)
    trainer.ppo_update(trainer.make_experience(PROMPTS, gen), iteration=0)
    ro = trainer.make_experience(PROMPTS, gen)
    fresh = load_causal_lm("tiny")
    with torch.no_grad():
        sft_lp, _ = policy_logprobs(fresh, ro.query_ids, ro.query_mask, ro.response_ids, 1.0, response_mask=ro.mask)
    assert torch.equal(ro.ref_logprobs, sft_lp)
    assert not torch.allclose(ro.logprobs, ro.ref_logprobs, atol=1e-4)
    # the logged explained variance: 1 - Var[returns - V] / Var[returns] over the response tokens
    m = ro.mask.bool()
    ret, res = ro.returns[m].double(), (ro.returns - ro.values)[m].double()
    assert ro.values[m].abs().max() > 1e-3  # the value model has moved off its zero head
    assert ro.metrics["explained_variance"] == pytest.approx(1 - res.var().item() / ret.var().item(), rel=1e-4)


def test_sampler_logprobs_are_the_policy_logprobs() -> None:
    """pi_old from the sampler (the default): the KV-cached log-probs and entropies of the sampled
    tokens equal one forward pass over the whole sequence, up to float noise."""
    trainer = PPOTrainer(small(), "tiny", letter_e(), PROMPTS, None, progress=False)
    gen = trainer.rollout(PROMPTS)
    with torch.no_grad():
        lp, ent = policy_logprobs(
            trainer.unwrapped_policy,
            gen.query_ids,
            gen.query_mask,
            gen.response_ids,
            1.0,
            response_mask=gen.response_mask,
        )
    assert torch.allclose(gen.logprobs, lp, atol=1e-4) and torch.allclose(gen.entropy, ent, atol=1e-4)
    assert gen.logprobs.abs().sum() > 0


@pytest.mark.parametrize("layout,lora_r", [("separate", 0), ("separate", 4), ("shared", 0)])
def test_value_model_starts_from_the_reward_model(layout: str, lora_r: int) -> None:
    from alignloop.models.reward import RewardScorer, collate, encode, init_reward_model

    rm, rm_tok = init_reward_model("tiny")
    rm.info.bias, rm.info.gain = 0.3, 2.0
    scorer = RewardScorer(rm, rm_tok)
    texts = ["a short answer", "another answer, longer than the first one"]
    before = scorer.score_batch(PROMPTS[:2], texts)
    cfg = small(value_model=layout, value_lora_r=lora_r, lr=5e-2)
    trainer = PPOTrainer(cfg, "tiny", scorer, PROMPTS, None, progress=False)
    value = trainer.unwrapped_value
    trunk = value.trunk.get_base_model() if layout == "shared" or lora_r else value.trunk
    assert (trunk is rm.backbone) == (layout == "shared")
    trained = {n for n, p in value.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trained
    assert all("lora_" in n or n.startswith("head.") for n in trained) == (layout == "shared" or lora_r > 0)
    assert not any("embed_tokens" in n for n in trained)  # the token embeddings stay the RM's
    batch = collate(encode(rm_tok, rm.info, PROMPTS[:2], texts), rm_tok.pad_token_id)
    with torch.no_grad():
        v = value(batch["input_ids"], batch["attention_mask"])
    last = batch["attention_mask"].sum(1) - 1
    assert v[torch.arange(2), last].tolist() == pytest.approx(before, abs=1e-5)  # V = normalised RM score
    trainer.train()
    with torch.no_grad():
        v_after = value(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(v_after[torch.arange(2), last], v[torch.arange(2), last], atol=1e-4)
    assert scorer.score_batch(PROMPTS[:2], texts) == pytest.approx(before, abs=1e-6)  # the RM is untouched


def test_shallow_value_model_keeps_the_first_layers_of_the_policy_trunk() -> None:
    policy, tok = load_policy("tiny")
    first_block = {k: v.clone() for k, v in policy.model.layers[0].state_dict().items()}
    trainer = PPOTrainer(small(value_layers=1), policy, letter_e(), PROMPTS, None, tokenizer=tok, progress=False)
    trunk = trainer.unwrapped_value.trunk
    assert len(trunk.layers) == 1 and trunk.config.num_hidden_layers == 1
    assert len(trainer.unwrapped_policy.model.layers) == 2  # the policy keeps all of its layers
    assert all(torch.equal(v, first_block[k]) for k, v in trunk.layers[0].state_dict().items())
    assert trunk.layers[0].self_attn.q_proj.weight is not policy.model.layers[0].self_attn.q_proj.weight
    res = trainer.train()
    assert res.metrics[-1]["value_loss"] > 0 and trunk.config.num_hidden_layers == 1
    with pytest.raises(AlignloopError, match="value_layers: the trunk has 2 layers"):
        PPOTrainer(small(value_layers=3), "tiny", letter_e(), PROMPTS, None, progress=False)


def test_shallow_value_model_from_a_causal_reward_model_keeps_its_first_layers() -> None:
    from alignloop.models.reward import RewardScorer, init_reward_model

    rm, rm_tok = init_reward_model("tiny")
    rm.info.bias = 0.3
    first_block = {k: v.clone() for k, v in rm.backbone.layers[0].state_dict().items()}
    trainer = PPOTrainer(small(value_layers=1), "tiny", RewardScorer(rm, rm_tok), PROMPTS, None, progress=False)
    value = trainer.unwrapped_value
    assert len(value.trunk.layers) == 1 and len(rm.backbone.layers) == 2  # the RM keeps its layers
    assert all(torch.equal(v, first_block[k]) for k, v in value.trunk.layers[0].state_dict().items())
    assert float(value.head.weight.abs().sum()) == 0 and float(value.head.bias) == 0  # V = 0, not the RM's bias
    res = trainer.train()
    assert res.metrics[-1]["value_loss"] > 0 and float(value.head.weight.abs().sum()) > 0
    with pytest.raises(AlignloopError, match="value_layers: the trunk has 2 layers"):
        PPOTrainer(small(value_layers=3), "tiny", RewardScorer(rm, rm_tok), PROMPTS, None, progress=False)


def test_concurrent_passes_give_exactly_the_sequential_result() -> None:
    """On a CPU the independent passes run side by side on one core each; the numbers must be
    those of running them one after another on one core."""
    outcomes = []
    gen = None
    for concurrent, threads in ((False, 1), (True, 2)):
        torch.set_num_threads(threads)
        cfg = small(concurrent_passes=concurrent, micro_batch_size=2, batch_size=4, gamma_ptx=0.5)
        trainer = PPOTrainer(cfg, "tiny", letter_e(), PROMPTS, None, ptx_texts=["Some text.", "More."], progress=False)
        assert (trainer.lanes.enabled and trainer.lanes.threads == 2) == concurrent
        if gen is None:
            gen = generate(trainer.unwrapped_policy, trainer.tokenizer, PROMPTS, cfg.generation, seed=3)
        ro = trainer.make_experience(PROMPTS, gen)
        metrics = trainer.ppo_update(ro, iteration=0)
        weights = [p.detach().clone() for p in [*trainer.policy.parameters(), *trainer.value.parameters()]]
        outcomes.append((ro, metrics, weights))
    (ro_a, m_a, w_a), (ro_b, m_b, w_b) = outcomes
    assert not any(t.requires_grad for t in (ro_b.logprobs, ro_b.ref_logprobs, ro_b.values))  # no graph leaks
    for name in ("logprobs", "ref_logprobs", "values", "rewards", "advantages"):
        assert torch.equal(getattr(ro_a, name), getattr(ro_b, name)), name
    assert m_a == m_b
    assert all(torch.equal(a, b) for a, b in zip(w_a, w_b, strict=True))


def test_rollout_split_over_cores_is_one_consistent_batch() -> None:
    torch.set_num_threads(2)
    gens = []
    for _ in range(2):
        trainer = PPOTrainer(small(), "tiny", letter_e(), PROMPTS, None)
        gens.append(trainer.rollout(PROMPTS))
    a, b = gens
    assert len(a) == 4 and a.query_ids.shape[0] == a.response_ids.shape[0] == 4
    assert torch.equal(a.response_ids, b.response_ids)  # seeded: the same samples again
    for i, prompt in enumerate(PROMPTS):  # row i is still prompt i, left-padded
        ids = query_token_ids(trainer.tokenizer, prompt)
        assert a.query_ids[i, -len(ids) :].tolist() == ids and a.query_mask[i].sum() == len(ids)
    assert torch.equal(a.response_mask.sum(1), torch.tensor([4, 4, 4, 4]))


def test_a_busy_machine_does_not_change_the_next_trainers_samples(monkeypatch) -> None:
    """While another process takes a core, the lanes lower torch's thread count; a trainer must give
    it back when it ends, or the next one in the process (the loop's next round) plans one rollout
    part instead of two and samples other responses than a fresh process would."""
    from alignloop.train import cpu_lanes

    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_lanes, "_affinity", lambda: 2)
    fresh = PPOTrainer(small(total_episodes=4), "tiny", letter_e(), PROMPTS, None, progress=False)
    expected = fresh.rollout(PROMPTS).response_ids
    clock = iter(range(1, 10_000))

    def busy() -> tuple[float, float, float]:  # every second the machine works 2 core-s, ours 1: one core taken
        t = float(next(clock))
        return t, 2 * t, t

    monkeypatch.setattr(cpu_lanes, "_machine_times", busy)
    trainer = PPOTrainer(small(total_episodes=4), "tiny", letter_e(), PROMPTS, None, progress=False)
    trainer.lanes.free_cores()
    assert trainer.lanes.free_cores() == 1 and torch.get_num_threads() == 1  # the core was given up...
    trainer.train()
    assert torch.get_num_threads() == 2  # ...and given back at the end
    monkeypatch.setattr(cpu_lanes, "_machine_times", lambda: None)
    after = PPOTrainer(small(total_episodes=4), "tiny", letter_e(), PROMPTS, None, progress=False)
    assert after.lanes.threads == 2 and torch.equal(after.rollout(PROMPTS).response_ids, expected)


def test_adam_settings_come_from_the_config() -> None:
    trainer = PPOTrainer(small(adam_betas=(0.8, 0.99), adam_eps=1e-6), "tiny", letter_e(), PROMPTS, None)
    groups = [*trainer.policy_opt.param_groups, *trainer.value_opt.param_groups]
    assert {(tuple(g["betas"]), g["eps"]) for g in groups} == {((0.8, 0.99), 1e-6)}


def test_config_and_input_errors_are_user_errors() -> None:
    with pytest.raises(AlignloopError, match="minibatch_size"):
        PPOTrainer(small(minibatch_size=3), "tiny", letter_e(), PROMPTS, None)
    with pytest.raises(AlignloopError, match="at least one prompt"):
        PPOTrainer(small(), "tiny", letter_e(), [], None)
    with pytest.raises(AlignloopError, match="pretraining corpus"):
        PPOTrainer(small(gamma_ptx=0.1), "tiny", letter_e(), PROMPTS, None)


# ---------------------------------------------------------------------------------------------
# Exact resume after SIGKILL, through the CLI


def _write_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    from alignloop.models.reward import init_reward_model

    rm, rm_tok = init_reward_model("tiny")
    rm_dir = tmp_path / "rm"
    rm.save(rm_dir, rm_tok)
    prompts = tmp_path / "ppo.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"Write about item {i}."}) + "\n" for i in range(10)))
    config = tmp_path / "ppo.yaml"
    config.write_text(
        "total_episodes: 24\nbatch_size: 4\nminibatch_size: 2\nppo_epochs: 2\nlr: 0.01\n"
        "checkpoint_every: 1\nkeep_checkpoints: 10\nadaptive_kl: true\nscore_norm: true\n"
        "generation: {max_new_tokens: 6, temperature: 1.0}\n"
    )
    return rm_dir, prompts, config


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from alignloop.cli.main import main; main()", *args]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def test_sigkilled_run_resumes_exactly(tmp_path: Path) -> None:
    rm_dir, prompts, config = _write_inputs(tmp_path)
    common = ["--policy", "tiny", "--rm", str(rm_dir), "--prompts", str(prompts), "--config", str(config)]
    env = {**os.environ, "ALIGNLOOP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_cli("ppo", *common, "--out", str(tmp_path / "full")), env=env, capture_output=True)
    assert full.returncode == 0, full.stderr.decode()[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("ppo", *common, "--out", str(run)), env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its third checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_metrics(run))
    assert killed_at < 6  # it really was interrupted
    resumed = subprocess.run(_cli("ppo", *common, "--out", str(run), "--resume"), env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]

    expected, got = _comparable(read_metrics(tmp_path / "full")), _comparable(read_metrics(run))
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert got == expected
    a = load_policy(str(tmp_path / "full" / "policy"))[0].state_dict()
    b = load_policy(str(run / "policy"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_reports_a_bad_prompts_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    out = subprocess.run(
        _cli("ppo", "--policy", "tiny", "--rm", "x", "--prompts", str(bad), "--out", str(tmp_path / "r")),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert f"{bad}:2: expected an object with a non-empty string field 'text'" in out.stderr


def test_lora_rollout_passes_side_by_side_keep_policy_and_reference_apart() -> None:
    """With several threads the rollout passes run concurrently; switching the LoRA adapters off
    for the reference must not leak into the policy pass (pi_old would equal pi_SFT, KL = 0)."""
    torch.set_num_threads(2)
    trainer = PPOTrainer(small(lora_r=4, lr=5e-2), "tiny", letter_e(), PROMPTS, None, progress=False)
    assert trainer.lanes.enabled and trainer.lanes.threads == 2
    gen = generate(trainer.unwrapped_policy, trainer.tokenizer, PROMPTS, trainer.config.generation, seed=0)
    trainer.ppo_update(trainer.make_experience(PROMPTS, gen), iteration=0)
    for _ in range(3):  # a leak is a race: look several times
        ro = trainer.make_experience(PROMPTS, gen)
        with torch.no_grad():
            lp, _ = policy_logprobs(
                trainer.unwrapped_policy,
                ro.query_ids,
                ro.query_mask,
                ro.response_ids,
                trainer.config.generation.temperature,
                response_mask=ro.mask,
            )
        assert torch.allclose(ro.logprobs, lp, atol=1e-5)
        assert not torch.allclose(ro.logprobs, ro.ref_logprobs, atol=1e-4)
        assert ro.metrics["kl"] != 0


def test_shared_value_passes_side_by_side_keep_the_reward_model_clean() -> None:
    """The shared value model switches its adapters on in the RM's trunk; the RM pass of the same
    rollout must still score with the RM's own weights."""
    from alignloop.models.reward import RewardScorer, init_reward_model

    torch.set_num_threads(2)
    rm, rm_tok = init_reward_model("tiny")
    scorer = RewardScorer(rm, rm_tok)
    trainer = PPOTrainer(small(value_model="shared", lr=5e-2), "tiny", scorer, PROMPTS, None, progress=False)
    assert trainer.lanes.enabled and trainer.lanes.threads == 2
    gen = generate(trainer.unwrapped_policy, trainer.tokenizer, PROMPTS, trainer.config.generation, seed=0)
    trainer.ppo_update(trainer.make_experience(PROMPTS, gen), iteration=0)
    lora_b = [p for n, p in trainer.unwrapped_value.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapters are no longer a no-op
    expected = scorer.score_batch(PROMPTS, gen.texts)
    for _ in range(3):  # a leak is a race: look several times
        ro = trainer.make_experience(PROMPTS, gen)
        assert ro.scores.tolist() == pytest.approx(expected, abs=1e-6)


def test_run_folder_holds_one_run(tmp_path: Path) -> None:
    """A fresh run never truncates another run's metrics or mixes checkpoints with it; resume
    needs a checkpoint and the same config; --overwrite replaces the old PPO run."""
    run = tmp_path / "ppo"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 7}\n')
    with pytest.raises(AlignloopError, match="is not empty"):
        PPOTrainer(small(), "tiny", letter_e(), PROMPTS, run)
    assert (run / "metrics.jsonl").read_text() == '{"step": 7}\n'  # nothing lost
    with pytest.raises(AlignloopError, match="nothing to resume"):
        PPOTrainer(small(), "tiny", letter_e(), PROMPTS, run, resume=True)
    train_ppo(small(total_episodes=4), "tiny", letter_e(), PROMPTS, run, overwrite=True, progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1] and (run / "policy").is_dir()
    with pytest.raises(AlignloopError, match="config differs.* lr"):
        PPOTrainer(small(total_episodes=4, lr=0.5), "tiny", letter_e(), PROMPTS, run, resume=True)


def test_attn_implementation_reaches_the_policy_its_sampler_and_the_value_trunk() -> None:
    """One kernel for every pass over the policy: pi_old comes from the sampler, so sampling and the
    update must not use two attention implementations; the value trunk is copied from the policy."""
    policy, tok = load_policy("tiny")
    batch = tok(["Name a fruit. A banana."], return_tensors="pt")
    with torch.no_grad():
        sdpa_logits = policy(**batch).logits
    assert policy.config._attn_implementation == "sdpa"  # transformers' default, which the field overrides
    cfg = small(attn_implementation="eager", lora_r=4, value_layers=1)
    trainer = PPOTrainer(cfg, policy, letter_e(), PROMPTS, None, tokenizer=tok, progress=False)
    base = trainer.unwrapped_policy.get_base_model()
    assert base.config._attn_implementation == "eager"
    assert trainer.unwrapped_value.trunk.config._attn_implementation == "eager"
    with torch.no_grad(), trainer.unwrapped_policy.disable_adapter():  # the reference: adapters off
        eager_logits = trainer.unwrapped_policy(**batch).logits
    assert torch.allclose(eager_logits, sdpa_logits, atol=1e-4)  # another kernel, the same function
    assert trainer.train().metrics[-1]["value_loss"] > 0
    with pytest.raises(ValueError, match="attn_implementation: must be '', eager or sdpa"):
        small(attn_implementation="flash").validate()
