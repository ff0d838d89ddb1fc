"""One simulated labeler: the gold utility seen through Bradley-Terry noise and personal biases.

A labeler perceives a completion's utility as

    u_l(y) = U(x, y) + length_bias * min(words(y), 300) / 100

where U is the labeler's own utility: the gold utility's components weighed with its group's
weights (``weights``; None = the population's gold weights, see :mod:`.panel`). It decides
with Gumbel noise of scale T (its temperature). For a ranking that is
Plackett-Luce sampling from weights exp(u_l / T): sort by u_l / T + Gumbel noise. Because the
difference of two Gumbels is logistic, every pair of completions in the sampled ranking is
ordered as a Bradley-Terry model says, P(i above j) = sigmoid((u_i - u_j) / T), whatever the
other completions are; :func:`expected_agreement` turns that into the agreement rate with
gold that a noise setting predicts. T = 0 always follows u_l. A careless labeler ignores the
completions altogether and answers uniformly at random, which screening must catch.

Two optional habits of real labelers: ``position_bias`` adds a bonus to the completion shown
first, falling linearly to 0 for the last one shown; ``fatigue`` raises the temperature over a
labeling session, T_j = T + fatigue * (j mod session_items) / session_items for the labeler's
j-th item, so quality falls until the session ends.

All methods are pure functions of their arguments and a numpy Generator, so the panel can
make every judgment reproducible from (seed, labeler, item).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignloop.labelers.gold import COMPONENTS

LENGTH_BIAS_CAP_WORDS = 300  # a length lover's bonus stops growing here
LIKERT_LEVELS = 7


def expected_agreement(temperature: float, gaps: Sequence[float] | np.ndarray) -> float:
    """Predicted share of pairs a labeler orders as gold does: mean of sigmoid(|du| / T).

    ``gaps`` are gold-utility differences of the pairs compared. A gap of 0 counts 0.5 (a coin
    flip); at T = 0 every non-zero gap counts 1.
    """
    g = np.abs(np.asarray(gaps, dtype=float))
    if g.size == 0:
        raise ValueError("gaps: need at least one utility difference")
    if temperature == 0:
        return float(np.mean(np.where(g > 0, 1.0, 0.5)))
    return float(np.mean(1.0 / (1.0 + np.exp(-g / temperature))))


@dataclass(frozen=True)
class SimulatedLabeler:
    """A member of the panel. ``group`` is used for k-fold cross-validation by labeler group."""

    id: str
    group: int = 0
    temperature: float = 0.1  # Bradley-Terry noise on the perceived utility
    length_bias: float = 0.0  # utility bonus per 100 words: > 0 loves long answers
    careless: bool = False  # answers at random
    weights: tuple[float, ...] | None = None  # its group's weights over gold COMPONENTS (sum 1); None = gold's
    position_bias: float = 0.0  # utility bonus for the completion shown first (0 for the last shown)
    fatigue: float = 0.0  # temperature added by the end of a session of session_items items
    session_items: int = 50

    def utilities(self, components: Sequence[dict[str, float]]) -> list[float]:
        """This labeler's own utility of each completion from the gold judge's component scores:
        substance * sum_c w_c s_c with its group's weights (the gold utility when ``weights`` is None)."""
        if self.weights is None:
            return [c["utility"] for c in components]
        return [
            c["substance"] * math.fsum(w * c[name] for name, w in zip(COMPONENTS, self.weights, strict=True))
            for c in components
        ]

    def temperature_at(self, session_position: int = 0) -> float:
        """The noise scale at the labeler's ``session_position``-th item (fatigue grows within a session)."""
        if self.fatigue == 0:
            return self.temperature
        return self.temperature + self.fatigue * (session_position % self.session_items) / self.session_items

    def position_bonus(self, k: int) -> np.ndarray:
        """Bonus per display position: ``position_bias`` for the first shown, falling linearly to 0 for the last."""
        if self.position_bias == 0 or k < 2:
            return np.zeros(k)
        return self.position_bias * (1.0 - np.arange(k) / (k - 1))

    def perceive(self, utilities: Sequence[float], n_words: Sequence[float]) -> np.ndarray:
        """The utility this labeler believes each completion has (its utility plus its length bias)."""
        u = np.asarray(utilities, dtype=float)
        n = np.minimum(np.asarray(n_words, dtype=float), LENGTH_BIAS_CAP_WORDS)
        return u + self.length_bias * n / 100.0

    def rank(
        self,
        utilities: Sequence[float],
        n_words: Sequence[float],
        rng: np.random.Generator,
        tie_tolerance: float = 0.0,
        session_position: int = 0,
    ) -> tuple[list[int], list[list[int]]]:
        """Order completions best first (Plackett-Luce), and group neighbours within ``tie_tolerance``.

        Returns ``(order, ties)`` in the conventions of :class:`~alignloop.data.records.Ranking`.
        A tie group collects consecutive completions whose perceived utilities lie within the
        tolerance of the group's first member.
        """
        perceived = self.perceive(utilities, n_words)
        if self.careless:
            return [int(i) for i in rng.permutation(len(perceived))], []
        perceived = perceived + self.position_bonus(len(perceived))
        noise = rng.gumbel(size=perceived.shape)
        temperature = self.temperature_at(session_position)
        # primary key: perceived utility + T * Gumbel; the raw Gumbel breaks exact ties at T = 0
        order = [int(i) for i in np.lexsort((-noise, -(perceived + temperature * noise)))]
        ties: list[list[int]] = []
        if tie_tolerance > 0:
            group = [order[0]]
            for c in order[1:]:
                if abs(perceived[c] - perceived[group[0]]) <= tie_tolerance:
                    group.append(c)
                    continue
                if len(group) > 1:
                    ties.append(group)
                group = [c]
            if len(group) > 1:
                ties.append(group)
        return order, ties

    def best_pick(
        self, utilities: Sequence[float], n_words: Sequence[float], rng: np.random.Generator, session_position: int = 0
    ) -> int:
        """The completion this labeler picks as best: the first place of a Plackett-Luce ranking."""
        return self.rank(utilities, n_words, rng, session_position=session_position)[0][0]

    def thumbs(self, utility: float, n_words: float, threshold: float, rng: np.random.Generator) -> bool:
        """Thumbs up when the noisy perceived utility clears ``threshold``: P(up) = sigmoid((u_l - t) / T)."""
        if self.careless:
            return bool(rng.random() < 0.5)
        perceived = self.perceive([utility], [n_words])
        return bool((perceived + self.temperature * rng.logistic(size=1))[0] > threshold)

    def likert(self, utility: float, n_words: float, rng: np.random.Generator) -> int:
        """Overall quality 1..7: the noisy perceived utility cut into seven equal bins of [0, 1]."""
        if self.careless:
            return int(rng.integers(1, LIKERT_LEVELS + 1))
        noisy = float((self.perceive([utility], [n_words]) + self.temperature * rng.logistic(size=1))[0])
        return int(np.clip(1 + np.floor(LIKERT_LEVELS * noisy), 1, LIKERT_LEVELS))
