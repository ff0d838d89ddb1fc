"""Log-likelihood of text under a causal LM: the one scorer behind every likelihood-based benchmark.

TruthfulQA multiple choice, CrowS-Pairs, Winogender, HellaSwag and perplexity all reduce to
log p(continuation | context) = sum_t log p(y_t | context, y_<t), the continuation's tokens
scored in one forward pass of the concatenation. The benchmarks take a plain function
``(contexts, continuations) -> list[float]`` (:data:`LogLikelihood`), so a test can hand them a
fake with known values and a user can plug any model.

Text is scored as text (no chat template): these benchmarks measure the language model's
distribution, as the papers did. A document-start token (BOS, else EOS) is put in front so the
first word of a context-free sentence is predicted too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignloop.errors import AlignloopError

#: ``loglik(contexts, continuations)``: sum of log-probabilities (nats) of each continuation.
LogLikelihood = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclass
class TokenNLL:
    """Negative log-likelihood (nats) of a corpus and the number of tokens it predicted."""

    nll: float
    n_tokens: int

    @property
    def perplexity(self) -> float:
        """exp(NLL / tokens): the corpus perplexity."""
        return perplexity(self.nll, self.n_tokens)


def perplexity(nll: float, n_tokens: int) -> float:
    """PPL = exp(-1/N sum_t log p(x_t | x_<t)), from the summed NLL in nats."""
    if n_tokens <= 0:
        raise AlignloopError("perplexity of an empty corpus", "give a text file with at least one word")
    return math.exp(nll / n_tokens)


class CausalLMLikelihood:
    """Scores continuations under a Hugging Face causal LM in padded batches (no gradients).

    ``max_length`` bounds one forward pass; a longer context is cut from the left (the
    continuation is always scored in full, and must fit).
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 1024) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_ids: list[int] = [] if start is None else [int(start)]
        from alignloop.models.padding import pad_token_id

        self.pad_id = pad_token_id(tokenizer)

    @classmethod
    def from_name(cls, name: str, dtype: str = "float32", batch_size: int = 8) -> CausalLMLikelihood:
        """Load a registry name, local folder or hub id."""
        from alignloop.models.loading import load_policy

        model, tok = load_policy(name, dtype)
        model.eval()
        return cls(model, tok, batch_size=batch_size)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def __call__(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        return self.loglik(contexts, continuations)

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """log p(continuation | context) for each pair, summed over the continuation's tokens."""
        if len(contexts) != len(continuations):
            raise AlignloopError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        pairs = []
        for ctx, cont in zip(contexts, continuations, strict=True):
            target = self._ids(cont)
            pairs.append((self.start_ids + self._ids(ctx), target))
        return [lp for lp, _ in self.score_ids(pairs)]

    def token_nll(self, texts: Sequence[str]) -> TokenNLL:
        """Summed NLL of every token of every text, each text read on its own from a document start.

        A text longer than ``max_length`` is read in consecutive windows; each window repeats the
        previous window's last token as its context, so every token is predicted exactly once.
        """
        pairs = []
        for text in texts:
            ids = self._ids(text)
            if not ids:
                continue
            context = self.start_ids or ids[:1]
            rest = ids if self.start_ids else ids[1:]
            step = max(1, self.max_length - len(context))
            for i in range(0, len(rest), step):
                pairs.append((context, rest[i : i + step]))
                context = rest[i + step - 1 : i + step]
        scored = self.score_ids(pairs)
        return TokenNLL(-math.fsum(lp for lp, _ in scored), sum(n for _, n in scored))

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, int]]:
        """(sum log p(target | context), len(target)) for token-id pairs, batched by length.

        Rows are LEFT-padded (positions counted from each row's first real token) so every target
        ends at the last column: the vocabulary projection and softmax run only on the last
        max(len(target)) + 1 positions, not on a long shared prompt.
        """
        import torch

        from alignloop.models.generation import forward_last_logits, position_ids_from_mask
        from alignloop.models.padding import left_pad

        out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            rows, spans = [], []
            for i in order[start : start + self.batch_size]:
                ctx, tgt = pairs[i]
                if not tgt:
                    continue
                if len(tgt) >= self.max_length:
                    raise AlignloopError(
                        f"a continuation of {len(tgt)} tokens does not fit max_length {self.max_length}",
                        "shorten the answer texts or raise max_length",
                    )
                ctx = ctx[-(self.max_length - len(tgt)) :] if ctx else ctx
                if not ctx:
                    raise AlignloopError("a continuation needs at least one context token", "give a context")
                rows.append(ctx + tgt)
                spans.append((i, len(tgt)))
            if not rows:
                continue
            ids, mask = left_pad(rows, self.pad_id)
            keep = max(n for _, n in spans) + 1
            with torch.no_grad():
                logits = forward_last_logits(
                    self.model,
                    keep,
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=position_ids_from_mask(mask).to(device),
                )
            # logits at column c predict the token at c + 1: the last keep - 1 tokens of every row
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_lp = logp.gather(-1, ids[:, -(keep - 1) :].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            for r, (i, n_tgt) in enumerate(spans):
                out[i] = (float(token_lp[r, token_lp.shape[1] - n_tgt :].sum()), n_tgt)
        return out
