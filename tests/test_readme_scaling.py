"""The README's scaling section, followed literally: its 2-process CPU command (FSDP over gloo with
the example config), then the saved policy loads as a plain folder in one process."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scaling_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Scaling: GPUs, sharding, several machines", 1)[1].split("\n## ", 1)[0]


def test_the_scaling_section_shows_every_launch_and_names_real_options() -> None:
    section = scaling_section()
    for needed in ("--num_machines", "--machine_rank", "--main_process_ip", "torchrun", "rm serve", "fsdp.yaml"):
        assert needed in section, needed
    assert (ROOT / "examples" / "configs" / "fsdp.yaml").exists()
    import typer

    from alignloop.cli.main import app

    root = typer.main.get_command(app)

    def options(*path: str) -> set[str]:
        cmd = root
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}

    for command in ("sft", "ppo", "bon", "dpo"):
        assert {"--dtype", "--strategy", "--gradient-checkpointing"} <= options(command), command
    assert {"--dtype", "--strategy", "--gradient-checkpointing"} <= options("rm", "train")
    assert "--frozen-dtype" in options("ppo")
    assert {"--device", "--dtype"} <= options("rm", "serve")
    # the DeepSpeed launch shown for a user's own loop names real `accelerate launch` options
    from accelerate.commands.launch import launch_command_parser

    launch = {opt for action in launch_command_parser()._actions for opt in action.option_strings}
    assert "accelerate launch --use_deepspeed --zero_stage 3" in section
    assert {"--use_deepspeed", "--zero_stage", "--num_processes"} <= launch


@pytest.mark.slow
def test_the_two_process_cpu_command_runs_as_written(tmp_path: Path) -> None:
    from alignloop.data.jsonl import write_jsonl
    from alignloop.data.records import Demonstration

    lines = [
        ln for ln in scaling_section().splitlines() if ln.startswith("accelerate launch --multi_gpu --num_processes 2")
    ]
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    argv[0] = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    write_jsonl(tmp_path / "demos.jsonl", [Demonstration(f"p{i}", f"Say {i}.", f"Answer {i}.", "x") for i in range(8)])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    # as written, plus a free rendezvous port (other runs on this machine launch process groups too)
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLOOP_NO_PROGRESS": "1"}
    cmd = [argv[0], argv[1], "--main_process_port", port, *argv[2:]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = tmp_path / "runs" / "sft-fsdp"
    from alignloop.config import SFTConfig, load_config
    from alignloop.models.loading import load_policy

    cfg = load_config(run / "config.yaml", SFTConfig)
    assert cfg.distributed.strategy == "fsdp" and cfg.distributed.dtype == "bf16"
    model, _ = load_policy(str(run / "final"))
    assert sum(p.numel() for p in model.parameters()) > 0
