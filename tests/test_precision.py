"""``distributed:`` on one CPU process: bf16 autocast in every trainer, frozen models in bf16 next to an
fp32 policy, gradient checkpointing, the strategy/dtype switches on the command line and in YAML."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import (
    DistributedConfig,
    GenerationConfig,
    ModelConfig,
    PPOConfig,
    RMConfig,
    SFTConfig,
    load_config,
    with_distributed,
)
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Demonstration, Ranking
from alignloop.errors import AlignloopError
from alignloop.models.scoring import FunctionScorer
from alignloop.train.distributed import Precision
from alignloop.train.ppo import PPOTrainer
from alignloop.train.reward import train_reward_model
from alignloop.train.runlog import read_metrics
from alignloop.train.sft import train_sft

BF16 = DistributedConfig(dtype="bf16")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def demos() -> list[Demonstration]:
    return [Demonstration(f"p{i}", f"Say {i}.", "The same short answer every time.", "x") for i in range(8)]


def sft_cfg(**changes) -> SFTConfig:
    base = dict(model=ModelConfig(name="tiny"), epochs=3, lr=1e-2, batch_size=4, warmup_ratio=0.0, eval_at_start=False)
    return SFTConfig(**{**base, **changes})


def test_bf16_sft_trains_under_autocast_with_fp32_weights_and_its_loss_falls(tmp_path) -> None:
    res = train_sft(sft_cfg(distributed=BF16), demos(), None, tmp_path / "run")
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.5
    from safetensors.torch import load_file

    saved = load_file(str(res.final_dir / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())  # master weights stay fp32


def test_bf16_changes_the_numbers_and_gradient_checkpointing_does_not(tmp_path) -> None:
    """autocast really runs: bf16 weights differ from fp32 ones; recomputing activations in
    backward gives the fp32 run's weights."""
    from safetensors.torch import load_file

    def weights(name: str, **changes) -> dict[str, torch.Tensor]:
        res = train_sft(sft_cfg(epochs=1, **changes), demos(), None, tmp_path / name)
        return load_file(str(res.final_dir / "model.safetensors"))

    fp32 = weights("fp32")
    bf16 = weights("bf16", distributed=BF16)
    ckpt = weights("ckpt", distributed=DistributedConfig(gradient_checkpointing=True))
    assert max((fp32[k] - bf16[k]).abs().max().item() for k in fp32) > 1e-4
    assert max((fp32[k] - ckpt[k]).abs().max().item() for k in fp32) < 1e-6


def rankings() -> list[Ranking]:
    return [
        Ranking(f"r{i}", f"Pick {i}.", ["good good good", "fine words here", "bad bad"], [0, 1, 2], "x")
        for i in range(8)
    ]


def test_bf16_reward_model_trains_and_its_loss_falls(tmp_path) -> None:
    cfg = RMConfig(
        model=ModelConfig(name="tiny"), epochs=4, lr=1e-2, prompts_per_step=4, warmup_ratio=0.0, normalize=False,
        backbone="causal", distributed=BF16,
    )  # fmt: skip
    losses: list[float] = []
    train_reward_model(cfg, rankings(), tmp_path / "rm", val=[], progress=False,
                       on_step=lambda s, m: losses.append(m["train/loss"]))  # fmt: skip
    assert losses[-1] < losses[0] - 0.1


def ppo_cfg(**changes) -> PPOConfig:
    base = dict(
        total_episodes=8, batch_size=4, minibatch_size=4, ppo_epochs=2, lr=1e-3, no_eos_penalty=None,
        generation=GenerationConfig(max_new_tokens=4, temperature=1.0),
    )  # fmt: skip
    return PPOConfig(**{**base, **changes})


def test_bf16_ppo_with_frozen_models_in_bf16_keeps_an_fp32_policy_and_value_and_learns(tmp_path) -> None:
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward import RewardModel, RewardModelInfo, load_scorer

    trunk = load_causal_lm("tiny").model
    tok = load_tokenizer("tiny")
    RewardModel(trunk, RewardModelInfo(kind="causal", pooling="last", base_model="tiny")).save(tmp_path / "rm", tok)
    cfg = ppo_cfg(distributed=DistributedConfig(dtype="bf16", frozen_dtype="bf16"))
    trainer = PPOTrainer(cfg, "tiny", load_scorer(str(tmp_path / "rm")), ["Hi.", "Yes?", "No.", "Why?"], None,
                         progress=False)  # fmt: skip
    assert {p.dtype for p in trainer.ref.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.rm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.unwrapped_policy.parameters()} == {torch.float32}
    assert {p.dtype for p in trainer.unwrapped_value.parameters() if p.requires_grad} == {torch.float32}
    prompts = trainer.batch_prompts(0)
    rollout = trainer.make_experience(prompts, trainer.rollout(prompts))
    first = trainer.ppo_update(rollout, iteration=0)
    later = [trainer.ppo_update(rollout, iteration=0) for _ in range(3)][-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
    assert later["value_loss"] < first["value_loss"]  # the value model fits the batch's returns
    assert trainer.train().iterations == 2  # the whole loop runs in bf16


def test_fp16_on_a_cpu_is_a_clear_error_and_config_values_are_checked() -> None:
    with pytest.raises(AlignloopError, match="fp16 needs a GPU"):
        Precision("fp16", "cpu")
    with pytest.raises(AlignloopError, match="distributed.strategy"):
        with_distributed(SFTConfig(), strategy="zero3")
    with pytest.raises(ValueError, match="distributed.dtype"):
        dataclasses.replace(PPOConfig(), distributed=DistributedConfig(dtype="half")).validate()


def test_example_fsdp_config_selects_fsdp_for_every_stage() -> None:
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "examples" / "configs" / "fsdp.yaml")
    for stage in (cfg.sft, cfg.rm, cfg.ppo, cfg.dpo):
        assert stage.distributed.strategy == "fsdp" and stage.distributed.dtype == "bf16"
    assert cfg.ppo.distributed.frozen_dtype == "bf16"


def test_cli_dtype_option_reaches_the_run_config(tmp_path) -> None:
    data = tmp_path / "demos.jsonl"
    write_jsonl(data, demos()[:4])
    args = ["sft", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "tiny", "--epochs", "1"]
    res = CliRunner().invoke(app, [*args, "--dtype", "bf16", "--gradient-checkpointing"])
    assert res.exit_code == 0, res.output
    saved = load_config(tmp_path / "run" / "config.yaml", SFTConfig)
    assert saved.distributed.dtype == "bf16" and saved.distributed.gradient_checkpointing
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "run2"), *args[5:], "--dtype", "fp8"])
    assert bad.exit_code != 0 and "distributed.dtype" in str(bad.exception)


def test_native_bf16_reads_the_cpu_flags(monkeypatch) -> None:
    from alignloop.train.distributed import native_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    zen5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire = "flags\t: avx2 avx512f amx_tile amx_bf16\n"
    older = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"
    assert native_bf16(zen5) and native_bf16(sapphire)
    assert not native_bf16(older) and not native_bf16("no flags line at all")


def test_demo_uses_bf16_where_the_cpu_has_it_and_fp32_elsewhere(monkeypatch) -> None:
    import alignloop.train.distributed as dist
    from alignloop.config import LoopConfig
    from alignloop.demo import demo_config, precision_line

    for native in (True, False):
        monkeypatch.setattr(dist, "native_bf16", lambda native=native: native)
        cfg = demo_config()
        want = "bf16" if native else "fp32"
        assert [s.distributed.dtype for s in (cfg.sft, cfg.rm, cfg.ppo)] == [want] * 3
        assert cfg.sample_weights_dtype == ("bfloat16" if native else "float32")
        assert cfg.policy.dtype == cfg.sft.model.dtype == "float32"  # training weights stay fp32
        tiny = demo_config(tiny=True)  # the tests' model: the same numbers on every machine
        assert tiny.ppo.distributed.dtype == "fp32" and tiny.sample_weights_dtype == "float32"
        # the demo says which arithmetic it runs in, and warns of the long wait only where bf16 is missing
        line = precision_line(cfg)
        assert line.startswith(f"precision: {want}") and ("no native bf16" in line) == (not native)
        assert precision_line(tiny) == "precision: fp32"
    with pytest.raises(ValueError, match="sampling_dtype"):
        LoopConfig(sampling_dtype="bf16").validate()


def test_frozen_weights_cast_gives_the_same_numbers_and_puts_the_weights_back() -> None:
    """Holding a LoRA policy's frozen base weights in bf16 during a phase changes no number that
    autocast computes (sampling, log-probabilities, gradients) and leaves the very fp32 parameters,
    the tied embedding included, in place afterwards."""
    from peft import LoraConfig, get_peft_model

    from alignloop.models.generation import generate, response_logprobs
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer("tiny")
    model = get_peft_model(load_causal_lm("tiny"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # adapters that do something, so that the check covers them
            torch.nn.init.normal_(p, std=0.5)
    precision = Precision("bf16", "cpu")
    precision.wrap(model)
    before = {n: p for n, p in model.named_parameters()}
    lora = [p for n, p in model.named_parameters() if p.requires_grad]

    def run() -> tuple:
        gen = generate(model, tok, ["Hi.", "Say it."], GenerationConfig(max_new_tokens=6), seed=3, return_logprobs=True)
        model.zero_grad()
        logprobs, _ = response_logprobs(model, gen.query_ids, gen.query_mask, gen.response_ids, 1.0)
        logprobs.sum().backward()
        return gen.response_ids, gen.logprobs, logprobs.detach(), [p.grad.clone() for p in lora]

    plain = run()
    with precision.frozen_weights_cast(model, None) as swapped:
        assert swapped == 2 * 7 + 1  # two blocks of seven projections, and the head tied to the embedding
        head = model.get_output_embeddings()
        assert head.weight.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.dtype == torch.float32
        cast = run()
    assert torch.equal(plain[0], cast[0]) and torch.equal(plain[1], cast[1]) and torch.equal(plain[2], cast[2])
    assert all(torch.equal(a, b) for a, b in zip(plain[3], cast[3], strict=True))
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is p for n, p in before.items())
    assert {p.dtype for p in after.values()} == {torch.float32}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    with Precision("fp32", "cpu").frozen_weights_cast(model) as swapped:
        assert swapped == 0  # nothing to gain without autocast


def test_bf16_lora_ppo_runs_the_same_with_and_without_the_frozen_casts(tmp_path, monkeypatch) -> None:
    """The PPO trainer holds frozen weights in bf16 during its phases: a bf16 LoRA run logs exactly the
    numbers of one that lets autocast re-cast them at every forward."""
    import contextlib

    def run(folder: str) -> list[dict]:
        cfg = ppo_cfg(lora_r=4, distributed=BF16, total_episodes=12)
        length = FunctionScorer(lambda prompt, completion: len(completion) / 10.0)
        trainer = PPOTrainer(cfg, "tiny", length, ["Hi.", "Yes?", "No.", "Why?"], tmp_path / folder, progress=False)
        with trainer.frozen_casts() as swapped:
            assert swapped == (2 * 7 + 1 if folder == "cast" else 0)  # the base's projections and head
        trainer.train()
        return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in read_metrics(tmp_path / folder)]

    cast = run("cast")
    monkeypatch.setattr(Precision, "frozen_weights_cast", lambda self, *m, keep=None: contextlib.nullcontext(0))
    assert run("plain") == cast


def test_bf16_ppo_with_a_value_model_on_the_reward_models_trunk_leaves_the_reward_model_in_fp32(tmp_path) -> None:
    """The reward model scores outside autocast, so the frozen casts must not touch the trunk that a
    shared value model borrows from it (a bf16 weight there would meet fp32 inputs)."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward import RewardModel, RewardModelInfo, load_scorer

    info = RewardModelInfo(kind="causal", pooling="last", base_model="tiny")
    RewardModel(load_causal_lm("tiny").model, info).save(tmp_path / "rm", load_tokenizer("tiny"))
    cfg = ppo_cfg(distributed=BF16, value_model="shared", lora_r=4)
    trainer = PPOTrainer(cfg, "tiny", load_scorer(str(tmp_path / "rm")), ["Hi.", "Yes?"], None, progress=False)
    with trainer.frozen_casts() as swapped:
        assert swapped > 0 and {p.dtype for p in trainer.rm.parameters()} == {torch.float32}
    assert trainer.train().iterations == 2
