"""Rankings as reward-model batch elements (SPEC section 5): one prompt with its K ranked completions.

Every completion is tokenised once, up front; a step's prompts are grouped into chunks of whole
prompts (a prompt is never split: its K scores meet in one K-way loss) and each chunk is one
forward pass. ``shuffled_pairs`` (:func:`expand_pairs`) is the alternative the paper warns
against: every untied pair its own two-completion element.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignloop.data.records import Ranking
from alignloop.models.reward import Encoded, RewardModel, collate, encode


@dataclass
class EncodedRanking:
    """One batch element: the K tokenised completions of a prompt and their ranks (0 = best)."""

    items: list[Encoded]
    ranks: list[int]

    @property
    def has_pairs(self) -> bool:
        return len(set(self.ranks)) > 1


def encode_rankings(model: RewardModel, tokenizer: Any, rankings: Sequence[Ranking]) -> list[EncodedRanking]:
    """Tokenise every completion once, up front (one batched tokenizer call)."""
    prompts = [r.prompt for r in rankings for _ in r.completions]
    completions = [c for r in rankings for c in r.completions]
    flat = encode(tokenizer, model.info, prompts, completions)
    out, i = [], 0
    for r in rankings:
        out.append(EncodedRanking(flat[i : i + r.k], r.ranks()))
        i += r.k
    return out


def expand_pairs(data: Sequence[EncodedRanking]) -> list[EncodedRanking]:
    """``shuffled_pairs`` elements: one per untied ordered pair (winner first, rank 0; loser rank 1)."""
    out = []
    for r in data:
        for w, lo in itertools.combinations(range(len(r.items)), 2):
            if r.ranks[w] == r.ranks[lo]:
                continue
            if r.ranks[lo] < r.ranks[w]:
                w, lo = lo, w
            out.append(EncodedRanking([r.items[w], r.items[lo]], [0, 1]))
    return out


def chunk_prompts(batch: Sequence[EncodedRanking], max_completions: int) -> list[list[EncodedRanking]]:
    """Consecutive groups of whole prompts with at most ``max_completions`` completions each
    (a prompt with more completions than that forms a chunk of its own)."""
    chunks: list[list[EncodedRanking]] = []
    current: list[EncodedRanking] = []
    size = 0
    for r in batch:
        if current and size + len(r.items) > max_completions:
            chunks.append(current)
            current, size = [], 0
        current.append(r)
        size += len(r.items)
    if current:
        chunks.append(current)
    return chunks


def score_chunk(
    model: torch.nn.Module, chunk: Sequence[EncodedRanking], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over the chunk's completions -> (scores, ranks, k_mask), each [B, Kmax]."""
    flat = [it for r in chunk for it in r.items]
    raw = model(**collate(flat, pad, device))
    kmax = max(len(r.items) for r in chunk)
    k_mask = torch.tensor([[1] * len(r.items) + [0] * (kmax - len(r.items)) for r in chunk], device=device)
    ranks = torch.tensor([r.ranks + [0] * (kmax - len(r.ranks)) for r in chunk], device=device)
    scores = torch.zeros(k_mask.shape, dtype=raw.dtype, device=device).masked_scatter(k_mask.bool(), raw)
    return scores, ranks, k_mask


def split_by_prompt(rankings: Sequence[Ranking], fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held-out) with no prompt in both; ``fraction`` of the distinct prompts are held out
    (at least one when the fraction is positive and there are two prompts or more)."""
    ids = sorted({r.prompt_id for r in rankings})
    if fraction <= 0 or len(ids) < 2:
        return list(rankings), []
    random.Random(seed).shuffle(ids)
    n_held = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held = set(ids[:n_held])
    return [r for r in rankings if r.prompt_id not in held], [r for r in rankings if r.prompt_id in held]
