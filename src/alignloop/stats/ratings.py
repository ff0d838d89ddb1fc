"""Ratings of policies from pairwise judgments: Elo and Bradley-Terry with bootstrap intervals.

A battle is one pairwise judgment: two policies answered the same prompt and a judge (a
labeler, the reward model, the gold judge) preferred one of them or called a tie; a tie counts
half a win for each. The feedback service and the evaluation both rank policies with
:func:`leaderboard`, as Chatbot Arena does: Bradley-Terry by maximum likelihood (the order of
battles does not matter) or online Elo (it does), with percentile intervals from resampling
the battles with replacement.

Ratings are on the Elo scale: a gap of ``scale`` points means odds of ``base`` to 1, so with the
defaults 400 points are 10:1 and equal ratings are 50 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
from scipy.special import expit, log_expit

from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError

WINNERS = ("a", "b", "tie")


@dataclass(frozen=True)
class Battle:
    """One pairwise judgment between ``model_a`` and ``model_b``; ``winner`` is "a", "b" or "tie"."""

    model_a: str
    model_b: str
    winner: str
    prompt_id: str | None = None  # lets win rates resample prompts rather than samples


def as_battles(battles: Iterable[Battle | tuple | Mapping[str, Any]]) -> list[Battle]:
    """Accept Battle records, ``(model_a, model_b, winner[, prompt_id])`` tuples or dicts with those keys."""
    out = []
    for n, b in enumerate(battles):
        if isinstance(b, Mapping):
            b = Battle(b.get("model_a"), b.get("model_b"), b.get("winner"), b.get("prompt_id"))
        elif isinstance(b, (tuple, list)) and len(b) in (3, 4):
            b = Battle(*b)
        elif not isinstance(b, Battle):
            raise AlignloopError(f"battle #{n} is {b!r:.80}", "pass (model_a, model_b, winner) with winner a, b or tie")
        if b.winner not in WINNERS:
            raise AlignloopError(f"battle #{n}: winner is {b.winner!r}, expected one of a, b, tie")
        if b.model_a == b.model_b:
            raise AlignloopError(f"battle #{n}: {b.model_a!r} against itself", "a battle needs two different models")
        out.append(b)
    if not out:
        raise AlignloopError("no battles to rate", "collect pairwise judgments between at least two models first")
    return out


def battles_from_rankings(rankings: Iterable[Ranking]) -> list[Battle]:
    """Every pair of completions of a ranking that come from two different policies is a battle.

    Needs ``Ranking.sources`` (the policy behind each completion); rankings without it and pairs
    from the same policy are skipped. Tied completions give a tie.
    """
    out = []
    for r in rankings:
        if r.sources is None:
            continue
        ranks = r.ranks()
        for x, y in combinations(range(r.k), 2):
            if r.sources[x] == r.sources[y]:
                continue
            winner = "tie" if ranks[x] == ranks[y] else ("a" if ranks[x] < ranks[y] else "b")
            out.append(Battle(r.sources[x], r.sources[y], winner, r.prompt_id))
    return out


@dataclass
class _Encoded:
    models: list[str]
    a: np.ndarray  # model index of side a, per battle
    b: np.ndarray
    score_a: np.ndarray  # 1 win, 0.5 tie, 0 loss for side a


def _encode(battles: list[Battle]) -> _Encoded:
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[b.model_a] for b in battles])
    bb = np.array([index[b.model_b] for b in battles])
    s = np.array([{"a": 1.0, "b": 0.0, "tie": 0.5}[b.winner] for b in battles])
    return _Encoded(models, a, bb, s)


# --------------------------------------------------------------------------------------------------
# Elo


def expected_score(r_a: float, r_b: float, scale: float = 400.0, base: float = 10.0) -> float:
    """E_a = 1 / (1 + base^((R_b - R_a) / scale)): the probability that a beats b (ties half)."""
    return 1.0 / (1.0 + base ** ((r_b - r_a) / scale))


def elo_update(
    r_a: float, r_b: float, score_a: float, k: float = 4.0, scale: float = 400.0, base: float = 10.0
) -> tuple[float, float]:
    """One Elo step: R_a' = R_a + K (S_a - E_a), R_b' = R_b - K (S_a - E_a); S_a is 1, 0.5 or 0."""
    delta = k * (score_a - expected_score(r_a, r_b, scale, base))
    return r_a + delta, r_b - delta


def _elo_rounds(enc: _Encoded, order: np.ndarray, k: float, initial: float, scale: float, base: float) -> np.ndarray:
    """Online Elo over battles ``order[r]`` (rounds x battles indices) for all rounds at once.

    Readable loop version for one round: for t in order: ra, rb = elo_update(ra, rb, s[t], k).
    """
    rounds = order.shape[0]
    r = np.full((rounds, len(enc.models)), float(initial))
    rows = np.arange(rounds)
    for t in range(order.shape[1]):
        idx = order[:, t]
        ia, ib = enc.a[idx], enc.b[idx]
        e_a = 1.0 / (1.0 + base ** ((r[rows, ib] - r[rows, ia]) / scale))
        delta = k * (enc.score_a[idx] - e_a)
        r[rows, ia] += delta
        r[rows, ib] -= delta
    return r


def elo_ratings(
    battles: Iterable[Any], *, k: float = 4.0, initial: float = 1000.0, scale: float = 400.0, base: float = 10.0
) -> dict[str, float]:
    """Online Elo over the battles in the order given (chronological, as they were judged)."""
    enc = _encode(as_battles(battles))
    r = _elo_rounds(enc, np.arange(len(enc.a))[None, :], k, initial, scale, base)[0]
    return dict(zip(enc.models, r.tolist(), strict=True))


# --------------------------------------------------------------------------------------------------
# Bradley-Terry


def _pair_counts(enc: _Encoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique unordered pairs (i < j) and, per battle, its pair id and the score of the pair's i."""
    lo, hi = np.minimum(enc.a, enc.b), np.maximum(enc.a, enc.b)
    pairs, pair_id = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
    score_lo = np.where(enc.a == lo, enc.score_a, 1.0 - enc.score_a)
    return pairs, pair_id.reshape(-1), score_lo


def _bt_fit(pairs: np.ndarray, wins: np.ndarray, n: np.ndarray, n_models: int, l2: float) -> np.ndarray:
    """Maximum likelihood Bradley-Terry strengths theta (natural log-odds units) by Newton's method.

    P(i beats j) = sigmoid(theta_i - theta_j); maximise sum_pairs w_ij log P + (n_ij - w_ij) log(1 - P)
    (a logistic regression on +1/-1 indicator features) minus l2/2 |theta|^2. The weak prior keeps
    theta finite when a model won or lost every battle and fixes the mean at zero.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    keep = n > 0
    i, j, wins, n = i[keep], j[keep], wins[keep], n[keep]

    def nll(theta: np.ndarray) -> float:
        d = theta[i] - theta[j]
        return float(-(wins * log_expit(d) + (n - wins) * log_expit(-d)).sum() + 0.5 * l2 * theta @ theta)

    theta = np.zeros(n_models)
    f = nll(theta)
    for _ in range(200):
        p = expit(theta[i] - theta[j])
        g_pair = wins - n * p  # d loglik / d (theta_i - theta_j)
        grad = l2 * theta - np.bincount(i, g_pair, n_models) + np.bincount(j, g_pair, n_models)
        h = n * p * (1.0 - p)
        hess = l2 * np.eye(n_models)
        np.add.at(hess, (i, i), h)
        np.add.at(hess, (j, j), h)
        np.add.at(hess, (i, j), -h)
        np.add.at(hess, (j, i), -h)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking keeps Newton monotone when a model is far ahead
            new = nll(theta - t * step)
            if new <= f - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        theta, f = theta - t * step, new
        if np.max(np.abs(t * step)) < 1e-9:
            break
    return theta


def bradley_terry(
    battles: Iterable[Any],
    *,
    initial: float = 1000.0,
    scale: float = 400.0,
    base: float = 10.0,
    anchor: str | None = None,
    l2: float = 1e-4,
) -> dict[str, float]:
    """Bradley-Terry ratings on the Elo scale: R = initial + scale / ln(base) * (theta - theta_anchor).

    Without ``anchor`` the mean rating is ``initial``; with it the anchor (the baseline policy)
    sits at ``initial`` and the others are read against it. Models are only comparable within a
    connected set of battles: two groups that never met each get mean ``initial``.
    """
    enc = _encode(as_battles(battles))
    pairs, pair_id, score_lo = _pair_counts(enc)
    wins = np.bincount(pair_id, score_lo, len(pairs))
    n = np.bincount(pair_id, minlength=len(pairs)).astype(float)
    theta = _bt_fit(pairs, wins, n, len(enc.models), l2)
    r = _to_points(theta[None, :], enc.models, initial, scale, base, anchor, natural=True)[0]
    return dict(zip(enc.models, r.tolist(), strict=True))


def _to_points(
    values: np.ndarray, models: list[str], initial: float, scale: float, base: float, anchor: str | None, natural: bool
) -> np.ndarray:
    """Convert (rounds x models) strengths to Elo points and shift so the anchor sits at ``initial``."""
    points = initial + scale / math.log(base) * values if natural else values
    if anchor is not None:
        if anchor not in models:
            raise AlignloopError(f"anchor model {anchor!r} is in no battle", f"pick one of {', '.join(models)}")
        points = points - points[:, [models.index(anchor)]] + initial
    return points


# --------------------------------------------------------------------------------------------------
# Leaderboard with bootstrap intervals


@dataclass
class LeaderboardRow:
    """One policy's rating with its bootstrap interval and raw record."""

    rank: int
    model: str
    rating: float
    ci_low: float  # NaN without bootstrap rounds
    ci_high: float
    n_battles: int
    wins: int
    losses: int
    ties: int
    win_rate: float  # (wins + ties / 2) / n_battles, against whoever it met


Method = Literal["bradley_terry", "bt", "elo"]


def bootstrap_ratings(
    battles: Iterable[Any],
    method: Method = "bradley_terry",
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    k: float = 4.0,
    initial: float = 1000.0,
    scale: float = 400.0,
    base: float = 10.0,
    anchor: str | None = None,
    l2: float = 1e-4,
) -> tuple[list[str], np.ndarray]:
    """Ratings refitted on ``n_bootstrap`` resamples of the battles (drawn with replacement, seeded).

    Each Elo round replays its resample in the random order it was drawn, so the spread covers
    the order dependence of online Elo as well as sampling noise. Returns (models, rounds x models).
    """
    enc = _encode(as_battles(battles))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(enc.a), size=(n_bootstrap, len(enc.a)))
    if method == "elo":
        return enc.models, _to_points(
            _elo_rounds(enc, draws, k, initial, scale, base), enc.models, initial, scale, base, anchor, natural=False
        )
    if method not in ("bradley_terry", "bt"):
        raise AlignloopError(f"unknown rating method {method!r}", "use 'bradley_terry' (or 'bt') or 'elo'")
    pairs, pair_id, score_lo = _pair_counts(enc)
    thetas = np.empty((n_bootstrap, len(enc.models)))
    for r, idx in enumerate(draws):
        wins = np.bincount(pair_id[idx], score_lo[idx], len(pairs))
        n = np.bincount(pair_id[idx], minlength=len(pairs)).astype(float)
        thetas[r] = _bt_fit(pairs, wins, n, len(enc.models), l2)
    return enc.models, _to_points(thetas, enc.models, initial, scale, base, anchor, natural=True)


def leaderboard(
    battles: Iterable[Any],
    method: Method = "bradley_terry",
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    k: float = 4.0,
    initial: float = 1000.0,
    scale: float = 400.0,
    base: float = 10.0,
    anchor: str | None = None,
    l2: float = 1e-4,
) -> list[LeaderboardRow]:
    """Rate every model in ``battles`` and sort best first.

    ``rating`` is the fit on all battles (Elo: in the order given); ``ci_low``/``ci_high`` are the
    percentile interval of ``n_bootstrap`` resampled fits at ``confidence``. ``anchor`` pins a
    baseline policy at ``initial`` points.
    """
    battles = as_battles(battles)
    if not 0 < confidence < 1:
        raise AlignloopError(f"confidence must be between 0 and 1, got {confidence}")
    if method == "elo":
        point = elo_ratings(battles, k=k, initial=initial, scale=scale, base=base)
        if anchor is not None:
            models = list(point)
            shifted = _to_points(np.array([list(point.values())]), models, initial, scale, base, anchor, natural=False)
            point = dict(zip(models, shifted[0].tolist(), strict=True))
    elif method in ("bradley_terry", "bt"):
        point = bradley_terry(battles, initial=initial, scale=scale, base=base, anchor=anchor, l2=l2)
    else:
        raise AlignloopError(f"unknown rating method {method!r}", "use 'bradley_terry' (or 'bt') or 'elo'")
    lo = hi = {m: math.nan for m in point}
    if n_bootstrap > 0:
        models, samples = bootstrap_ratings(
            battles, method, n_bootstrap, seed, k=k, initial=initial, scale=scale, base=base, anchor=anchor, l2=l2
        )
        q = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
        lo, hi = dict(zip(models, q[0].tolist(), strict=True)), dict(zip(models, q[1].tolist(), strict=True))
    record = {m: [0, 0, 0] for m in point}  # wins, losses, ties
    for b in battles:
        if b.winner == "tie":
            record[b.model_a][2] += 1
            record[b.model_b][2] += 1
        else:
            win, lose = (b.model_a, b.model_b) if b.winner == "a" else (b.model_b, b.model_a)
            record[win][0] += 1
            record[lose][1] += 1
    rows = []
    for rank, m in enumerate(sorted(point, key=lambda m: -point[m]), start=1):
        w, lost, t = record[m]
        n = w + lost + t
        rows.append(LeaderboardRow(rank, m, point[m], lo[m], hi[m], n, w, lost, t, (w + t / 2) / n))
    return rows
