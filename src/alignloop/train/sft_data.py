"""Demonstrations as training rows for SFT: tokens, labels, the batch and the loss (SPEC section 4).

    loss(phi) = - sum_t log pi_phi(y_t | x, y_<t) / (number of response tokens)

A demonstration (x, y) becomes one row: the chat-formatted prompt x (exactly the query generation
sees) followed by the response y and EOS. Labels are -100 on the prompt and on padding, the
response ids after it, so only response tokens are learned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignloop.data.records import Demonstration
from alignloop.models.generation import forward_last_logits, query_token_ids
from alignloop.models.padding import right_pad

IGNORE = -100  # the label of positions that add nothing to the loss (prompt, padding)


@dataclass
class SFTExample:
    """One demonstration as tokens: ``labels`` is -100 on the prompt, the response ids after it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def build_example(tokenizer: Any, prompt: str, completion: str, max_length: int, ends: bool = True) -> SFTExample:
    """Chat-formatted prompt (exactly the query generation uses) + completion + EOS, labels on the
    response only. ``ends=False`` leaves EOS out (a policy sample cut off at max_new_tokens: the
    model should not learn to stop there). Over ``max_length``, the response keeps at least half
    the budget and the prompt loses its oldest tokens first (its end, the generation cue, matters most)."""
    query = query_token_ids(tokenizer, prompt)
    response = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ends else [])
    truncated = len(query) + len(response) > max_length
    if truncated:
        response = response[: max(max_length - len(query), max_length // 2)]
        query = query[len(query) - (max_length - len(response)) :]
    return SFTExample(query + response, [IGNORE] * len(query) + response, truncated)


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions 0.. for every row, as the model's default position ids assume);
    labels are padded with -100, so padding adds nothing to the loss."""
    ids, mask = right_pad([e.input_ids for e in examples], pad_id)
    labels, _ = right_pad([e.labels for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_only_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(y_t | ...) over response tokens, number of response tokens).

    ``logits[:, t]`` predicts token ``t + 1``, so labels are shifted left by one; positions with
    label -100 (prompt, padding) are ignored. The caller divides by the token count of the whole
    optimizer step, so micro-batches of different lengths weigh every token equally.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, (shift_labels != IGNORE).sum()


def response_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over the window that holds every response token of the batch.

    The vocabulary projection is the costliest part of a small model's step; prompts (the chat
    template's system text included) need no logits, so only positions from the earliest response
    start onward are projected (``logits_to_keep``). The window's first label is a prompt token,
    so :func:`response_only_loss` sees every response token exactly once.
    """
    labels = batch["labels"]
    is_response = (labels != IGNORE).any(0).nonzero()
    first = int(is_response[0]) if len(is_response) else labels.shape[1] - 1
    keep = labels.shape[1] - max(0, first - 1)
    logits = forward_last_logits(model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits, labels[:, -keep:]


def n_response_tokens(example: SFTExample) -> int:
    """The tokens the loss counts in one example (labels shifted by one, as in :func:`response_only_loss`)."""
    return sum(1 for x in example.labels[1:] if x != IGNORE)


def fingerprint(demos: Sequence[Demonstration], ends: Sequence[bool]) -> str:
    """A short hash of the training data (and EOS flags): a resume refuses other demonstrations."""
    h = hashlib.sha1()
    for d, e in zip(demos, ends, strict=True):
        h.update(json.dumps([d.prompt, d.completion, e]).encode())
    return h.hexdigest()[:16]
