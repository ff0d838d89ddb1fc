"""Ctrl-C / SIGTERM in a training command: a checkpoint at the step boundary, "interrupted at step N;
resume with ...", exit status 130, and the printed command continues the run to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignloop.config import ModelConfig, RMConfig
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Demonstration
from alignloop.errors import TrainingInterrupted
from alignloop.train.checkpoint import list_checkpoints, stop_on_signal
from alignloop.train.ppo import train_ppo
from alignloop.train.reward import train_reward_model
from test_ppo import PROMPTS, letter_e, small
from test_reward_model import panel_rankings

ENV = os.environ | {"ALIGNLOOP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


EPOCHS = 40  # 8 demonstrations = one step per epoch


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignloop.cli.main", *args]


def test_sigint_in_sft_checkpoints_says_how_to_resume_and_exits_130(tmp_path):
    data = tmp_path / "demos.jsonl"
    write_jsonl(data, [Demonstration(f"p{i}", f"Question {i}?", "An answer.") for i in range(8)])
    run = tmp_path / "run"
    args = ["sft", "--data", str(data), "--out", str(run), "--model", "tiny", "--epochs", str(EPOCHS)]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted at step")][-1]
    step = int(line.split()[3].rstrip(";"))
    assert line.endswith("resume with: alignloop " + " ".join(args) + " --resume")
    assert [p.name for p in list_checkpoints(run)][-1] == f"step-{step:06d}"
    assert not (run / "final").exists()

    # the printed command finishes the run
    resumed = subprocess.run(
        _cli(*line.split("resume with: alignloop ")[1].split()), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "final").is_dir() and f"trained {EPOCHS} steps" in resumed.stdout


def test_sigterm_in_reward_model_training_checkpoints_and_resumes(tmp_path):
    cfg = RMConfig(model=ModelConfig(name="tiny"), epochs=2, prompts_per_step=2, lr=1e-3, normalize=False)
    rankings = panel_rankings(8, [4])

    def kill_at_2(step: int, _row: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_on_signal(), pytest.raises(TrainingInterrupted) as caught:
        train_reward_model(cfg, rankings, tmp_path / "rm", progress=False, on_step=kill_at_2)
    assert caught.value.step == 2
    assert [p.name for p in list_checkpoints(tmp_path / "rm")] == ["step-000002"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    res = train_reward_model(cfg, rankings, tmp_path / "rm", progress=False, resume=True)
    assert res.steps == 8 and res.model_dir.exists()


def test_sigint_in_ppo_checkpoints_at_the_iteration(tmp_path):
    def stop_at_1(iteration: int, _metrics: dict) -> None:
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with stop_on_signal(), pytest.raises(TrainingInterrupted) as caught:
        train_ppo(small(total_episodes=12), "tiny", letter_e(), PROMPTS, tmp_path / "ppo", progress=False,
                  on_iteration=stop_at_1)  # fmt: skip
    assert caught.value.step == 1 and Path(caught.value.run_dir) == tmp_path / "ppo"
    assert [p.name for p in list_checkpoints(tmp_path / "ppo")] == ["step-000001"]
