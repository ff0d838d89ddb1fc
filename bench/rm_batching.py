"""Bench: the paper's section 3.5 comparison of reward-model batching, per-prompt K-way vs shuffled pairs.

Run: ``python bench/rm_batching.py [--prompts 32] [--held-out 32] [--k 9] [--epochs 3] [--seeds 0,1,2]``
or ``python bench/rm_batching.py --write-rankings rankings.jsonl --prompts 400`` to only write the
default panel's rankings (e.g. for ``alignloop rm crossval --data rankings.jsonl``).

InstructGPT (section 3.5): with the C(K,2) comparisons of a prompt shuffled as separate examples,
each completion is seen K-1 times per epoch and the reward model overfits within an epoch;
batching all of a prompt's comparisons as ONE element is both faster (K forwards instead of
K(K-1)) and generalises better. Here both arms are alignloop's own trainer
(:func:`alignloop.train.reward.train_reward_model`), differing only in ``rm.batching``:

* ``per_prompt``: one element per prompt, K completions scored once, loss over its C(K,2) pairs;
* ``shuffled_pairs``: one element per pair, pairs of all prompts shuffled together; a step takes
  as many pairs as the per-prompt steps hold on average, so both arms make the same number of
  optimizer steps per epoch over the same comparisons.

Data: made-up candidates of varying gold utility (``bench/reward_model.py``'s generator), K per
prompt, ranked by the DEFAULT simulated panel (``PanelConfig()``: temperature 0.1, one careless
labeler in ten, one length lover, labeler groups with their own weights): the noisy panel.
The same training and held-out files serve every arm and seed; the seed changes the head's
initialisation and the data order. Printed per epoch and arm: held-out pairwise accuracy and
loss (mean +- std over seeds), training accuracy of the epoch, and training seconds (steps only,
evaluation excluded).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_model import MAX_LENGTH, candidate  # noqa: E402  (the same candidate generator as the RM bench)

ARMS = ("per_prompt", "shuffled_pairs")


def panel_rankings(n: int, k: int, seed: int = 0) -> list:
    """Rankings of ``n`` built-in prompts with ``k`` made-up candidates each, by the default panel."""
    from alignloop.config import PanelConfig
    from alignloop.data.builtin import base_prompts
    from alignloop.data.records import Prompt, stable_id
    from alignloop.labelers import SimulatedPanel

    rng = random.Random(seed)
    texts = [t for _, t in base_prompts() if len(t.split()) <= 20]
    rng.shuffle(texts)
    if n > len(texts):
        raise SystemExit(f"only {len(texts)} built-in prompts of at most 20 words; ask for fewer")
    items = [
        (Prompt(stable_id("bench", t), t, f"user-{i}"), [candidate(rng, t) for _ in range(k)])
        for i, t in enumerate(texts[:n])
    ]
    return SimulatedPanel(PanelConfig()).rank_items(items)


def run_arm(arm: str, seed: int, train: list, held: list, args: argparse.Namespace) -> list[dict[str, float]]:
    """Train one arm; per epoch: held-out accuracy/loss, the epoch's training accuracy, training seconds."""
    from alignloop.config import ModelConfig, RMConfig
    from alignloop.train.reward import train_reward_model

    cfg = RMConfig(
        model=ModelConfig(name=args.model),
        epochs=args.epochs,
        lr=args.lr,
        warmup_ratio=0.0,
        prompts_per_step=args.prompts_per_step,
        micro_batch_completions=args.micro_batch,
        max_length=MAX_LENGTH,
        normalize=False,
        val_fraction=0.0,
        seed=seed,
        batching=arm,
    )
    epochs: list[dict[str, float]] = []
    correct = pairs = 0.0

    def on_step(step: int, m: dict[str, float]) -> None:
        nonlocal correct, pairs
        correct += m["train/accuracy"] * m["train/pairs"]
        pairs += m["train/pairs"]

    def on_eval(step: int, m: dict[str, float]) -> bool:
        nonlocal correct, pairs
        epochs.append(
            {
                "val_accuracy": m["val/accuracy"],
                "val_loss": m["val/loss"],
                "train_accuracy": correct / max(pairs, 1),
                "train_seconds": m["train_seconds"],
            }
        )
        correct = pairs = 0.0
        return False

    with tempfile.TemporaryDirectory() as tmp:
        train_reward_model(cfg, train, Path(tmp) / "run", val=held, progress=False, on_step=on_step, on_eval=on_eval)
    return epochs


def _ms(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    m = statistics.fmean(xs) * scale
    s = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32, help="training prompts")
    ap.add_argument("--held-out", type=int, default=32, help="held-out prompts")
    ap.add_argument("--k", type=int, default=9, help="completions ranked per prompt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=18, help="completions per forward pass")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    ap.add_argument("--write-rankings", default="", help="only write --prompts rankings to this JSONL and stop")
    args = ap.parse_args()
    os.environ.setdefault("ALIGNLOOP_NO_PROGRESS", "1")

    if args.write_rankings:
        from alignloop.data.jsonl import write_jsonl

        n = write_jsonl(args.write_rankings, panel_rankings(args.prompts, args.k))
        print(f"wrote {n} rankings (K={args.k}, default simulated panel) to {args.write_rankings}")
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    rankings = panel_rankings(args.prompts + args.held_out, args.k)
    train, held = rankings[: args.prompts], rankings[args.prompts :]
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[list[dict[str, float]]]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            t0 = time.time()
            results[arm].append(run_arm(arm, seed, train, held, args))
            print(f"[seed {seed}] {arm}: {time.time() - t0:.0f} s", flush=True)
    print_table(results, args, len(seeds), time.time() - t_start)


def print_table(results: dict, args: argparse.Namespace, n_seeds: int, wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reward model batching, {args.model}, K={args.k}, mean +- std over {n_seeds} seeds")
    for col in ("batching", "epoch", "held-out acc %", "held-out loss", "train acc %", "train s (cumulative)"):
        table.add_column(col, justify="right")
    for arm in ARMS:
        runs = results[arm]
        for e in range(min(len(r) for r in runs)):
            table.add_row(
                arm if e == 0 else "",
                str(e + 1),
                _ms([r[e]["val_accuracy"] for r in runs], 100),
                _ms([r[e]["val_loss"] for r in runs], 1, 3),
                _ms([r[e]["train_accuracy"] for r in runs], 100),
                _ms([r[e]["train_seconds"] for r in runs], 1, 1),
                end_section=e == min(len(r) for r in runs) - 1,
            )
    Console(width=140).print(table)
    pairs_per_prompt = args.k * (args.k - 1) // 2
    print(
        f"{args.prompts} training / {args.held_out} held-out prompts, K={args.k}, default simulated panel; "
        f"same data, lr {args.lr}, epochs, steps per epoch and comparisons for both arms. Differences: "
        f"per_prompt scores {args.k} completions per prompt per epoch, shuffled_pairs {2 * pairs_per_prompt} "
        f"(each completion {args.k - 1} times); per_prompt weighs prompts equally, shuffled_pairs pairs "
        f"(the same here: every prompt has K={args.k}). Held-out loss is the per-prompt K-way loss for both. "
        f"fp32, torch threads {args.threads or 'default'}; load average at the end {os.getloadavg()[0]:.1f}; "
        f"bench wall time {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
