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

Rows: full fine-tuning, where both train the whole policy and the whole value model (the
target: >= 1.5x TRL's episodes/s at <= 0.6x its peak RSS), and LoRA (r=16, alpha 32 on q/k/v/o;
the reference is the base with adapters disabled; target >= 1.5x at <= 0.5x), plus ours with the
value model sharing the RM's trunk. Every remaining difference between the two sides is printed
beside the table (``DIFFERENCES``).

``--contend`` runs our full fine-tuning row twice, quiet and beside one competing busy process
(a Python loop on one core), and prints both seconds per iteration and their ratio (target
<= 2.5x on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
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

#: What still differs between the two sides after the settings above, printed beside the table.
DIFFERENCES = [
    "value model, full rows: both train all of it; ours keeps the token embeddings frozen and shared with the "
    "frozen RM (TRL trains its copy of them)",
    "value model, LoRA rows: ours trains LoRA adapters (r=16) + head on a frozen copy of the RM trunk, TRL "
    "trains its whole value model (TRL's PPO has no value LoRA)",
    "value model, lora+shared-value row (ours only): adapters on the RM's own trunk, no copy",
    "missing EOS: ours replaces the score by -1.0, TRL subtracts 1.0 from it (same work, different reward)",
    "LR schedule: both linear to 0; ours steps per PPO update (4 per iteration), TRL per iteration",
    "ours: logits only at response positions; micro-batches of --micro-batch rows grouped by length; the "
    "reference, value and RM passes side by side on the free cores; freed heap returned after each pass",
    "both take pi_old from the sampler's log-probs; ours samples in one part per core (own seeds), TRL in one batch",
]


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
    """This worker's own peak RSS (VmHWM: ``ru_maxrss`` would carry the driver's peak across exec)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reward_model import peak_rss_mib

    return peak_rss_mib() / 1024


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
        value_lora_r=LORA["r"] if variant != "full" else 0,  # full FT: the whole value model, as TRL
        value_lora_alpha=LORA["alpha"],
        adam_eps=1e-8,  # TRL's (transformers') AdamW defaults: betas (0.9, 0.999), eps 1e-8
        max_grad_norm=0.0,  # TRL's PPO loop steps without clipping
        lr_schedule="linear",  # TRL's default: linear decay to 0 over the run
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
        if which == "ours":  # this checkout's alignloop, not whichever the venv has installed
            env["PYTHONPATH"] = str(HERE.parent / "src")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        return json.loads(result.read_text())


def contend(args: argparse.Namespace, work_root: Path) -> None:
    """Our full fine-tuning row on a quiet machine, then beside one competing busy process."""
    print(f"--contend: full fine-tuning, {args.iterations} iterations, torch threads {args.threads}", flush=True)
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        prepare(model, work_root / model)
        spec_file = work_root / model / "spec.json"
        quiet = run_worker(sys.executable, "ours", spec_file, args.iterations, "full", args.threads, args.micro_batch)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core kept busy
        try:
            loaded = run_worker(
                sys.executable, "ours", spec_file, args.iterations, "full", args.threads, args.micro_batch
            )
        finally:
            busy.kill()
            busy.wait()
        if "error" in quiet or "error" in loaded:
            print(f"{model}: error: {quiet.get('error') or loaded.get('error')}")
            continue
        q, c = quiet["seconds_per_iteration"], loaded["seconds_per_iteration"]
        print(
            f"{model:<24} quiet {q:8.2f} s/iter   one busy process {c:8.2f} s/iter   "
            f"ratio {c / q:5.2f}x (target <= 2.5x)"
        )
        for name, r in (("quiet", quiet), ("contended", loaded)):
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(r["phases"].items()))
            print(f"{'':<24} {name:<10} phases: {phases}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,smollm2-135m-instruct")
    ap.add_argument("--iterations", type=int, default=4, help="PPO iterations per run; the first is a warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-lora", action="store_true", help="only the full fine-tuning rows")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument(
        "--contend", action="store_true", help="our full-FT row quiet and beside one busy process (no TRL rows)"
    )
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
    work_root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alignloop-bench-ppo-"))
    if args.contend:
        contend(args, work_root)
        return
    trl_python = None if args.skip_trl else str(ensure_trl_venv())
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
    print("\nDIFFERENCES (ours vs TRL, beyond the shared settings above):")
    for line in DIFFERENCES:
        print(f"  - {line}")


if __name__ == "__main__":
    main()
