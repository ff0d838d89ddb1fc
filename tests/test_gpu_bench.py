"""bench/gpu.sh's plumbing without a GPU: its refusal without a model folder, and the table it prints
from per-part results (a failed part shows its error; ratios only where both sides ran). The whole
script's CPU smoke run (`bash bench/gpu.sh --smoke`) takes minutes and is run by hand, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_needs_a_model_folder(tmp_path: Path) -> None:
    env = {**os.environ, "ALIGNLOOP_GPU_MODEL": str(tmp_path / "missing"), "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "ALIGNLOOP_GPU_MODEL must name a Hugging Face model folder" in proc.stdout
    assert (tmp_path / "gpu-bench" / "gpu.log").exists()  # logged under $OUT


def test_table_shows_results_errors_and_ratios(tmp_path: Path) -> None:
    env = {"device": "NVIDIA H200", "torch": "2.11"}
    parts = {
        "ours-sft": {"tokens_per_s": 50000.0, "peak_mem_gib": 3.0, "mem_kind": "GPU", "note": "16 rows", "env": env},
        "ours-rm": {"tokens_per_s": 9000.0, "pairs_per_s": 600.0, "peak_mem_gib": 2.0, "mem_kind": "GPU", "env": env},
        "trl-rm": {"tokens_per_s": 8000.0, "pairs_per_s": 200.0, "peak_mem_gib": 4.0, "mem_kind": "GPU", "env": env},
        "ours-ppo": {"episodes_per_s": 20.0, "peak_mem_gib": 5.0, "mem_kind": "GPU", "env": env},
    }
    for name, result in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    (tmp_path / "trl-ppo.error").write_text("timed out after 90s")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--table", str(tmp_path)], capture_output=True, text=True
    ).stdout
    assert "RM    ours/TRL  pairs/s: 3.00x, peak memory: 0.50x" in out
    assert "PPO   TRL       failed: timed out after 90s" in out
    assert "PPO   ours/TRL" not in out  # no ratio against a failed part
    assert "device: NVIDIA H200" in out
