"""Rankings as reward-model batch elements (SPEC section 5): one prompt with its K ranked completions.

Every completion is tokenised once, up front; a step's prompts are grouped into chunks of whole
prompts (a prompt is never split: its K scores meet in one K-way loss) and each chunk is one
forward pass. Several labelers' rankings of the very same completions (``overlap`` > 1) can share one
element (``merge_overlap``): its completions are scored once and every labeler's comparisons count as
a ranking of their own, so the loss is that of separate elements at 1/overlap of the forwards.
``shuffled_pairs`` (:func:`expand_pairs`) is the alternative the paper warns
against: every untied pair its own two-completion element.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignloop.data.records import Ranking
from alignloop.models.reward import Encoded, RewardModel, collate, encode, relevance_of


@dataclass
class EncodedRanking:
    """One batch element: the K tokenised completions of a prompt and their ranks (0 = best);
    ``more_ranks``: other labelers' ranks of the same completions, each a ranking of its own in the loss."""

    items: list[Encoded]
    ranks: list[int]
    more_ranks: list[list[int]] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)  # added to each completion's score: weighted relevance

    @property
    def all_ranks(self) -> list[list[int]]:
        return [self.ranks, *self.more_ranks]

    @property
    def pair_rankings(self) -> int:
        """How many of its rankings order at least one pair (each weighs one prompt in a step's mean)."""
        return sum(len(set(r)) > 1 for r in self.all_ranks)


def encode_rankings(
    model: RewardModel, tokenizer: Any, rankings: Sequence[Ranking], merge_overlap: bool = False
) -> list[EncodedRanking]:
    """Tokenise every completion once, up front (one batched tokenizer call). ``merge_overlap``: rankings
    with the same prompt and the same completions in the same order become one element."""
    groups: dict[Any, list[Ranking]] = {}
    for i, r in enumerate(rankings):
        groups.setdefault((r.prompt, tuple(r.completions)) if merge_overlap else i, []).append(r)
    firsts = [g[0] for g in groups.values()]
    prompts = [r.prompt for r in firsts for _ in r.completions]
    completions = [c for r in firsts for c in r.completions]
    flat = encode(tokenizer, model.info, prompts, completions)
    weight = model.info.relevance_weight
    offsets = [weight * s for s in relevance_of(model, prompts, completions)] if weight else []
    out, i = [], 0
    for first, *rest in groups.values():
        out.append(
            EncodedRanking(flat[i : i + first.k], first.ranks(), [r.ranks() for r in rest], offsets[i : i + first.k])
        )
        i += first.k
    return out


def expand_pairs(data: Sequence[EncodedRanking]) -> list[EncodedRanking]:
    """``shuffled_pairs`` elements: one per untied ordered pair (winner first, rank 0; loser rank 1)."""
    out = []
    for r in data:
        for ranks in r.all_ranks:
            for w, lo in itertools.combinations(range(len(r.items)), 2):
                if ranks[w] == ranks[lo]:
                    continue
                if ranks[lo] < ranks[w]:
                    w, lo = lo, w
                offsets = [r.offsets[w], r.offsets[lo]] if r.offsets else []
                out.append(EncodedRanking([r.items[w], r.items[lo]], [0, 1], offsets=offsets))
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
    """One forward over the chunk's completions -> (scores, ranks, k_mask), each [B, Kmax] with one row
    per ranking (an element's rankings by several labelers share its completions' scores)."""
    flat = [it for r in chunk for it in r.items]
    raw = model(**collate(flat, pad, device))
    if chunk[0].offsets:  # the relevance term: fixed, so the head learns what it does not explain
        raw = raw + torch.tensor([o for r in chunk for o in r.offsets], dtype=raw.dtype, device=device)
    kmax = max(len(r.items) for r in chunk)
    k_mask = torch.tensor([[1] * len(r.items) + [0] * (kmax - len(r.items)) for r in chunk], device=device)
    scores = torch.zeros(k_mask.shape, dtype=raw.dtype, device=device).masked_scatter(k_mask.bool(), raw)
    rows = torch.tensor([b for b, r in enumerate(chunk) for _ in r.all_ranks], device=device)
    ranks = torch.tensor([rk + [0] * (kmax - len(rk)) for r in chunk for rk in r.all_ranks], device=device)
    return scores[rows], ranks, k_mask[rows]


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
