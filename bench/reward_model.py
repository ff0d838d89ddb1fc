"""Bench: our per-prompt K-way reward-model training vs TRL's RewardTrainer, same backbone, same data.

Run: ``.venv/bin/python bench/reward_model.py [--backbones minilm-l6,tiny] [--ks 4,9] [--threads 1]``

For each backbone (``minilm-l6``, ``tiny``) and K (4, 9), one file of simulated-panel rankings
(64 training prompts, 16 held-out prompts, K made-up candidates each) is written once and both
trainers read it:

* TRL 1.16 ``RewardTrainer``, fed the expanded pairs as rows (``to_trl_preference``: every
  ranking becomes its C(K,2) prompt/chosen/rejected rows, the way TRL's users feed rankings),
  one epoch, batch 16 pairs, max_length 128, fp32, TRL's defaults otherwise (linear decay,
  gradient checkpointing on; ``--trl-gradient-checkpointing 0`` turns it off). It runs in its
  own venv, ``bench/.venv-trl`` (created on first use: ``pip install torch==2.13.0``, then
  ``trl==1.16.0`` and our transformers version).
* ours: :func:`alignloop.train.reward.train_reward_model`, each prompt's K completions one batch
  element, completions micro-batched, stopping as soon as its held-out pairwise accuracy
  reaches TRL's one-epoch held-out accuracy (at most ``--max-epochs``).
Both use the same learning rate: 1e-4 for MiniLM (TRL's default), 3e-3 for the randomly
initialised tiny model. Both run with ``--threads`` torch threads (default 1: on a shared
machine, OpenMP threads waiting on each other make a 2-thread run many times slower).

Each runs in a fresh subprocess (so peak RSS is its own). Printed side by side: comparisons
(pairs) per second of training, peak RSS, held-out pairwise accuracy, and the training wall time
to reach TRL's one-epoch held-out accuracy (for TRL: its epoch). Times count training steps only:
tokenisation, model loading and the held-out evaluations (ours evaluates every few steps to
know when it got there) are excluded on both sides. Targets (issue 3): at K=9 at least 6x
TRL's pairs/s, TRL's accuracy in at most 1/4 of its time, peak memory no higher than TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_VENV = ROOT / "bench" / ".venv-trl"
TRL_VERSION = "1.16.0"
TORCH_VERSION = "2.13.0"
MAX_LENGTH = 128

POSITIVE = "great wonderful helpful clear friendly excellent happy useful lovely kind bright".split()
NEGATIVE = "terrible awful useless boring horrible sad bad wrong ugly rude dull".split()
FILLER = (
    "the idea here is that we can look at it and then say more about what it means for you in practice "
    "so first consider this part next think about how that works"
).split()


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Data: made-up candidates of varying gold utility, ranked by a low-noise simulated panel.


def candidate(rng: random.Random, prompt: str) -> str:
    from alignloop.labelers.text import keywords

    kws = [surface for _, surface in keywords(prompt)]
    tone, cover = rng.random(), rng.random()
    out = []
    for _ in range(rng.randint(10, 36)):
        u = rng.random()
        if u < 0.4:
            out.append(rng.choice(POSITIVE if rng.random() < tone else NEGATIVE))
        elif u < 0.4 + 0.35 * cover and kws:
            out.append(rng.choice(kws))
        else:
            out.append(rng.choice(FILLER))
    return " ".join(out)


def write_data(work: Path, k: int, n_train: int, n_held: int, seed: int = 0) -> tuple[Path, Path]:
    from alignloop.config import PanelConfig
    from alignloop.data.builtin import base_prompts
    from alignloop.data.jsonl import write_jsonl
    from alignloop.data.records import Prompt, stable_id
    from alignloop.labelers import SimulatedPanel

    rng = random.Random(seed)
    texts = [t for _, t in base_prompts() if len(t.split()) <= 20]
    rng.shuffle(texts)
    panel = SimulatedPanel(
        PanelConfig(n_labelers=10, n_groups=5, careless_fraction=0.0, length_lover_fraction=0.0, temperature=0.02)
    )
    items = []
    for i, text in enumerate(texts[: n_train + n_held]):
        items.append((Prompt(stable_id("bench", text), text, f"user-{i}"), [candidate(rng, text) for _ in range(k)]))
    rankings = panel.rank_items(items)
    train, held = work / f"rankings-k{k}.jsonl", work / f"heldout-k{k}.jsonl"
    write_jsonl(train, rankings[:n_train])
    write_jsonl(held, rankings[n_train:])
    return train, held


# ---------------------------------------------------------------------------------------------
# The TRL side (runs inside bench/.venv-trl; imports only alignloop's pure-Python data records).


def ensure_trl_venv() -> Path:
    """bench/.venv-trl with torch==2.13.0 (first, so no CUDA wheels), trl==1.16.0 and our transformers."""
    import transformers

    py = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / f".installed-trl-{TRL_VERSION}-transformers-{transformers.__version__}"
    if stamp.exists():
        return py
    print(
        f"[setup] creating {TRL_VENV} (torch=={TORCH_VERSION}, trl=={TRL_VERSION}, "
        f"transformers=={transformers.__version__})"
    )
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, f"trl=={TRL_VERSION}", f"transformers=={transformers.__version__}"], check=True)
    stamp.touch()
    return py


def trl_worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "src"))  # for the data records and the TRL export only
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from alignloop.data.export import to_trl_preference
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    encoder = args.kind == "encoder"

    def prompt_text(p: str) -> str:  # the text our RM sees before the completion
        if encoder:
            return p + " "
        return tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)

    def rows(path: str) -> Dataset:
        out = to_trl_preference(read_jsonl(path, Ranking))
        return Dataset.from_list([{**r, "prompt": prompt_text(r["prompt"])} for r in out])

    train, held = rows(args.train), rows(args.heldout)
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-rm-"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        num_train_epochs=1,
        learning_rate=args.lr,
        max_length=MAX_LENGTH,
        bf16=False,
        fp16=False,
        save_strategy="no",
        report_to="none",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        eos_token="[SEP]" if encoder else None,
        gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    trainer = RewardTrainer(model=args.model, args=config, train_dataset=train, eval_dataset=held, processing_class=tok)
    n_pairs = len(trainer.train_dataset)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

    model = trainer.model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            batch = {k: v.to(model.device) for k, v in batch.items()}
            chosen, rejected = model(**batch).logits.squeeze(-1).chunk(2)
            correct += int((chosen > rejected).sum())
            total += len(chosen)
    return {
        "pairs": n_pairs,
        "dropped_pairs": len(train) - n_pairs,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "pairs_per_s": n_pairs / seconds,
        "pairs_per_cpu_s": n_pairs / cpu,
        "steps": trainer.state.global_step,
        "heldout_accuracy": correct / total,
        "heldout_pairs": total,
        "time_to_target": seconds,
        "cpu_to_target": cpu,
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------
# Our side.


def ours_worker(args: argparse.Namespace) -> dict:
    import torch

    from alignloop.config import ModelConfig, RMConfig
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking
    from alignloop.train.reward import train_reward_model

    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_jsonl(args.train, Ranking)
    held = read_jsonl(args.heldout, Ranking)
    pairs_per_epoch = sum(len(list(r.pairs())) for r in train)
    steps_per_epoch = -(-len(train) // args.prompts_per_step)
    cfg = RMConfig(
        model=ModelConfig(name=args.model),
        epochs=args.max_epochs,
        lr=args.lr,
        warmup_ratio=0.0,
        prompts_per_step=args.prompts_per_step,
        micro_batch_completions=args.micro_batch,
        max_length=MAX_LENGTH,
        normalize=False,
        val_fraction=0.0,
        eval_every=max(1, steps_per_epoch // 8),
        backbone=args.kind,
    )
    trace: list[tuple[int, float, float]] = []
    reached: dict[str, float] = {}
    # CPU seconds of training steps only: the clock runs from one step's end to the next step's end,
    # and restarts after each evaluation (step 1, which follows model loading, counts its wall time).
    cpu = {"train": 0.0, "mark": None}

    def on_step(step: int, m: dict) -> None:
        now = time.process_time()
        cpu["train"] += m["train_seconds"] if cpu["mark"] is None else now - cpu["mark"]
        cpu["mark"] = now

    def on_eval(step: int, m: dict) -> bool:
        cpu["mark"] = time.process_time()
        trace.append((step, m["train_seconds"], m["val/accuracy"]))
        if args.target is not None and m["val/accuracy"] >= args.target and not reached:
            reached.update(step=step, seconds=m["train_seconds"], accuracy=m["val/accuracy"], cpu=cpu["train"])
            return True
        return False

    with tempfile.TemporaryDirectory() as tmp:
        res = train_reward_model(
            cfg, train, Path(tmp) / "run", val=held, progress=False, on_step=on_step, on_eval=on_eval
        )
    pairs_done = pairs_per_epoch * res.steps / steps_per_epoch
    best = max(trace, key=lambda t: t[2])
    return {
        "pairs": pairs_per_epoch,
        "train_seconds": res.train_seconds,
        "train_cpu_seconds": cpu["train"],
        "pairs_per_s": pairs_done / res.train_seconds,
        "pairs_per_cpu_s": pairs_done / cpu["train"],
        "steps": res.steps,
        "epochs": res.steps / steps_per_epoch,
        "heldout_accuracy": reached.get("accuracy", best[2]),
        "time_to_target": reached.get("seconds"),
        "cpu_to_target": reached.get("cpu"),
        "best": {"step": best[0], "seconds": best[1], "accuracy": best[2]},
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------
# The orchestrator.


def run_worker(python: Path, role: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", role, "--result", str(result), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false")
    env["ALIGNLOOP_NO_PROGRESS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{role} worker failed ({' '.join(cmd)})")
    out = json.loads(result.read_text())
    result.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="minilm-l6,tiny")
    ap.add_argument("--ks", default="4,9")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts")
    ap.add_argument("--held-out", type=int, default=16, help="held-out prompts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both workers (0 = torch's default)")
    ap.add_argument("--prompts-per-step", type=int, default=2, help="ours: prompts (batch elements) per step")
    ap.add_argument("--micro-batch", type=int, default=18, help="ours: completions per forward pass")
    ap.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="learning rate of both (0 = per backbone: 1e-4 MiniLM, TRL's default; 3e-3 tiny)",
    )
    ap.add_argument("--max-epochs", type=int, default=3, help="ours: give up after this many epochs")
    ap.add_argument("--trl-gradient-checkpointing", type=int, default=1, help="TRL's default is on (1)")
    ap.add_argument("--work", default="", help="folder for the data files (default: a temporary one)")
    # worker-only options
    ap.add_argument("--worker", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--heldout", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        out = trl_worker(args) if args.worker == "trl" else ours_worker(args)
        Path(args.result).write_text(json.dumps(out))
        return

    from alignloop.models.registry import resolve
    from alignloop.models.reward import backbone_kind

    t_start = time.time()
    trl_python = ensure_trl_venv()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-rm-"))
    work.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    data = {k: write_data(work, k, args.prompts, args.held_out) for k in ks}
    default_lr = {"minilm-l6": 1e-4, "tiny": 3e-3}  # a randomly initialised model needs a larger step
    rows = []
    for name in args.backbones.split(","):
        path, kind = resolve(name), backbone_kind(name)
        for k in ks:
            train, held = data[k]
            common = ["--model", path, "--kind", kind, "--train", str(train), "--heldout", str(held)]
            lr = args.lr or default_lr.get(name, 1e-4)
            common += ["--threads", str(args.threads), "--lr", str(lr)]
            print(f"[{name} K={k}] TRL RewardTrainer ...", flush=True)
            trl = run_worker(
                trl_python, "trl", common + ["--trl-gradient-checkpointing", str(args.trl_gradient_checkpointing)]
            )
            print(f"[{name} K={k}] ours (target accuracy {trl['heldout_accuracy']:.3f}) ...", flush=True)
            ours = run_worker(
                Path(sys.executable),
                "ours",
                common
                + ["--target", str(trl["heldout_accuracy"])]
                + ["--prompts-per-step", str(args.prompts_per_step), "--micro-batch", str(args.micro_batch)]
                + ["--max-epochs", str(args.max_epochs)],
            )
            rows.append((name, k, trl, ours))
    print_table(rows, args, time.time() - t_start)


def print_table(rows: list, args: argparse.Namespace, wall: float) -> None:
    """One table, TRL and ours side by side. Each time is given as wall seconds / CPU seconds: on a
    shared machine the wall clock also counts other people's work, the CPU clock only ours."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="reward model training: TRL RewardTrainer (pairs as rows) vs alignloop (K completions per element)"
    )
    cols = ("backbone", "K", "trainer", "pairs/s wall | cpu", "speed-up wall | cpu", "peak RSS MiB", "held-out acc")
    for col in (*cols, "time to TRL acc, s wall | cpu", "share of TRL time wall | cpu"):
        table.add_column(col, justify="right")
    for name, k, trl, ours in rows:
        table.add_row(
            name,
            str(k),
            "TRL 1.16",
            f"{trl['pairs_per_s']:.1f} | {trl['pairs_per_cpu_s']:.1f}",
            "1.0x | 1.0x",
            f"{trl['peak_rss_mib']:.0f}",
            f"{trl['heldout_accuracy']:.3f}",
            f"{trl['time_to_target']:.1f} | {trl['cpu_to_target']:.1f}",
            "1 epoch",
        )
        t, c = ours["time_to_target"], ours["cpu_to_target"]
        if t is None:
            reached, share = f"not reached in {ours['epochs']:.2f} ep", "-"
        else:
            reached = f"{t:.1f} | {c:.1f}"
            share = f"{t / trl['time_to_target']:.2f} | {c / trl['cpu_to_target']:.2f} ({ours['epochs']:.2f} ep)"
        table.add_row(
            "",
            "",
            "alignloop",
            f"{ours['pairs_per_s']:.1f} | {ours['pairs_per_cpu_s']:.1f}",
            f"{ours['pairs_per_s'] / trl['pairs_per_s']:.1f}x | "
            f"{ours['pairs_per_cpu_s'] / trl['pairs_per_cpu_s']:.1f}x",
            f"{ours['peak_rss_mib']:.0f}",
            f"{ours['heldout_accuracy']:.3f}",
            reached,
            share,
            end_section=True,
        )
    Console(width=180).print(table)
    print(
        f"{args.prompts} training / {args.held_out} held-out prompts; same lr for both; TRL: batch 16 pairs, 1 epoch, "
        f"gradient checkpointing {'on' if args.trl_gradient_checkpointing else 'off'}; ours: "
        f"{args.prompts_per_step} prompts/step, {args.micro_batch} completions per forward; fp32; "
        f"torch threads {args.threads or 'default'}; load average at the end {os.getloadavg()[0]:.1f}; "
        f"bench wall time {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
