"""Our PPO vs TRL 0.29.1's ``trl.experimental.ppo.PPOTrainer``: same policy, reward model, prompts, settings.

    .venv/bin/python bench/ppo.py [--models tiny,smollm2-135m-instruct] [--iterations 4] [--threads 2]
                                  [--no-lora] [--skip-trl]

Both trainers run the same configuration: batch 8, response length 32 (temperature 0.7), 4 PPO
epochs over 1 minibatch, fp32, KL coefficient 0.05, the policy initialised from the model, the
reward model = that model's trunk with one seeded scalar head (the same weights in both formats),
the value model initialised from the reward model, the same 64 chat-formatted prompts. Each run
is a fresh subprocess (so peak RSS is its own): ours in this venv, TRL in ``bench/.venv-trl029``,
which this script creates on first use (``pip install torch==2.13.0`` first, then trl==0.29.1
and peft for the LoRA rows).

Figures: whole-iteration episodes/s (generation + scoring + reference/value passes + PPO epochs),
timed from the end of the first iteration (a warm-up) to the end of the last; the CPU seconds the
process used per iteration (its work, robust to other load on the machine; on the ours/TRL line,
TRL's CPU seconds over ours, so > 1 means less work for ours); and the process's peak RSS.

Rows: full fine-tuning (the target: >= 1.5x TRL's episodes/s at <= 0.75x its peak memory), and
LoRA (r=16, alpha 32 on q/k/v/o; the reference is the base with adapters disabled) for both,
plus ours with the value model sharing the RM's trunk (value LoRA). Ours differs from TRL by
design where it saves work or memory: logits only at response positions, policy and value passes
side by side on the CPU cores, micro-batches of 4 rows grouped by length (``--micro-batch``), the
value model sharing the RM's frozen token embeddings, freed heap memory returned after each pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".venv-trl029"
BATCH, RESPONSE_LENGTH, PPO_EPOCHS, TEMPERATURE, LR, KL = 8, 32, 4, 0.7, 1e-5, 0.05
LORA = {"r": 16, "alpha": 32, "targets": "q_proj,k_proj,v_proj,o_proj"}


# ---------------------------------------------------------------------------------------------- set-up


def ensure_trl_venv() -> Path:
    """bench/.venv-trl029 with torch 2.13.0 (CPU wheel, pinned first) and trl 0.29.1."""
    python = TRL_VENV / "bin" / "python"
    probe = [str(python), "-c", "import peft, trl, sys; sys.exit(trl.__version__ != '0.29.1')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[setup] creating {TRL_VENV} with torch==2.13.0 and trl==0.29.1 (first run only)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "trl==0.29.1", "peft==0.21.2"], check=True)
    return python


def prepare(model: str, work: Path) -> dict:
    """The shared inputs: policy folder, the RM in both formats, prompts as text and token ids."""
    import math

    import torch
    from transformers import AutoModelForSequenceClassification

    from alignloop.data.builtin import builtin_prompts
    from alignloop.models.generation import query_token_ids
    from alignloop.models.loading import load_tokenizer
    from alignloop.models.registry import resolve
    from alignloop.models.reward import RewardModel, RewardModelInfo

    policy_dir = resolve(model)
    tok = load_tokenizer(policy_dir)
    spec_file = work / "spec.json"
    if spec_file.exists():
        return json.loads(spec_file.read_text())
    work.mkdir(parents=True, exist_ok=True)
    seqcls = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    d = seqcls.config.hidden_size
    with torch.no_grad():
        seqcls.score.weight.copy_(torch.randn(1, d, generator=torch.Generator().manual_seed(0)) / math.sqrt(d + 1))
    seqcls.config.pad_token_id = tok.pad_token_id
    seqcls.save_pretrained(work / "rm_trl")
    tok.save_pretrained(work / "rm_trl")
    ours = RewardModel(seqcls.model, RewardModelInfo(kind="causal", pooling="last", base_model=model))
    with torch.no_grad():
        ours.head.weight.copy_(seqcls.score.weight)
        ours.head.bias.zero_()
    ours.save(work / "rm_ours", tok)
    prompts = [p.text for p in builtin_prompts()[:64]]
    spec = {
        "model": model,
        "policy": policy_dir,
        "rm_trl": str(work / "rm_trl"),
        "rm_ours": str(work / "rm_ours"),
        "prompts": prompts,
        "prompt_ids": [query_token_ids(tok, p) for p in prompts],
    }
    spec_file.write_text(json.dumps(spec))
    return spec


# ---------------------------------------------------------------------------------------------- workers


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker_ours(spec: dict, iterations: int, variant: str, micro_batch: int) -> dict:
    from alignloop.config import GenerationConfig, PPOConfig
    from alignloop.train.ppo import PPOTrainer

    cfg = PPOConfig(
        total_episodes=BATCH * iterations,
        batch_size=BATCH,
        minibatch_size=BATCH,
        ppo_epochs=PPO_EPOCHS,
        lr=LR,
        beta=KL,
        lora_r=LORA["r"] if variant != "full" else 0,
        lora_alpha=LORA["alpha"],
        lora_target_modules=LORA["targets"],
        value_model="shared" if variant == "lora+shared-value" else "separate",
        value_lora_r=LORA["r"],
        generation=GenerationConfig(max_new_tokens=RESPONSE_LENGTH, temperature=TEMPERATURE, batch_size=BATCH),
        micro_batch_size=micro_batch,
    )
    stamps: list[float] = []
    cpu: list[float] = []
    phases: dict[str, float] = {}

    def on_iteration(i: int, metrics: dict) -> None:
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        if i > 1:
            for k, v in metrics.items():
                if k.startswith("time_"):
                    phases[k[5:]] = phases.get(k[5:], 0.0) + v

    trainer = PPOTrainer(
        cfg, spec["policy"], spec["rm_ours"], spec["prompts"], None, progress=False, on_iteration=on_iteration
    )
    trainer.train()
    timed = stamps[-1] - stamps[0]
    return {
        "episodes_per_s": BATCH * (iterations - 1) / timed,
        "seconds_per_iteration": timed / (iterations - 1),
        "cpu_seconds_per_iteration": (cpu[-1] - cpu[0]) / (iterations - 1),
        "peak_rss_gib": peak_rss_gib(),
        "phases": {k: v / (iterations - 1) for k, v in phases.items()},
    }


def worker_trl(spec: dict, iterations: int, variant: str, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    lora = variant != "full"
    ref = None if lora else AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["rm_trl"], num_labels=1, dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(spec["rm_trl"], num_labels=1, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=LORA["targets"].split(",")
        )
    args = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=PPO_EPOCHS,
        response_length=RESPONSE_LENGTH,
        temperature=TEMPERATURE,
        total_episodes=BATCH * iterations,
        learning_rate=LR,
        kl_coef=KL,
        stop_token="eos",
        missing_eos_penalty=1.0,
        local_rollout_forward_batch_size=BATCH,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=rm,
        train_dataset=data,
        value_model=value,
        eval_dataset=data,
        peft_config=peft_config,
    )
    stamps: list[float] = []
    cpu: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

    trainer.add_callback(Stamp())
    trainer.train()
    timed = stamps[-1] - stamps[0]
    return {
        "episodes_per_s": BATCH * (iterations - 1) / timed,
        "seconds_per_iteration": timed / (iterations - 1),
        "cpu_seconds_per_iteration": (cpu[-1] - cpu[0]) / (iterations - 1),
        "peak_rss_gib": peak_rss_gib(),
    }


# ---------------------------------------------------------------------------------------------- driver


def run_worker(
    python: str, which: str, spec_file: Path, iterations: int, variant: str, threads: int, micro_batch: int = 4
) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = Path(out) / "result.json"
        cmd = [python, str(Path(__file__).resolve()), "--worker", which, "--spec", str(spec_file)]
        cmd += ["--iterations", str(iterations), "--variant", variant, "--threads", str(threads)]
        cmd += ["--result", str(result), "--micro-batch", str(micro_batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ALIGNLOOP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,smollm2-135m-instruct")
    ap.add_argument("--iterations", type=int, default=4, help="PPO iterations per run; the first is a warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-lora", action="store_true", help="only the full fine-tuning rows")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--micro-batch", type=int, default=4, help="our micro-batch rows (memory); 0 = the whole minibatch")
    ap.add_argument("--work", default=None, help="folder for the shared inputs (default: a temporary one)")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["ours", "trl"])
    ap.add_argument("--spec")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--result")
    args = ap.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        spec = json.loads(Path(args.spec).read_text())
        if args.worker == "ours":
            res = worker_ours(spec, args.iterations, args.variant, args.micro_batch)
        else:
            res = worker_trl(spec, args.iterations, args.variant, str(Path(args.result).parent / "trl-out"))
        Path(args.result).write_text(json.dumps(res))
        return

    if args.iterations < 2:
        ap.error("--iterations must be at least 2 (the first one is a warm-up)")
    trl_python = None if args.skip_trl else str(ensure_trl_venv())
    work_root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alignloop-bench-ppo-"))
    variants = ["full"] if args.no_lora else ["full", "lora", "lora+shared-value"]
    print(
        f"batch {BATCH}, response length {RESPONSE_LENGTH}, {PPO_EPOCHS} PPO epochs, 1 minibatch, fp32, "
        f"temperature {TEMPERATURE}; {args.iterations} iterations (first = warm-up); torch threads {args.threads}; "
        f"LoRA r={LORA['r']} alpha={LORA['alpha']} on {LORA['targets']}",
        flush=True,
    )
    header = (
        f"{'model':<24} {'variant':<18} {'trainer':<8} {'episodes/s':>10} {'s/iter':>8} {'CPU s/iter':>10} "
        f"{'peak RSS GiB':>12}"
    )
    table = [header, "-" * len(header)]
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = prepare(model, work_root / model)
        spec_file = work_root / model / "spec.json"
        for variant in variants:
            results = {
                "ours": run_worker(
                    sys.executable, "ours", spec_file, args.iterations, variant, args.threads, args.micro_batch
                )
            }
            if trl_python and variant != "lora+shared-value":
                results["trl"] = run_worker(trl_python, "trl", spec_file, args.iterations, variant, args.threads)
            for who, r in results.items():
                if "error" in r:
                    line = f"{model:<24} {variant:<18} {who:<8} error: {r['error']}"
                else:
                    line = (
                        f"{model:<24} {variant:<18} {who:<8} {r['episodes_per_s']:>10.3f} "
                        f"{r['seconds_per_iteration']:>8.2f} {r['cpu_seconds_per_iteration']:>10.2f} "
                        f"{r['peak_rss_gib']:>12.2f}"
                    )
                    if r.get("phases"):
                        line += "   (" + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(r["phases"].items())) + ")"
                table.append(line)
                print(line, flush=True)
            ours, trl = results.get("ours", {}), results.get("trl", {})
            if "episodes_per_s" in ours and "episodes_per_s" in trl:
                ratio = (
                    f"{'':<24} {variant:<18} {'ours/TRL':<8} {ours['episodes_per_s'] / trl['episodes_per_s']:>9.2f}x "
                    f"{'':>8} {trl['cpu_seconds_per_iteration'] / ours['cpu_seconds_per_iteration']:>9.2f}x "
                    f"{ours['peak_rss_gib'] / trl['peak_rss_gib']:>11.2f}x"
                )
                table.append(ratio)
                print(ratio, flush=True)
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
