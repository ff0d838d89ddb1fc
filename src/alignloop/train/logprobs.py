"""Sequence log-probabilities of ranked completions: the policy's at every DPO step, the reference's once.

DPO's implicit reward of a completion is h = beta * (log pi(y|x) - log pi_ref(y|x)), with
log pi(y|x) the SUM of the response tokens' log-probabilities (:func:`sequence_logprobs`). A
ranking's K completions are tokenised once as the rows SFT trains on (:func:`encode_rankings`),
so DPO scores exactly the sequences the policy samples. The reference is frozen: its
log-probs are computed once, before the first step, from the starting weights
(:func:`reference_logprobs`), kept flat in ranking order and indexed by each ranking's
``offset`` (:func:`ref_grid`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignloop.data.records import Ranking
from alignloop.train.reward import chunk_prompts
from alignloop.train.sft import IGNORE, SFTExample, build_example, collate, response_logits

# ---------------------------------------------------------------- rankings -> token rows


@dataclass
class EncodedRanking:
    """One batch element: the K completions of a prompt as SFT rows, their ranks (0 = best), and
    ``offset``: the index of its first completion in the flat reference cache."""

    items: list[SFTExample]
    ranks: list[int]
    offset: int

    @property
    def has_pairs(self) -> bool:
        return len(set(self.ranks)) > 1


def encode_rankings(tokenizer: Any, rankings: Sequence[Ranking], max_length: int) -> list[EncodedRanking]:
    """Every completion once as (chat query + completion + EOS) with labels on the response only:
    the rows SFT trains on, so DPO scores exactly the sequences the policy samples."""
    out, offset = [], 0
    for r in rankings:
        items = [build_example(tokenizer, r.prompt, c, max_length) for c in r.completions]
        out.append(EncodedRanking(items, r.ranks(), offset))
        offset += r.k
    return out


def sequence_logprobs(model: Any, rows: Sequence[SFTExample], pad: int, device: torch.device) -> torch.Tensor:
    """log pi(y | x) per row: the sum of the response tokens' log-probabilities (temperature 1),
    one forward over the batch, logits only over the window that holds response tokens."""
    batch = {k: v.to(device) for k, v in collate(rows, pad).items()}
    logits, labels = response_logits(model, batch)
    logits, labels = logits[:, :-1], labels[:, 1:]  # logits at t predict token t + 1
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    return -nll.view_as(labels).sum(1)


def grid(flat: torch.Tensor, chunk: Sequence[EncodedRanking], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Flat per-completion values of a chunk -> ([B, Kmax] values, ranks, k_mask), padding 0."""
    kmax = max(len(r.items) for r in chunk)
    k_mask = torch.tensor([[1] * len(r.items) + [0] * (kmax - len(r.items)) for r in chunk], device=device)
    ranks = torch.tensor([r.ranks + [0] * (kmax - len(r.ranks)) for r in chunk], device=device)
    values = torch.zeros(k_mask.shape, dtype=flat.dtype, device=device).masked_scatter(k_mask.bool(), flat)
    return values, ranks, k_mask


def ref_grid(ref: torch.Tensor, chunk: Sequence[EncodedRanking], device: torch.device) -> torch.Tensor:
    """The chunk's cached reference log-probs as a [B, Kmax] grid (the layout of :func:`grid`)."""
    idx = torch.tensor([r.offset + i for r in chunk for i in range(len(r.items))])
    return grid(ref[idx].to(device), chunk, device)[0]


# ---------------------------------------------------------------- the reference cache


@torch.no_grad()
def reference_logprobs(
    model: Any, data: Sequence[EncodedRanking], pad: int, micro_batch: int, device: torch.device
) -> torch.Tensor:
    """log pi_ref(y|x) of every completion, flat in ranking order (dropout off while computing)."""
    was_training = model.training
    model.eval()
    parts = [torch.zeros(0)]
    try:
        for chunk in chunk_prompts(data, micro_batch):
            parts.append(sequence_logprobs(model, [it for r in chunk for it in r.items], pad, device).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts)


def fingerprint(rankings: Sequence[Ranking]) -> str:
    """A short hash of the rankings: the reference cache and a resume must belong to the same data."""
    h = hashlib.sha1()
    for r in rankings:
        h.update(json.dumps([r.prompt, r.completions, r.ranks()]).encode())
    return h.hexdigest()[:16]
