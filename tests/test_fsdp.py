"""SFT, RM, DPO, best-of-N fine-tuning and PPO under 2 CPU processes (gloo), ``distributed.strategy`` ddp and fsdp.

One ``torchrun`` launch of 2 processes runs every trainer under both strategies (the strategy is
per config, the process group is shared), so the suite pays for the 2-process start-up once:

* SFT (full and LoRA), RM, DPO, best-of-N fine-tuning: the same global batch per step as one
  process (the 1-process run is a plain ``python`` run of the same worker), so the trained weights
  must match it (DPO's rankings have K = 2..4 and one full tie, so the processes' forward counts
  differ and a chunk carries no pair; best-of-N's samples are drawn once, by the main process);
* PPO: one update on the SAME global batch of responses split over the processes (sampling
  differs per rank by design), then a 2-iteration run with a checkpoint after each iteration;
* the FSDP processes each hold about half the trainable parameters (PPO's policy and value, DPO's
  policy: counted in the worker, asserted here), unlike a run that silently did not shard;
* at the end the FSDP SFT run is repeated and both processes SIGKILL themselves right after the
  checkpoint of step 2; a second launch resumes it (and resumes the PPO run from its first
  checkpoint, the DPO run from its step-4 checkpoint), and all must end with the uninterrupted
  runs' weights; that launch also runs PPO with LoRA, bf16 and gradient checkpointing under FSDP
  to a saved plain folder.

Tolerance: 2e-5 absolute on every weight (float32 sums in another order: the gradient mean over
processes; FSDP reduce-scatters where DDP all-reduces); every update moves the weights far more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = r"""
import dataclasses, json, os, signal, sys
import torch
import torch.distributed as dist
from alignloop.config import (BoNConfig, DistributedConfig, DPOConfig, GenerationConfig, ModelConfig, PPOConfig,
                              RMConfig, SFTConfig)
from alignloop.data.records import Demonstration, Prompt, Ranking
from alignloop.models.generation import Generation, generate
from alignloop.models.scoring import FunctionScorer
import alignloop.train.dpo as dpo_module
from alignloop.train.distributed import local_param_count, rank_slice, trainable_state
from alignloop.train.dpo import train_dpo
from alignloop.train.ppo import PPOTrainer
from alignloop.train.rejection import rejection_sampling_finetune
from alignloop.train.reward import train_reward_model
from alignloop.train.sft import train_sft

torch.set_num_threads(1)
out, mode = sys.argv[1], sys.argv[2]   # mode: train | resume
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
demos = [Demonstration(f"p{i}", f"Say thing {i}.", f"The answer number {i} is here and {i % 3}.", "x")
         for i in range(12)]
rankings = [Ranking(f"r{i}", f"Pick for {i}.", [f"good {i}", f"fine text {i}", f"bad bad {i}"], [0, 1, 2], "x")
            for i in range(8)]
prompts = [f"Tell me about thing number {i}." for i in range(12)]
# DPO: K = 2..4 (so the processes' chunk counts differ) and one fully tied ranking (no pair: weight 0)
answers = ["Yes, gladly.", "Sure.", "Maybe later.", "No.", "Never, go away."]
dpo_train = [Ranking(f"d{i}", f"Question {i}?", answers[: 2 + i % 3], list(range(2 + i % 3)), "x")
             for i in range(9)]
dpo_train.append(Ranking("tied", "All the same?", ["Same.", "Same!"], [0, 1], "x", ties=[[0, 1]]))
dpo_val = [Ranking(f"v{i}", f"Other question {i}?", answers[1:4], [0, 1, 2], "x") for i in range(3)]
corpus = ["The cat sat on the mat.", "Rain falls in spring.", "Bread needs flour.", "Rivers run to the sea."]

def sft_cfg(strategy, lora=0):
    return SFTConfig(model=ModelConfig(name="tiny"), epochs=2, lr=1e-2, batch_size=4 // world, warmup_ratio=0.0,
                     eval_at_start=False, checkpoint_every=1, lora_r=lora, lora_alpha=16, lora_dropout=0.0,
                     distributed=DistributedConfig(strategy=strategy))

def ppo_cfg(strategy):
    return PPOConfig(total_episodes=16, batch_size=8, minibatch_size=8, ppo_epochs=2, lr=1e-2, beta=0.1,
                     whiten_rewards=True, score_norm=True, no_eos_penalty=None, gamma_ptx=0.5, ptx_batch_size=4,
                     micro_batch_size=2, checkpoint_every=1,
                     generation=GenerationConfig(max_new_tokens=6, temperature=1.0),
                     distributed=DistributedConfig(strategy=strategy))

def dpo_cfg(strategy):
    return DPOConfig(model=ModelConfig(name="tiny"), lr=2e-2, beta=0.5, epochs=2, prompts_per_step=4,
                     micro_batch_completions=4, checkpoint_every=1, distributed=DistributedConfig(strategy=strategy))

def bon_cfg(strategy):
    return BoNConfig(policy=ModelConfig(name="tiny"), n=3, generation=GenerationConfig(max_new_tokens=6),
                     sft=dataclasses.replace(sft_cfg(strategy), epochs=1))

real_optimizer = dpo_module.build_optimizer
def counting_optimizer(model, *args, **kwargs):  # DPO's placed model, just before its optimizer is built
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a DTensor counts its global size
    info.setdefault("dpo-held", []).append([local_param_count(model), total])
    return real_optimizer(model, *args, **kwargs)
dpo_module.build_optimizer = counting_optimizer

scorer = FunctionScorer(lambda p, c: c.count("e") - 0.1 * len(c))
strategies = ["ddp"] if world == 1 else ["ddp", "fsdp"]
info = {"world": world}

if mode == "train":
    for s in strategies:
        train_sft(sft_cfg(s), demos, None, f"{out}/sft-{s}")
        if s == "fsdp" or world == 1:
            train_sft(sft_cfg(s, lora=4), demos, None, f"{out}/sft-lora-{s}")
        rm = RMConfig(model=ModelConfig(name="tiny"), lr=1e-2, prompts_per_step=4, epochs=2, warmup_ratio=0.0,
                      normalize=False, val_fraction=0.0, backbone="causal", distributed=DistributedConfig(strategy=s))
        train_reward_model(rm, rankings, f"{out}/rm-{s}", val=[], progress=False)
        info[f"dpo-{s}-val"] = train_dpo(dpo_cfg(s), dpo_train, f"{out}/dpo-{s}", val=dpo_val, progress=False).val
        info[f"dpo-{s}-held"] = info.pop("dpo-held")[0]
        bon_prompts = [Prompt(f"b{i}", text, "u") for i, text in enumerate(prompts[:8])]
        rejection_sampling_finetune(bon_cfg(s), bon_prompts, scorer, f"{out}/bon-{s}")

        # PPO: one update on the same global batch, split by rows over the processes
        trainer = PPOTrainer(ppo_cfg(s), "tiny", scorer, prompts, None, ptx_texts=corpus, progress=False)
        total = sum(p.numel() for p in trainer.unwrapped_policy.parameters() if p.requires_grad)
        info[f"ppo-{s}-policy"] = [local_param_count(trainer.policy), total]
        info[f"ppo-{s}-value"] = [local_param_count(trainer.value), sum(
            p.numel() for p in trainer.unwrapped_value.parameters() if p.requires_grad)]
        batch = prompts[:8]
        full = generate(trainer.unwrapped_policy, trainer.tokenizer, batch, trainer.config.generation, seed=123)
        rows = torch.tensor(rank_slice(list(range(8)), rank, world))
        mine = Generation(full.query_ids[rows], full.query_mask[rows], full.response_ids[rows],
                          full.response_mask[rows], [full.texts[i] for i in rows.tolist()], full.has_eos[rows])
        rollout = trainer.make_experience([batch[i] for i in rows.tolist()], mine)
        metrics = {**rollout.metrics, **trainer.ppo_update(rollout, iteration=0)}
        weights = {**{f"policy.{k}": v for k, v in trainable_state(trainer.unwrapped_policy).items()},
                   **{f"value.{k}": v for k, v in trainable_state(trainer.unwrapped_value).items()}}
        if rank == 0:
            torch.save({"weights": weights, "metrics": metrics}, f"{out}/ppo-update-{s}.pt")
        # an end-to-end run with a checkpoint per iteration (resumed from the first one below)
        if s == "fsdp":
            PPOTrainer(ppo_cfg(s), "tiny", scorer, prompts, f"{out}/ppo-{s}", ptx_texts=corpus, progress=False).train()
    if rank == 0:
        json.dump(info, open(f"{out}/info.json", "w"))
    if world > 1:  # the same FSDP SFT run, killed right after its checkpoint of step 2
        dist.barrier()
        def kill(step, row):
            if step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        train_sft(sft_cfg("fsdp"), demos, None, f"{out}/sft-killed", on_step=kill)
elif mode == "resume":
    train_sft(sft_cfg("fsdp"), demos, None, f"{out}/sft-killed", resume=True)
    train_dpo(dpo_cfg("fsdp"), dpo_train, f"{out}/dpo-resumed", val=dpo_val, resume=True, progress=False)
    PPOTrainer(ppo_cfg("fsdp"), "tiny", scorer, prompts, f"{out}/ppo-resumed", ptx_texts=corpus, progress=False,
               resume=True).train()
    # PPO with LoRA (the reference = the sharded base with adapters off), bf16 autocast and gradient
    # checkpointing, under FSDP: it completes and saves a plain folder (adapters merged)
    low = DistributedConfig(strategy="fsdp", dtype="bf16", gradient_checkpointing=True)
    lora = dataclasses.replace(ppo_cfg("fsdp"), total_episodes=8, lora_r=4, gamma_ptx=0.0, checkpoint_every=0,
                               distributed=low)
    PPOTrainer(lora, "tiny", scorer, prompts, f"{out}/ppo-lora", progress=False).train()
print("worker done", mode, rank)
"""

TOL = 2e-5


def free_port() -> int:
    """A port nobody listens on now (other test runs on this machine launch process groups too)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(script: Path, out: Path, mode: str, procs: int, expect_ok: bool = True) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLOOP_NO_PROGRESS": "1"}
    if procs == 1:
        cmd = [sys.executable, str(script), str(out), mode]
    else:
        port = str(free_port())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", port]
        cmd += [str(script), str(out), mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    else:
        assert proc.returncode != 0, "the killed run should have failed"


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def _rm_weights(folder: Path) -> dict[str, torch.Tensor]:
    from alignloop.models.reward import load_reward_model

    model, _ = load_reward_model(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_ddp_and_fsdp_on_two_processes_match_one_process_and_resume_exactly(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _launch(script, one, "train", 1)
    _launch(script, two, "train", 2, expect_ok=False)  # ends with the SIGKILLed run

    info, info_one = json.loads((two / "info.json").read_text()), json.loads((one / "info.json").read_text())
    for what in ("policy", "value", "dpo"):
        local, total = info["dpo-fsdp-held"] if what == "dpo" else info[f"ppo-fsdp-{what}"]
        assert 0.4 * total <= local <= 0.6 * total, (what, local, total)  # about half on each process
        assert (info["dpo-ddp-held"] if what == "dpo" else info[f"ppo-ddp-{what}"])[0] == total  # a DDP replica: all

    from alignloop.models.registry import resolve

    start = _hf_weights(Path(resolve("tiny")))
    for s in ("ddp", "fsdp"):
        for run in ("sft", "sft-lora") if s == "fsdp" else ("sft",):
            ref = _hf_weights(one / f"{run}-ddp" / "final")
            got = _hf_weights(two / f"{run}-{s}" / "final")  # a plain folder: no shard files, no FSDP prefixes
            assert _worst(ref, got) < TOL, (run, s)
            assert _worst(ref, start) > 100 * TOL  # training moved the weights far more than the mismatch
        assert _worst(_rm_weights(one / "rm-ddp" / "model"), _rm_weights(two / f"rm-{s}" / "model")) < TOL, s
        # DPO (K = 2..4, a fully tied ranking) and best-of-N fine-tuning (SFT on the main process's samples)
        ref, got = _hf_weights(one / "dpo-ddp" / "policy"), _hf_weights(two / f"dpo-{s}" / "policy")
        assert _worst(ref, got) < TOL and _worst(ref, start) > 100 * TOL, s
        for name, value in info_one["dpo-ddp-val"].items():
            assert info[f"dpo-{s}-val"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (s, name)
        assert (two / f"bon-{s}" / "best_of_n.jsonl").read_text() == (one / "bon-ddp" / "best_of_n.jsonl").read_text()
        ref, got = _hf_weights(one / "bon-ddp" / "final"), _hf_weights(two / f"bon-{s}" / "final")
        assert _worst(ref, got) < TOL and _worst(ref, start) > 100 * TOL, s
        a, b = torch.load(one / "ppo-update-ddp.pt"), torch.load(two / f"ppo-update-{s}.pt")
        assert _worst(a["weights"], b["weights"]) < TOL, s
        for name, value in a["metrics"].items():
            assert b["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (s, name)

    # The FSDP-saved SFT policy loads as a plain model folder in this single process and generates.
    from alignloop.config import GenerationConfig
    from alignloop.models.generation import generate
    from alignloop.models.loading import load_policy

    model, tok = load_policy(str(two / "sft-fsdp" / "final"))
    assert len(generate(model, tok, ["Say thing 1."], GenerationConfig(max_new_tokens=3), seed=0).texts) == 1

    # Resume after SIGKILL (SFT) and from the first checkpoint (PPO) equal the uninterrupted runs.
    killed = two / "sft-killed"
    assert not (killed / "final").exists() and (killed / "checkpoints" / "step-000002").exists()
    shutil.copytree(two / "ppo-fsdp", two / "ppo-resumed")
    shutil.rmtree(two / "ppo-resumed" / "policy")
    shutil.rmtree(two / "ppo-resumed" / "checkpoints" / "step-000002")
    shutil.copytree(two / "dpo-fsdp", two / "dpo-resumed")  # DPO: from its checkpoint of step 4 of 6
    for gone in ("policy", "finished.json", "checkpoints/step-000005"):
        path = two / "dpo-resumed" / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert (two / "dpo-resumed" / "checkpoints" / "step-000004").exists()
    _launch(script, two, "resume", 2)
    got = _hf_weights(two / "dpo-resumed" / "policy")
    assert _worst(_hf_weights(two / "dpo-fsdp" / "policy"), got) < 1e-7
    assert _worst(_hf_weights(two / "sft-fsdp" / "final"), _hf_weights(killed / "final")) < 1e-7
    assert _worst(_hf_weights(two / "ppo-fsdp" / "policy"), _hf_weights(two / "ppo-resumed" / "policy")) < 1e-7
    lora_policy, _ = load_policy(str(two / "ppo-lora" / "policy"))
    assert not any("lora" in name for name, _ in lora_policy.named_parameters())
