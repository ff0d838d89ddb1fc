"""Win rate of a policy against a baseline, with intervals that respect prompts.

The paper's headline figures are win rates against the 175B SFT model on held-out prompts.
Several samples of one prompt are correlated (an easy prompt is won by every sample), so the
bootstrap resamples prompts, not samples, whenever a prompt appears more than once. The Wilson
score interval is given alongside: it treats every judgment as an independent coin flip, so it
is only right for one sample per prompt.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from alignloop.errors import AlignloopError
from alignloop.stats.ratings import as_battles

_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class WinRate:
    """rate = (wins + ties / 2) / n, with a (cluster) bootstrap interval and a Wilson interval."""

    rate: float
    wins: int
    ties: int
    losses: int
    n: int
    n_prompts: int  # clusters the bootstrap resampled (= n without prompt ids)
    ci_low: float  # bootstrap percentile interval
    ci_high: float
    wilson_low: float
    wilson_high: float
    confidence: float

    def __str__(self) -> str:
        return f"{100 * self.rate:.1f} % [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] (n={self.n})"


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).

    ``successes`` may be fractional (ties count half); unlike p +- z*se it stays inside [0, 1]
    and behaves at p = 0 or 1.
    """
    if n <= 0:
        raise AlignloopError("wilson_interval: no judgments (n = 0)")
    z = float(norm.ppf((1 + confidence) / 2))
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def _score(outcome: Any, n: int) -> float:
    if isinstance(outcome, str):
        if outcome not in _SCORES:
            raise AlignloopError(f"judgment #{n} is {outcome!r}", "use 'win', 'tie' or 'loss' (or 1, 0.5, 0)")
        return _SCORES[outcome]
    value = float(outcome)
    if value not in (0.0, 0.5, 1.0):
        raise AlignloopError(f"judgment #{n} is {outcome!r}", "use 'win', 'tie' or 'loss' (or 1, 0.5, 0)")
    return value


def win_rate(
    outcomes: Sequence[Any],
    prompt_ids: Sequence[Hashable] | None = None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> WinRate:
    """Win rate of the policy from its judgments against the baseline.

    ``outcomes`` are "win" / "tie" / "loss" from the policy's side (or 1 / 0.5 / 0, or booleans).
    ``prompt_ids`` (same length) name the prompt of each judgment: the bootstrap then draws
    prompts with replacement and takes all their judgments, rate = sum of scores / count in the
    draw, which widens the interval as far as samples of a prompt agree with each other.
    """
    scores = np.array([_score(o, n) for n, o in enumerate(outcomes)])
    if len(scores) == 0:
        raise AlignloopError("win_rate: no judgments", "judge some policy samples against the baseline first")
    if prompt_ids is not None and len(prompt_ids) != len(scores):
        raise AlignloopError(f"win_rate: {len(prompt_ids)} prompt ids for {len(scores)} judgments")
    if prompt_ids is None:
        cluster = np.arange(len(scores))
    else:
        cluster = np.unique(np.array([repr(p) for p in prompt_ids]), return_inverse=True)[1].reshape(-1)
    n_clusters = int(cluster.max()) + 1
    sums = np.bincount(cluster, scores, n_clusters)
    counts = np.bincount(cluster, minlength=n_clusters).astype(float)
    rate = float(scores.mean())
    lo = hi = math.nan
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_clusters, size=(n_bootstrap, n_clusters))
        boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
        lo, hi = (float(x) for x in np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2]))
    wins, ties = int((scores == 1.0).sum()), int((scores == 0.5).sum())
    w_lo, w_hi = wilson_interval(float(scores.sum()), len(scores), confidence)
    return WinRate(rate, wins, ties, len(scores) - wins - ties, len(scores), n_clusters, lo, hi, w_lo, w_hi, confidence)


def head_to_head(
    battles: Iterable[Any],
    policy: str,
    baseline: str,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> WinRate:
    """Win rate of ``policy`` against ``baseline`` from battles (either side), clustered by ``prompt_id``
    when the battles carry one; battles between other models are ignored."""
    outcomes, prompts = [], []
    for b in as_battles(battles):
        if {b.model_a, b.model_b} != {policy, baseline}:
            continue
        if b.winner == "tie":
            outcomes.append(0.5)
        else:
            outcomes.append(1.0 if (b.winner == "a") == (b.model_a == policy) else 0.0)
        prompts.append(b.prompt_id)
    if not outcomes:
        raise AlignloopError(f"no battle between {policy!r} and {baseline!r}", "judge the policy against the baseline")
    clustered = all(p is not None for p in prompts)
    return win_rate(outcomes, prompts if clustered else None, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
