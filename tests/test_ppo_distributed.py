"""PPO under ``accelerate launch`` with 2 CPU processes (DDP over gloo) against 1 process.

Sampling differs per process by design (a different seed per rank), so whole runs cannot match.
What must match is everything after sampling: given the SAME global batch of responses, split
over 2 processes, one PPO update (RM scores with running normalisation, reference log-probs,
values, whitened rewards and advantages, 2 epochs of policy and value steps with micro-batches
and PPO-ptx) must give the same weights and metrics as 1 process holding the whole batch.
Tolerance: 1e-5 absolute on every weight and 1e-4 relative on every metric (float32 sums in a
different order). The same script then trains 2 iterations end to end under both layouts.
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
import json, sys
import torch
from alignloop.config import GenerationConfig, PPOConfig
from alignloop.models.generation import Generation, generate
from alignloop.models.scoring import FunctionScorer
from alignloop.train.distributed import rank_slice
from alignloop.train.ppo import PPOTrainer

torch.set_num_threads(1)
out = sys.argv[1]
prompts = [f"Tell me about thing number {i}." for i in range(12)]
corpus = ["The cat sat on the mat.", "Rain falls in spring.", "Bread needs flour.", "Rivers run to the sea."]
cfg = PPOConfig(
    total_episodes=16, batch_size=8, minibatch_size=8, ppo_epochs=2, lr=1e-2, beta=0.1,
    whiten_rewards=True, score_norm=True, no_eos_penalty=None, gamma_ptx=0.5, ptx_batch_size=4,
    micro_batch_size=2, generation=GenerationConfig(max_new_tokens=6, temperature=1.0),
)
scorer = FunctionScorer(lambda p, c: c.count("e") - 0.1 * len(c))
trainer = PPOTrainer(cfg, "tiny", scorer, prompts, None, ptx_texts=corpus, progress=False)  # no run folder
rank, world = trainer.rank, trainer.world

# 1. The same global batch for any number of processes: sampled from the initial policy with a
#    fixed seed on every process, then split by rows the way batch_prompts splits prompts.
batch = prompts[:8]
full = generate(trainer.unwrapped_policy, trainer.tokenizer, batch, cfg.generation, seed=123)
rows = torch.tensor(rank_slice(list(range(8)), rank, world))
mine = Generation(full.query_ids[rows], full.query_mask[rows], full.response_ids[rows], full.response_mask[rows],
                  [full.texts[i] for i in rows.tolist()], full.has_eos[rows])
rollout = trainer.make_experience([batch[i] for i in rows.tolist()], mine)
before = [p.detach().clone() for p in trainer.unwrapped_policy.parameters()]
train_metrics = trainer.ppo_update(rollout, iteration=0)
info = {"rank": rank, "world": world, "seed": trainer.sampling.initial_seed(), "prompts": trainer.batch_prompts(0)}
with open(f"{out}/rank{rank}.json", "w") as fh:
    json.dump(info, fh)
if trainer.is_main:
    weights = {f"policy.{n}": p.detach().clone() for n, p in trainer.unwrapped_policy.named_parameters()}
    weights.update({f"value.{n}": p.detach().clone() for n, p in trainer.unwrapped_value.named_parameters()})
    moved = max((p - q).abs().max().item() for p, q in zip(trainer.unwrapped_policy.parameters(), before))
    result = {"weights": weights, "metrics": {**rollout.metrics, **train_metrics}, "moved": moved}
    torch.save(result, f"{out}/update.pt")

# 2. A fresh end-to-end run of 2 iterations (sampling on each process with its own seed).
trainer2 = PPOTrainer(cfg, "tiny", scorer, prompts, out + "/run", ptx_texts=corpus, progress=False)
trainer2.train()
"""


def _run(cmd: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLOOP_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _run([sys.executable, str(script), str(one)], one)
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    _run(
        [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29533",
            str(script),
            str(two),
        ],
        two,
    )
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["seed"] != ranks[1]["seed"]  # a different sampling seed per process
    single = json.loads((one / "rank0.json").read_text())
    # a shared data order: the two shares of iteration 0 are the one-process batch, strided
    assert sorted(ranks[0]["prompts"] + ranks[1]["prompts"]) == sorted(single["prompts"])
    assert ranks[0]["prompts"] == single["prompts"][0::2] and ranks[1]["prompts"] == single["prompts"][1::2]

    a, b = torch.load(one / "update.pt"), torch.load(two / "update.pt")
    assert a["weights"].keys() == b["weights"].keys()
    worst = max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"])
    assert worst < 1e-5, worst
    assert a["moved"] > 100 * worst and a["moved"] > 1e-3  # the update itself is far larger than the mismatch
    for name, value in a["metrics"].items():
        assert b["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert a["metrics"]["ptx_loss"] > 0  # clipfrac: equal across 1 and 2 processes above; its meaning: test_ppo_core

    # the end-to-end runs: rank 0 logged both iterations and saved the policy
    from alignloop.train.runlog import read_metrics

    rows = read_metrics(two / "run")
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["episodes"] == 16
    assert (two / "run" / "policy" / "config.json").exists()
