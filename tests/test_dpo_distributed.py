"""DPO under ``accelerate launch`` with 2 CPU processes (DDP over gloo) against 1 process: each
process takes its share of every step's prompts, so the two layouts must end with the same
weights and the same logged metrics (float32 sums in another order: 1e-5 / 1e-4 tolerance)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = r"""
import random, sys
import torch
from alignloop.config import DPOConfig, ModelConfig
from alignloop.data.records import Ranking
from alignloop.train.dpo import train_dpo

torch.set_num_threads(1)
answers = ["Yes, gladly.", "Sure.", "Maybe later.", "No.", "Never, go away."]
rng = random.Random(0)
def rankings(n, start):
    out = []
    for i in range(start, start + n):
        chosen = rng.sample(range(5), 3)
        out.append(Ranking.from_ranks(f"p{i}", f"Question {i}?", [answers[c] for c in chosen], chosen))
    return out
train, val = rankings(8, 0), rankings(4, 100)
cfg = DPOConfig(model=ModelConfig(name="tiny"), lr=2e-2, beta=0.5, epochs=2, prompts_per_step=4,
                micro_batch_completions=3)
train_dpo(cfg, train, sys.argv[1] + "/run", val=val, progress=False)
"""


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLOOP_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_the_same_policy_as_one(tmp_path: Path) -> None:
    from alignloop.train.runlog import read_metrics

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), str(one)])
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    _run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", "29541", str(script), str(two)])  # fmt: skip
    a = load_file(str(one / "run" / "policy" / "model.safetensors"))
    b = load_file(str(two / "run" / "policy" / "model.safetensors"))
    start = load_file(str(Path(_tiny_folder()) / "model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert worst < 1e-5 and moved > 100 * worst, (worst, moved)
    rows_a, rows_b = read_metrics(one / "run"), read_metrics(two / "run")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [0, 1, 2, 2, 3, 4, 4]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _tiny_folder() -> str:
    from alignloop.models.registry import resolve

    return resolve("tiny")
