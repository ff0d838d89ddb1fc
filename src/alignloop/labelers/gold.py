"""The hidden "gold" utility that the simulated labelers perceive through noise, and the gold judge.

Real RLHF never sees what labelers truly want; a simulation can. The gold utility of a
completion y for a prompt x is

    U(x, y) = substance(y) * sum_c w_c * s_c(x, y) / sum_c w_c          (in [0, 1])

with four scores s_c in [0, 1], each computed offline:

- ``sentiment``: (VADER compound + 1) / 2, a positive, friendly tone scores high;
- ``non_toxicity``: 1 - P(toxic) from alt-profanity-check (an sklearn model, run in batches);
- ``coverage``: share of the instruction's key words the answer mentions (see :mod:`.text`);
- ``length``: min(1, words / target_words), decaying linearly to 0 between max_words and
  2 * max_words: a complete answer of moderate length scores 1.

and a multiplicative ``substance`` factor that makes the utility hard to game:
min(1, words / min_words) * (distinct n-gram ratio) ** repetition_power. An empty answer
scores 0, and a loop of "great great great ..." scores near 0 whatever its sentiment.

Every score is monotone in a sensible property of the text, so a reward model can learn U
from noisy comparisons and PPO can raise it: be positive, stay on topic, answer fully and
briefly, do not repeat yourself. :class:`GoldJudge` exposes U for evaluation (gold win
rates, over-optimisation curves); the panel in :mod:`.panel` only ever sees it through noise.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alignloop.errors import AlignloopError
from alignloop.labelers.text import coverage, distinct_ngram_ratio, words

COMPONENTS: tuple[str, ...] = ("sentiment", "non_toxicity", "coverage", "length")


@dataclass
class GoldConfig:
    """Weights and shape parameters of the gold utility (defaults give every component equal say)."""

    weights: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in COMPONENTS})
    min_words: int = 3  # fewer words scale the whole utility down (empty = 0)
    target_words: int = 20  # the length score saturates here
    max_words: int = 150  # beyond this the length score decays, reaching 0 at twice this
    repetition_ngram: int = 3  # n of the distinct-n-gram ratio that penalises repetition
    repetition_power: float = 2.0  # how hard repetition is punished (ratio ** power)
    max_keywords: int = 8  # key words taken from the instruction for coverage
    cache_size: int = 50_000  # (prompt, completion) pairs whose components are remembered

    def validate(self) -> None:
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"weights: unknown component {unknown[0]!r} (known: {', '.join(COMPONENTS)})")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights: must be non-negative with a positive sum")
        if not 1 <= self.min_words <= self.target_words <= self.max_words:
            raise ValueError("min_words, target_words, max_words: need 1 <= min_words <= target_words <= max_words")
        if self.repetition_ngram < 1 or self.repetition_power < 0 or self.max_keywords < 1:
            raise ValueError("repetition_ngram, max_keywords: must be >= 1; repetition_power: must be >= 0")


def length_score(n_words: int, cfg: GoldConfig) -> float:
    """Saturating preference for a complete answer: rises to 1 at target_words, falls after max_words."""
    if n_words <= 0:
        return 0.0
    rise = min(1.0, n_words / cfg.target_words)
    fall = min(1.0, max(0.0, 2.0 - n_words / cfg.max_words))
    return rise * fall


class GoldJudge:
    """Scores (prompt, completion) pairs with the hidden gold utility U in [0, 1].

    Analysers load once and lazily (the toxicity model takes a second or two to import);
    components of recently scored pairs are cached, so the panel and the evaluation can ask
    about the same completion repeatedly for free.
    """

    def __init__(self, cfg: GoldConfig | None = None) -> None:
        self.cfg = cfg or GoldConfig()
        try:
            self.cfg.validate()
        except ValueError as err:
            raise AlignloopError(f"gold judge config: {err}", "fix the GoldConfig value named") from None
        total = sum(self.cfg.weights.get(c, 0.0) for c in COMPONENTS)
        self._weights = {c: self.cfg.weights.get(c, 0.0) / total for c in COMPONENTS}
        self._cache: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()
        self._sentiment: Any = None
        self._toxicity: Any = None

    # -- analysers, loaded on first use ---------------------------------------------------------
    def _sentiment_scores(self, texts: Sequence[str]) -> list[float]:
        if self._sentiment is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._sentiment = SentimentIntensityAnalyzer()
        return [(self._sentiment.polarity_scores(t)["compound"] + 1.0) / 2.0 if t.strip() else 0.5 for t in texts]

    def _toxicity_probs(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._toxicity is None:
            try:
                from profanity_check import predict_prob
            except ImportError as err:  # pragma: no cover - a broken install
                raise AlignloopError(
                    f"the gold judge needs alt-profanity-check ({err})", "pip install alt-profanity-check"
                ) from None
            self._toxicity = predict_prob
        return [float(p) for p in self._toxicity(list(texts))]

    # -- the utility ------------------------------------------------------------------------------
    def components_batch(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """Per pair: the four scores, ``toxicity``, ``n_words``, ``non_repetition``, ``substance``, ``utility``."""
        if len(prompts) != len(completions):
            raise AlignloopError(
                f"gold judge: got {len(prompts)} prompts but {len(completions)} completions",
                "pass one prompt per completion",
            )
        keys = list(zip(prompts, completions, strict=True))
        found: dict[tuple[str, str], dict[str, float]] = {}
        for k in keys:
            if k in self._cache:
                self._cache.move_to_end(k)
                found[k] = self._cache[k]
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            texts = [c for _, c in missing]
            sentiment = self._sentiment_scores(texts)
            toxicity = self._toxicity_probs(texts)
            for key, sent, tox in zip(missing, sentiment, toxicity, strict=True):
                found[key] = self._combine(key[0], key[1], sent, tox)
                self._remember(key, found[key])
        return [dict(found[k]) for k in keys]

    def _combine(self, prompt: str, completion: str, sentiment: float, toxicity: float) -> dict[str, float]:
        cfg = self.cfg
        toks = words(completion)
        n = len(toks)
        scores = {
            "sentiment": sentiment,
            "non_toxicity": 1.0 - toxicity,
            "coverage": coverage(prompt, toks, cfg.max_keywords) if n else 0.0,
            "length": length_score(n, cfg),
        }
        non_repetition = distinct_ngram_ratio(toks, cfg.repetition_ngram)
        substance = min(1.0, n / cfg.min_words) * non_repetition**cfg.repetition_power
        utility = substance * math.fsum(self._weights[c] * scores[c] for c in COMPONENTS)
        return {
            **scores,
            "toxicity": toxicity,
            "n_words": float(n),
            "non_repetition": non_repetition,
            "substance": substance,
            "utility": utility,
        }

    def _remember(self, key: tuple[str, str], value: dict[str, float]) -> None:
        """Keep the most recently used ``cache_size`` pairs (an LRU; a batch larger than that still works)."""
        self._cache[key] = value
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def score_batch(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Gold utility of each (prompt, completion) pair; the toxicity model runs once per batch."""
        return [c["utility"] for c in self.components_batch(prompts, completions)]

    def score(self, prompt: str, completion: str) -> float:
        """Gold utility U(prompt, completion) in [0, 1]."""
        return self.score_batch([prompt], [completion])[0]

    def components(self, prompt: str, completion: str) -> dict[str, float]:
        """The scores behind U for one pair, for reports and for the labelers' metadata flags."""
        return self.components_batch([prompt], [completion])[0]

    def compare(self, prompt: str, a: str, b: str, tolerance: float = 0.0) -> Literal["a", "b", "tie"]:
        """A pairwise gold judgment: which completion has the higher utility ("tie" within ``tolerance``)."""
        ua, ub = self.score_batch([prompt, prompt], [a, b])
        if abs(ua - ub) <= tolerance:
            return "tie"
        return "a" if ua > ub else "b"
