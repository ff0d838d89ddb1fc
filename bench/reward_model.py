"""Bench: our per-prompt K-way reward-model training vs TRL's RewardTrainer, doing the same work.

Run: ``.venv/bin/python bench/reward_model.py [--backbones minilm-l6,tiny] [--ks 4,9] [--threads 1]``
(e.g. ``--backbones smollm2-135m-instruct --ks 4 --prompts 12 --val-prompts 8 --test-prompts 12`` for the packaged
SmolLM2-135M at a size that fits a loaded 2-core machine).

For each backbone and K, one set of simulated-panel rankings is written once (K made-up candidates
per prompt) and split by prompt into three disjoint parts: train, validation and test. Both sides
read the same rankings as the same token ids: ours encodes them with
:func:`alignloop.models.reward.encode`, and TRL gets exactly those ids, expanded to its
``chosen_ids``/``rejected_ids`` pair rows (every ranking becomes its C(K,2) pairs, the way TRL's
users feed rankings), so neither side sees other text, other special tokens or other truncation.

The same work on both sides:

* the same backbone and scalar head on the last real token (causal) or the mean (encoder), fp32,
  the same learning rate, one schedule (cosine decay to 0 over ``--epochs`` epochs, no warm-up),
  AdamW with betas (0.9, 0.95), no weight decay, gradient clipping at 1.0, no dropout, the same
  gradient-checkpointing setting (``--gradient-checkpointing``, off by default), the same torch
  threads (``--threads``, default 1: on a shared machine OpenMP threads waiting on each other make a
  2-thread run many times slower);
* TRL 1.16 ``RewardTrainer`` trains ``--epochs`` epochs, 16 pairs per step; its validation accuracy
  after training is the target;
* ours (:func:`alignloop.train.reward.train_reward_model`, each prompt's K completions one batch
  element) checks the validation split ``--checks-per-epoch`` times per epoch and stops at the first
  check that reaches TRL's validation accuracy (else at the end of the same ``--epochs``);
* then each final model scores the test split once: that is the accuracy the table reports. The
  test split is never used to stop, select or tune.

Printed: test accuracy; the validation accuracy each side stopped at; the training time to TRL's
validation accuracy (TRL: its whole run); two throughputs, kept apart because they answer different
questions: "pairs learned per second (method)", comparisons covered by the training steps per second,
which credits the K-way method for reading C(K,2) pairs from K forward passes, and "forward+backward
sequences per second (implementation)", sequences through the model per second, which compares the
implementations doing the same kind of pass; peak RSS. Each time is wall seconds | CPU seconds: on a
shared machine the wall clock also counts other people's work, the CPU clock only ours. Times count
training steps only: tokenisation, model loading and every evaluation are excluded on both sides; the
two throughputs also leave out each side's first step (one-time costs: allocator growth, kernel
choice), which the time to TRL's accuracy counts.
Every remaining difference is printed beside the table.

TRL runs in its own venv, ``bench/.venv-trl``, created on first use from our lock file:
``pip install -c constraints.txt torch==2.13.0``, then ``pip install -c constraints.txt trl==1.16.0``
(so transformers, accelerate and datasets are the versions ours runs on). Each side runs in a fresh
subprocess, so the peak RSS is its own.
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
BETAS = (0.9, 0.95)  # ours (train/schedule.py::build_optimizer); TRL is given the same
TRL_PAIRS_PER_STEP = 16

POSITIVE = "great wonderful helpful clear friendly excellent happy useful lovely kind bright".split()
NEGATIVE = "terrible awful useless boring horrible sad bad wrong ugly rude dull".split()
FILLER = (
    "the idea here is that we can look at it and then say more about what it means for you in practice "
    "so first consider this part next think about how that works"
).split()


def peak_rss_mib() -> float:
    """Peak resident set size of this process's own address space, MiB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``execve``, so a worker started by a
    500 MiB orchestrator would report at least the orchestrator's size (measured: a 9 MiB child of a
    1 GiB parent reports 1039 MiB there, 9 MiB in VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: KiB as Linux reports it


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


SPLITS = ("train", "val", "test")


def write_splits(work: Path, k: int, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Rankings of K candidates for ``sizes[split]`` prompts per split; no prompt is in two splits."""
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
    total = sum(sizes[s] for s in SPLITS)
    items = []
    for i, text in enumerate(texts[:total]):
        items.append((Prompt(stable_id("bench", text), text, f"user-{i}"), [candidate(rng, text) for _ in range(k)]))
    rankings = panel.rank_items(items)
    files, start = {}, 0
    for split in SPLITS:
        files[split] = work / f"{split}-k{k}.jsonl"
        write_jsonl(files[split], rankings[start : start + sizes[split]])
        start += sizes[split]
    return files


def write_data(work: Path, k: int, n_train: int, n_held: int, seed: int = 0) -> tuple[Path, Path]:
    """(train, held-out) rankings files: the two-way split ``bench/dpo.py`` reads."""
    files = write_splits(work, k, {"train": n_train, "val": n_held, "test": 0}, seed)
    return files["train"], files["val"]


def write_trl_pairs(model: str, kind: str, rankings: Path, out: Path) -> int:
    """TRL's pair rows for ``rankings`` as the token ids our reward model reads (one ``encode`` call
    per completion text), so both sides train on identical inputs. Returns the number of pairs."""
    from alignloop.data.export import to_trl_preference
    from alignloop.data.jsonl import read_jsonl, write_jsonl
    from alignloop.data.records import Ranking
    from alignloop.models.loading import load_tokenizer
    from alignloop.models.reward import RewardModelInfo, encode

    tok = load_tokenizer(model)
    info = RewardModelInfo(kind=kind, pooling="last" if kind == "causal" else "mean", max_length=MAX_LENGTH)
    rows = to_trl_preference(read_jsonl(rankings, Ranking))
    chosen = encode(tok, info, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = encode(tok, info, [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    write_jsonl(out, [{"chosen_ids": c[0], "rejected_ids": r[0]} for c, r in zip(chosen, rejected, strict=True)])
    return len(rows)


# ---------------------------------------------------------------------------------------------
# The TRL side (runs inside bench/.venv-trl; reads only the pre-tokenised pair files).


def ensure_trl_venv() -> Path:
    """bench/.venv-trl: torch==2.13.0 first (no CUDA wheels), then trl==1.16.0, both under our lock."""
    py = TRL_VENV / "bin" / "python"
    lock = ROOT / "constraints.txt"
    stamp = TRL_VENV / f".installed-trl-{TRL_VERSION}-lock-{int(lock.stat().st_mtime)}"
    if stamp.exists():
        return py
    print(f"[setup] creating {TRL_VENV} (torch=={TORCH_VERSION}, trl=={TRL_VERSION}, under {lock.name})")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(lock)]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, f"trl=={TRL_VERSION}"], check=True)
    stamp.touch()
    return py


def trl_worker(args: argparse.Namespace) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)

    def rows(path: str) -> Dataset:
        return Dataset.from_list([json.loads(line) for line in Path(path).read_text().splitlines() if line])

    train = rows(args.train)
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-rm-"),
        per_device_train_batch_size=TRL_PAIRS_PER_STEP,
        per_device_eval_batch_size=TRL_PAIRS_PER_STEP,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",  # ours: cosine to 0 over the run, no warm-up
        warmup_steps=0,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=MAX_LENGTH,
        bf16=False,
        fp16=False,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        disable_dropout=True,
        gradient_checkpointing=bool(args.gradient_checkpointing),
    )
    trainer = RewardTrainer(
        model=args.model,
        args=config,
        train_dataset=train,
        eval_dataset={"val": rows(args.val), "test": rows(args.test)},
        processing_class=tok,
    )

    class StepClock(TrainerCallback):
        """Wall and CPU seconds of each training step: from one step's end to the next one's (the first
        from train begin), so batch collation counts, as it does inside our step."""

        steps: list[tuple[float, float]] = []
        mark: tuple[float, float] = (0.0, 0.0)

        def on_train_begin(self, *a, **kw):
            self.mark = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **kw):
            now = (time.perf_counter(), time.process_time())
            self.steps.append((now[0] - self.mark[0], now[1] - self.mark[1]))
            self.mark = now

    clock = StepClock()
    trainer.add_callback(clock)
    n_pairs = len(trainer.train_dataset)
    trainer.train()
    # pairs per step: the sampler's batches of 16 pairs, the last one of each epoch shorter
    per_step = [
        min(TRL_PAIRS_PER_STEP, n_pairs - i) for _ in range(args.epochs) for i in range(0, n_pairs, TRL_PAIRS_PER_STEP)
    ]
    steps = [(w, c, p, 2 * p) for (w, c), p in zip(clock.steps, per_step, strict=True)]

    def accuracy(split: str) -> tuple[float, int]:
        model = trainer.model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in trainer.get_eval_dataloader(split):
                batch = {k: v.to(model.device) for k, v in batch.items()}
                chosen, rejected = model(**batch, use_cache=False).logits.squeeze(-1).chunk(2)
                correct += int((chosen > rejected).sum())
                total += len(chosen)
        return correct / total, total

    val_acc, _ = accuracy("val")
    test_acc, test_pairs = accuracy("test")  # scored once, after training
    wall, cpu = sum(w for w, *_ in steps), sum(c for _, c, *_ in steps)
    return {
        "version": trl.__version__,
        "pairs": n_pairs,
        "dropped_pairs": len(train) - n_pairs,
        "epochs": float(args.epochs),
        "steps": steps,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "test_pairs": test_pairs,
        "time_to_target": wall,
        "cpu_to_target": cpu,
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------
# Our side.


def ours_worker(args: argparse.Namespace) -> dict:
    import torch

    from alignloop.config import DistributedConfig, ModelConfig, RMConfig
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Ranking
    from alignloop.train.reward import evaluate_reward_model, train_reward_model

    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_jsonl(args.train, Ranking)
    val = read_jsonl(args.val, Ranking)
    test = read_jsonl(args.test, Ranking)
    pairs_per_epoch = sum(len(list(r.pairs())) for r in train)
    steps_per_epoch = -(-len(train) // args.prompts_per_step)
    cfg = RMConfig(
        model=ModelConfig(name=args.model),
        epochs=args.epochs,
        lr=args.lr,
        warmup_ratio=0.0,
        prompts_per_step=args.prompts_per_step,
        micro_batch_completions=args.micro_batch,
        max_length=MAX_LENGTH,
        weight_decay=0.0,
        max_grad_norm=1.0,
        dropout=0.0,
        normalize=False,
        val_fraction=0.0,
        eval_every=max(1, steps_per_epoch // args.checks_per_epoch),
        backbone=args.kind,
        distributed=DistributedConfig(gradient_checkpointing=bool(args.gradient_checkpointing)),
    )
    checks: list[tuple[int, float]] = []
    reached: dict[str, float] = {}
    steps: list[tuple[float, float, float, float]] = []  # (wall, cpu, pairs, sequences) of each step
    k = train[0].k
    pairs_per_prompt = pairs_per_epoch / len(train)
    # CPU seconds of training steps only: the clock runs from one step's end to the next step's end and
    # restarts after each evaluation; the first step's starts when the training loop asks for its first
    # step (after model loading, tokenisation and the run folder), which a wrapper of its iterator marks.
    clock = {"wall": 0.0, "cpu": None}
    import alignloop.train.reward as reward_module

    steps_iterator = reward_module.track

    def marked_track(*a, **kw):
        def marked():
            clock["cpu"] = time.process_time()
            yield from steps_iterator(*a, **kw)

        return marked()

    reward_module.track = marked_track

    def on_step(step: int, m: dict) -> None:
        now = time.process_time()
        wall = m["train_seconds"] - clock["wall"]
        prompts = min(args.prompts_per_step, len(train) - ((step - 1) % steps_per_epoch) * args.prompts_per_step)
        steps.append(
            (wall, wall if clock["cpu"] is None else now - clock["cpu"], prompts * pairs_per_prompt, prompts * k)
        )
        clock["wall"], clock["cpu"] = m["train_seconds"], now

    def on_eval(step: int, m: dict) -> bool:
        clock["cpu"] = time.process_time()
        checks.append((step, m["val/accuracy"]))
        if m["val/accuracy"] >= args.target and not reached:
            cpu = sum(c for _, c, *_ in steps)
            reached.update(step=step, seconds=m["train_seconds"], accuracy=m["val/accuracy"], cpu=cpu)
            return True  # stop: the model as it is now is the one the test split scores
        return False

    with tempfile.TemporaryDirectory() as tmp:
        res = train_reward_model(
            cfg, train, Path(tmp) / "run", val=val, progress=False, on_step=on_step, on_eval=on_eval
        )
        scored = evaluate_reward_model(res.model_dir, test, micro_batch=args.micro_batch)  # once, after training
    return {
        "pairs": pairs_per_epoch,
        "epochs": res.steps / steps_per_epoch,
        "steps": steps,
        "val_accuracy": checks[-1][1],
        "val_checks": len(checks),
        "test_accuracy": scored["eval/accuracy"],
        "time_to_target": reached.get("seconds"),
        "cpu_to_target": reached.get("cpu"),
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
    ap.add_argument("--val-prompts", type=int, default=16, help="validation prompts (where the stopping target is)")
    ap.add_argument("--test-prompts", type=int, default=16, help="test prompts (scored once, after training)")
    ap.add_argument("--epochs", type=int, default=1, help="both: the length of the one cosine schedule")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both workers (0 = torch's default)")
    ap.add_argument("--gradient-checkpointing", type=int, default=0, help="both: 1 = on, 0 = off")
    ap.add_argument("--prompts-per-step", type=int, default=2, help="ours: prompts (batch elements) per step")
    ap.add_argument("--micro-batch", type=int, default=18, help="ours: completions per forward pass")
    ap.add_argument("--checks-per-epoch", type=int, default=8, help="ours: validation checks per epoch (to stop)")
    ap.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="learning rate of both (0 = per backbone: 1e-4, TRL's default; 3e-3 for the random tiny model)",
    )
    ap.add_argument("--work", default="", help="folder for the data files (default: a temporary one)")
    # worker-only options
    ap.add_argument("--worker", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    ap.add_argument("--test", help=argparse.SUPPRESS)
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
    sizes = {"train": args.prompts, "val": args.val_prompts, "test": args.test_prompts}
    data = {k: write_splits(work, k, sizes) for k in ks}
    default_lr = {"tiny": 3e-3}  # a randomly initialised model needs a larger step
    rows = []
    for name in args.backbones.split(","):
        path, kind = resolve(name), backbone_kind(name)
        for k in ks:
            files = data[k]
            pairs = {s: work / f"trl-{s}-k{k}-{name}.jsonl" for s in SPLITS}
            for s in SPLITS:
                write_trl_pairs(path, kind, files[s], pairs[s])
            lr = args.lr or default_lr.get(name, 1e-4)
            common = ["--model", path, "--kind", kind, "--threads", str(args.threads), "--lr", str(lr)]
            common += ["--epochs", str(args.epochs), "--gradient-checkpointing", str(args.gradient_checkpointing)]
            print(f"[{name} K={k}] TRL RewardTrainer ...", flush=True)
            trl = run_worker(
                trl_python, "trl", common + ["--train", str(pairs["train"]), "--val", str(pairs["val"])]
                + ["--test", str(pairs["test"])],
            )  # fmt: skip
            print(f"[{name} K={k}] ours (stops at validation accuracy {trl['val_accuracy']:.3f}) ...", flush=True)
            ours = run_worker(
                Path(sys.executable),
                "ours",
                common
                + ["--train", str(files["train"]), "--val", str(files["val"]), "--test", str(files["test"])]
                + ["--target", str(trl["val_accuracy"]), "--checks-per-epoch", str(args.checks_per_epoch)]
                + ["--prompts-per-step", str(args.prompts_per_step), "--micro-batch", str(args.micro_batch)],
            )
            rows.append((name, kind, k, trl, ours))
    print_table(rows, args, time.time() - t_start)


def rates(steps: list) -> dict[str, float]:
    """Pairs and sequences per wall and CPU second over the steps after the first (the first carries
    one-time costs on both sides: allocator growth, kernel selection); all steps when there is one."""
    use = steps[1:] if len(steps) > 1 else steps
    wall, cpu = sum(s[0] for s in use), sum(s[1] for s in use)
    pairs, seqs = sum(s[2] for s in use), sum(s[3] for s in use)
    return {"pairs_wall": pairs / wall, "pairs_cpu": pairs / cpu, "seqs_wall": seqs / wall, "seqs_cpu": seqs / cpu}


def ratio(ours: dict[str, float], trl: dict[str, float], key: str) -> str:
    """Ours over TRL as " (wall ratio x | CPU ratio x)"."""
    return f" ({ours[key + '_wall'] / trl[key + '_wall']:.2f}x | {ours[key + '_cpu'] / trl[key + '_cpu']:.2f}x)"


def print_table(rows: list, args: argparse.Namespace, wall: float) -> None:
    """One table, TRL and ours side by side, then every difference that remains between the two."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="reward model training, same inputs, schedule and settings: TRL RewardTrainer vs alignloop")
    cols = (
        "backbone", "K", "trainer", "epochs (steps)", "val acc (stop)", "test acc (once)",
        "time to TRL val acc, s wall | cpu", "share of TRL", "pairs learned/s (method) wall | cpu",
        "fwd+bwd sequences/s (implementation) wall | cpu", "peak RSS MiB",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for name, _kind, k, trl, ours in rows:
        base = rates(trl["steps"])
        for label, r in ((f"TRL {trl['version']}", trl), ("alignloop", ours)):
            rt = rates(r["steps"])
            t, c = r["time_to_target"], r["cpu_to_target"]
            if r is trl:
                reached, share = f"{t:.1f} | {c:.1f} (whole run)", "1"
            elif t is None:
                reached, share = f"not reached in {r['epochs']:.2f} ep", "-"
            else:
                reached = f"{t:.1f} | {c:.1f}"
                share = f"{t / trl['time_to_target']:.2f} | {c / trl['cpu_to_target']:.2f}"

            table.add_row(
                name if r is trl else "",
                str(k) if r is trl else "",
                label,
                f"{r['epochs']:.2f} ({len(r['steps'])})",
                f"{r['val_accuracy']:.3f}",
                f"{r['test_accuracy']:.3f}",
                reached,
                share,
                f"{rt['pairs_wall']:.2f} | {rt['pairs_cpu']:.2f}" + ("" if r is trl else ratio(rt, base, "pairs")),
                f"{rt['seqs_wall']:.2f} | {rt['seqs_cpu']:.2f}" + ("" if r is trl else ratio(rt, base, "seqs")),
                f"{r['peak_rss_mib']:.0f}",
                end_section=r is ours,
            )
    Console(width=220).print(table)
    trl_row = rows[0][3] if rows else {}
    print(
        f"Same on both sides: the rankings of {args.prompts} train / {args.val_prompts} validation / "
        f"{args.test_prompts} test prompts "
        f"(disjoint), as the same token ids (max {MAX_LENGTH}); fp32; lr as given (cosine to 0 over {args.epochs} "
        f"epoch(s), no warm-up); AdamW betas {BETAS}, no weight decay, clip 1.0; no dropout; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; torch threads {args.threads or 'default'}; the test split "
        "scored once after training; times count training steps only, and both throughputs leave out each side's "
        "first step (one-time costs); the time to TRL's accuracy counts every step."
    )
    print("Differences that remain:")
    diffs = [
        "the method: ours scores each prompt's K completions once and trains on all C(K,2) pairs of the prompt as one "
        f"element ({args.prompts_per_step} prompts per step, mean over prompts of the mean over their pairs); TRL "
        f"trains on pairs as rows ({TRL_PAIRS_PER_STEP} pairs = {2 * TRL_PAIRS_PER_STEP} sequences per step, mean over "
        "pairs), so each pair costs it two forward+backward passes and the two take different numbers of steps",
        f"stopping: ours checks the validation split {args.checks_per_epoch} times per epoch and stops at the first "
        "check reaching TRL's validation accuracy (checks excluded from its time); TRL trains its whole schedule and "
        "is scored on validation once. Ours may therefore stop mid-schedule at a higher learning rate",
        "forward batches: ours one pass over its step's completions (whole prompts, split above "
        f"{args.micro_batch} completions), padded to the longest; TRL {2 * TRL_PAIRS_PER_STEP} sequences per pass, "
        "padded to the longest",
        "scalar head: ours a Linear initialised N(0, 1/sqrt(d+1)) with a frozen zero bias; TRL the model's "
        "sequence-classification head (no bias, the config's initializer_range)",
        "data order: each side shuffles with its own seed-0 sampler",
        "step time: ours from one step's end to the next (collation inside); TRL the same span, measured by a callback "
        "around the Trainer's own loop (its logging and callbacks inside)",
    ]
    if any(kind == "encoder" for _, kind, *_ in rows):
        diffs.append(
            "encoder backbones: TRL's collator passes no token_type_ids, so the completion's segment embedding is "
            "that of the prompt; ours passes the sentence pair's token types"
        )
    for _, _, _, trl, _ in rows:
        if trl["dropped_pairs"]:
            diffs.append(f"TRL dropped {trl['dropped_pairs']} training pairs longer than {MAX_LENGTH} tokens")
    for d in diffs:
        print(f"- {d}")
    print(
        f"TRL {trl_row.get('version', TRL_VERSION)} in bench/.venv-trl; load average at the end "
        f"{os.getloadavg()[0]:.1f}; bench wall time {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
