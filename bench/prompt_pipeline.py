"""Bench: the prompt pipeline (dedupe, per-user cap, user splits, disjoint datasets) on 1,000,000 prompts.

Run: ``.venv/bin/python bench/prompt_pipeline.py [--n 1000000] [--no-write] [--no-tracemalloc]``

Synthetic data shaped like a deployed model's traffic: most users submit a handful of prompts,
a few hundred heavy users submit hundreds each (so the per-user cap bites), and one prompt in
ten is a resubmission of an earlier one with changed case/whitespace or an added tail (so
dedupe bites). Prints the time of each pipeline phase, the time to write the JSONL files, the
process's peak RSS, and (in a second, traced run) the peak memory prepare itself allocates.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
import tracemalloc

from rich.console import Console
from rich.table import Table

from alignloop.config import DataConfig
from alignloop.data.pipeline import prepare, write_prepared
from alignloop.data.records import Prompt

WORDS = (
    "write explain list summarize describe compare translate classify poem story email recipe garden ocean river "
    "mountain city robot teacher student doctor music history science planet rocket coffee bread winter summer "
    "friendly short formal funny simple careful quick brave quiet bright ancient modern tiny huge green blue"
).split()


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """``n`` prompts: ~90% from 100k light users, ~10% from 300 heavy users, 10% near-duplicates."""
    rng = random.Random(seed)
    light, heavy = max(1, n // 10), 300
    prompts: list[Prompt] = []
    for i in range(n):
        user = f"heavy-{rng.randrange(heavy)}" if rng.random() < 0.1 else f"user-{rng.randrange(light)}"
        if i > 0 and rng.random() < 0.1:
            src = prompts[rng.randrange(i)].text
            kind = rng.randrange(3)
            text = src.upper() if kind == 0 else "  ".join(src.split()) if kind == 1 else src + " Keep it short."
        else:
            text = " ".join(rng.choices(WORDS, k=14)) + f" ({i})"
        prompts.append(Prompt(id=f"p{i:08d}", text=text, user_id=user, category="generation", source="bench"))
    return prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--no-write", action="store_true", help="skip writing the JSONL files")
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip the traced second run")
    args = ap.parse_args()
    console = Console()

    t = time.perf_counter()
    prompts = synthetic_prompts(args.n)
    gen_s = time.perf_counter() - t
    rss_before = rss_mb()

    prepared = prepare(prompts, DataConfig())
    rep = prepared.report  # timings of the untraced run
    rss_after = rss_mb()
    write_s = None
    if not args.no_write:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            write_prepared(prepared, tmp)
            write_s = time.perf_counter() - t

    traced_peak = None
    if not args.no_tracemalloc:
        del prepared
        tracemalloc.start()  # slows allocation, so this run is for memory only
        prepare(prompts, DataConfig())
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    table = Table(title=f"prompt pipeline on {args.n:,} prompts")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_row("(generate synthetic prompts)", f"{gen_s:.2f}")
    for phase, secs in rep.timings.items():
        if phase != "total":
            table.add_row(phase, f"{secs:.2f}")
    table.add_row("[bold]prepare total[/bold]", f"[bold]{rep.timings['total']:.2f}[/bold]")
    if write_s is not None:
        table.add_row("write_prepared (9 JSONL + dropped + summary)", f"{write_s:.2f}")
    console.print(table)

    mem = Table(title="memory")
    mem.add_column("measure")
    mem.add_column("MB", justify="right")
    mem.add_row("peak RSS after generating the prompts", f"{rss_before:.0f}")
    mem.add_row("peak RSS after prepare", f"{rss_after:.0f}")
    if traced_peak is not None:
        mem.add_row("peak allocated inside prepare (tracemalloc)", f"{traced_peak:.0f}")
    console.print(mem)

    console.print(
        f"kept {rep.n_kept:,} of {rep.n_input:,}; dropped "
        + ", ".join(f"{k} {v:,}" for k, v in rep.dropped.items())
        + f"; {rep.users_over_cap} users over the cap; users per split {rep.users_per_split}"
    )


if __name__ == "__main__":
    main()
