"""Relevance: how close an answer's meaning is to its instruction's, as a frozen sentence encoder sees it.

Why a reward model gets this feature: the demo's reward model learns from a few dozen prompts'
rankings. From so few it learns what every answer shows on its own (tone, length) far better than
whether the answer is about what was asked, which needs many examples of prompt-answer
interaction; PPO then drifts towards pleasant but off-topic answers, where the reward model orders
pairs barely better than chance. A sentence encoder trained for semantic similarity
(all-MiniLM-L6-v2, the reward model's own backbone before fine-tuning) measures exactly that out
of the box: on the demo's validation answers its prompt-answer cosine alone ordered pairs as the
gold utility does on 0.66 of SFT answer pairs and 0.72 of a PPO policy's, where the trained reward
model managed 0.69 and 0.63 (docs/NOTES.md, session 9).

The reward model adds ``weight * cosine(E(prompt), E(completion))`` to its head's score.
``weight`` is not a hand-set constant: :func:`fit_weight` fits it on the training rankings, the
labelers' own data, before the head is trained; the head then learns, on top of it, what
relevance does not explain (the same loss, so the two share one scale).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

#: Prompt embeddings kept (PPO scores each prompt's answers many times).
PROMPT_CACHE = 4096


class Relevance:
    """Cosine similarity of mean-pooled, L2-normalised sentence embeddings (the all-MiniLM recipe)
    of prompt and completion, each encoded on its own by a frozen encoder (registry name or folder)."""

    def __init__(self, name: str, max_length: int = 128, batch_size: int = 32, device: str | None = None) -> None:
        from alignloop.models.loading import load_tokenizer
        from alignloop.models.registry import resolve
        from alignloop.models.reward import _load_trunk

        path = resolve(name)
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.tokenizer = load_tokenizer(path, padding_side="right")  # absolute positions: real tokens first
        self.encoder = _load_trunk(path, "encoder", "float32", None).eval().requires_grad_(False)
        if device is not None:
            self.encoder.to(device)
        self._prompts: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, d] unit vectors."""
        from alignloop.models.reward import pool  # the reward model's masked mean, not a copy of it

        device = next(self.encoder.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.encoder(**batch).last_hidden_state.float()
            out.append(torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1))
        return torch.cat(out).cpu() if out else torch.zeros(0, self.encoder.config.hidden_size)

    def similarity(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """cosine(E(prompt_i), E(completion_i)) for each pair, in [-1, 1]."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
        if missing:
            for p, e in zip(missing, self.embed(missing), strict=True):
                self._prompts[p] = e
        for p in prompts:
            self._prompts.move_to_end(p)
        while len(self._prompts) > PROMPT_CACHE:
            self._prompts.popitem(last=False)
        if not completions:
            return []
        prompt_vecs = torch.stack([self._prompts[p] for p in prompts])
        return (prompt_vecs * self.embed(completions)).sum(-1).tolist()


@functools.lru_cache(maxsize=2)
def shared(name: str, max_length: int = 128, device: str = "cpu") -> Relevance:
    """One frozen encoder per (name, length, device) in this process: the trainer, its evaluation and
    every scorer of the same model share it (and its prompt cache)."""
    return Relevance(name, max_length, device=device)


def fit_weight(relevance: Sequence[float], pairs: Sequence[tuple[int, int]], l2: float = 1e-2) -> dict[str, float]:
    """The weight the rankings give relevance on its own, in the reward model's units.

    Fits P(i preferred to j) = sigmoid(w * (rel_i - rel_j)) to ``pairs`` (preferred, other) by
    maximum likelihood (Newton's method on one parameter; a small L2 penalty keeps it finite when
    the pairs are separable). The reward model's loss is the same Bradley-Terry likelihood, so the
    head, trained afterwards on top of ``w * rel``, learns only what relevance does not explain.
    Fitted before the head and on the training rankings: one parameter cannot overfit them, where
    a weight fitted beside a trained head would be judged against a head that has already fitted
    those pairs (and a held-out split of a few prompts is too small to weigh it: its sign varied).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if not pairs:
        return {"weight": 0.0, "pairs": 0, "accuracy": math.nan}
    d = np.array([r[p] - r[q] for p, q in pairs])
    w = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-w * d))
        grad = float(d @ (1.0 - p)) - l2 * w
        hess = -float((d * d) @ (p * (1.0 - p))) - l2
        step = grad / hess
        w -= step
        if abs(step) < 1e-10:
            break
    return {"weight": w, "pairs": len(pairs), "accuracy": float(np.mean(d > 0))}
