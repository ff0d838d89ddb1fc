"""How fast the gold judge scores PPO-sized batches: GoldJudge.score_batch on 256 (prompt, completion) pairs.

Run: .venv/bin/python bench/gold_judge.py [--pairs 256] [--repeats 5]
Prints the first call (loads VADER and the toxicity model) and later calls on fresh, uncached pairs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from alignloop.labelers import GoldJudge

TOPICS = ["the ocean", "tomatoes", "guitar practice", "saving money", "puppies", "sourdough", "marathons", "Japan"]
PHRASES = [
    "is a wonderful thing to learn about",
    "can be hard at first but it gets easier",
    "makes many people happy and calm",
    "needs patience, practice and a good plan",
    "is boring and I do not care about it",
    "was terrible and stupid the last time I tried",
    "brings joy to friends and family every day",
    "has a long and interesting history",
]


def make_pairs(n: int, salt: int) -> tuple[list[str], list[str]]:
    rng = random.Random(salt)
    prompts, completions = [], []
    for i in range(n):
        topic = rng.choice(TOPICS)
        prompts.append(f"Write a few sentences about {topic} for a curious reader (#{salt}-{i}).")
        body = " ".join(f"{rng.choice(TOPICS).capitalize()} {rng.choice(PHRASES)}." for _ in range(rng.randint(1, 5)))
        completions.append(f"{body} Note {salt}-{i}.")
    return prompts, completions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    judge = GoldJudge()
    p, c = make_pairs(args.pairs, 0)
    t0 = time.perf_counter()
    judge.score_batch(p, c)
    first = time.perf_counter() - t0
    times = []
    for r in range(1, args.repeats + 1):
        p, c = make_pairs(args.pairs, r)  # fresh pairs: nothing comes from the cache
        t0 = time.perf_counter()
        judge.score_batch(p, c)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    judge.score_batch(p, c)
    cached = time.perf_counter() - t0
    words = sum(len(x.split()) for x in c) / len(c)
    print(f"GoldJudge.score_batch on {args.pairs} pairs (mean {words:.0f} words per completion)")
    print(f"  first call (loads VADER + toxicity model): {first * 1000:.0f} ms")
    print(
        f"  uncached, median of {args.repeats}: {statistics.median(times) * 1000:.1f} ms "
        f"({statistics.median(times) / args.pairs * 1e6:.0f} us per pair)"
    )
    print(f"  cached repeat: {cached * 1000:.2f} ms")


if __name__ == "__main__":
    main()
