"""Held-out figures of a reward model: pairwise accuracy, K-way loss and mean margin.

The same :func:`~alignloop.train.losses.rm_kway_loss` that trains the model measures it, so the
held-out loss is comparable with the training loss; accuracy and margin count every untied pair.
A model with the relevance feature (:mod:`alignloop.models.relevance`) is measured on its whole
score, relevance included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError
from alignloop.models.padding import pad_token_id
from alignloop.models.reward import load_reward_model
from alignloop.train.losses import rm_kway_loss
from alignloop.train.reward_data import EncodedRanking, chunk_prompts, encode_rankings, score_chunk


class Tally:
    """Sums chunk metrics into step/epoch figures: loss per prompt, accuracy and margin per pair."""

    def __init__(self) -> None:
        self.loss = self.correct = self.margin = 0.0
        self.prompts = self.pairs = 0

    def add(self, loss: torch.Tensor, m: dict[str, torch.Tensor]) -> None:
        n_prompts, n_pairs = int(m["n_prompts"]), int(m["n_pairs"])
        self.loss += float(loss.detach()) * n_prompts
        self.correct += float(m["accuracy"]) * n_pairs
        self.margin += float(m["margin"]) * n_pairs
        self.prompts += n_prompts
        self.pairs += n_pairs

    def result(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/loss": self.loss / max(self.prompts, 1),
            f"{prefix}/accuracy": self.correct / max(self.pairs, 1),
            f"{prefix}/margin": self.margin / max(self.pairs, 1),
            f"{prefix}/pairs": float(self.pairs),
        }


@torch.no_grad()
def evaluate_encoded(
    model: torch.nn.Module, data: Sequence[EncodedRanking], pad: int, micro_batch: int, prefix: str = "val"
) -> dict[str, float]:
    """Pairwise accuracy, loss and mean margin of ``model`` on encoded rankings (no gradient)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tally = Tally()
    try:
        for chunk in chunk_prompts(data, micro_batch):
            loss, m = rm_kway_loss(*score_chunk(model, chunk, pad, device))
            tally.add(loss, m)
    finally:
        model.train(was_training)
    return tally.result(prefix)


def evaluate_reward_model(
    model_dir: str | os.PathLike[str], rankings: Sequence[Ranking], micro_batch: int = 32
) -> dict[str, float]:
    """``alignloop rm eval``: held-out pairwise accuracy / loss / margin of a saved reward model."""
    if not rankings:
        raise AlignloopError("no rankings to evaluate on", "give a rankings JSONL file with at least one line")
    model, tok = load_reward_model(model_dir)
    return evaluate_encoded(model, encode_rankings(model, tok, rankings), pad_token_id(tok), micro_batch, prefix="eval")


def ranking_pairs(rankings: Sequence[Ranking]) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """The distinct (prompt, completion)s of ``rankings`` as two lists, and every ranking's untied
    (preferred, other) pairs as indices into them (overlapping labelers' pairs each count)."""
    index: dict[tuple[str, str], int] = {}
    pairs: list[tuple[int, int]] = []
    for r in rankings:
        ids = [index.setdefault((r.prompt, c), len(index)) for c in r.completions]
        pairs += [(ids[w], ids[lose]) for w, lose in r.pairs()]
    return [p for p, _ in index], [c for _, c in index], pairs
