"""Padding token rows into batches: the one pad-id rule and the one right/left padding.

Right padding is what training and scoring use: every row keeps positions 0..n-1, which is what a
model's default position ids assume, so a sequence scores the same in any batch. Left padding is
for generation, where every row's next token must sit in the same (last) column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignloop.errors import AlignloopError


def pad_token_id(tokenizer: Any) -> int:
    """The id padding positions get: the tokenizer's pad token, else its EOS token.

    Why EOS and not 0: padding positions are masked out, so the value never changes a result, but
    it must be a token the model knows and that decodes to nothing visible; id 0 is an arbitrary
    vocabulary entry (GPT-2's "!"), EOS is what Hugging Face's own generate pads with.
    (:func:`alignloop.models.loading.load_tokenizer` gives every tokenizer a distinct pad token,
    so the EOS fallback is only for tokenizers loaded elsewhere.)"""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise AlignloopError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has neither a pad nor an EOS token",
        "load it with alignloop.models.loading.load_tokenizer (which adds a pad token)",
    )


def right_pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tensor, mask) of int rows right-padded with ``value`` to the longest row; mask 1 on real entries.

    Used for token ids (``value`` = :func:`pad_token_id`) and for anything aligned with them
    (labels padded with -100, token type ids with 0)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
    return out, mask


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of token rows left-padded to the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask
