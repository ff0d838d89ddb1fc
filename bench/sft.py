"""A short SFT run on a packaged policy with simulated demonstrations: wall time and losses.

    .venv/bin/python bench/sft.py [--model smollm2-135m-instruct] [--train 64] [--val 16] [--epochs 1]
                                  [--batch-size 8] [--judge] [--out /tmp/alignloop-bench-sft]

Demonstrations are the simulated panel's written answers to built-in prompts (about 30
positive, on-topic words each). Prints the wall time per epoch, validation loss before and
after, and with --judge the gold judge's mean score of validation samples before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLOOP_NO_PROGRESS", "1")

import torch  # noqa: E402

from alignloop.config import GenerationConfig, ModelConfig, SFTConfig  # noqa: E402
from alignloop.data.builtin import builtin_prompts  # noqa: E402
from alignloop.labelers import SimulatedPanel  # noqa: E402
from alignloop.train.runlog import read_metrics  # noqa: E402
from alignloop.train.sft import train_sft  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--lora-r", type=int, default=0)
    ap.add_argument("--judge", action="store_true", help="score validation samples with the gold judge")
    ap.add_argument("--out", default="/tmp/alignloop-bench-sft")
    args = ap.parse_args()

    panel = SimulatedPanel()
    seen, prompts = set(), []
    for p in builtin_prompts():
        if p.text.lower() not in seen:
            seen.add(p.text.lower())
            prompts.append(p)
    demos = [panel.write_demonstration(p) for p in prompts[: args.train + args.val]]
    train, val = demos[: args.train], demos[args.train :]
    cfg = SFTConfig(
        model=ModelConfig(name=args.model), epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        warmup_ratio=0.1, lora_r=args.lora_r, generation=GenerationConfig(max_new_tokens=48, temperature=0.7),
    )  # fmt: skip
    scorer = None
    if args.judge:
        from alignloop.labelers import GoldJudge

        scorer = GoldJudge()
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train_sft(cfg, train, val, args.out, scorer=scorer)
    wall = time.perf_counter() - t0
    rows = read_metrics(args.out)
    evals = [r for r in rows if "val/loss" in r]
    epochs = [r["time/epoch_s"] for r in rows if "time/epoch_s" in r]
    print(f"model {args.model}, {len(train)} train / {len(val)} val demonstrations, batch {args.batch_size}, "
          f"lr {args.lr}, lora_r {args.lora_r}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"wall per epoch (training steps only): {', '.join(f'{t:.1f} s' for t in epochs)}; whole run {wall:.1f} s")
    print(f"val loss: {evals[0]['val/loss']:.3f} before -> {evals[-1]['val/loss']:.3f} after")
    if args.judge:
        print(f"gold score of val samples: {evals[0]['val/score']:.3f} before -> {evals[-1]['val/score']:.3f} after")
    print(f"kept model: {result.best_dir}")


if __name__ == "__main__":
    main()
