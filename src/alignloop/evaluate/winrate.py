"""Win rates against a baseline policy and a leaderboard of all compared policies (paper section 4.1).

Each policy answers the held-out prompts (k samples each); a judge compares sample j of a
policy with sample j of the baseline on the same prompt. Judges come in two shapes:

* a **scoring judge** (the reward model, the gold judge of the simulated panel): any
  :class:`~alignloop.models.scoring.Scorer`. Each completion is scored once, so every pair of
  policies can be compared for free and the leaderboard sees all of them against each other;
* a **pairwise judge** (humans through the feedback service, see :mod:`.human`): says "a",
  "b" or "tie" per pair; only policy-vs-baseline pairs are asked.

Win rates with prompt-clustered bootstrap intervals and the Elo / Bradley-Terry leaderboard
come from :mod:`alignloop.stats` (the same code the feedback service uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from itertools import combinations
from typing import Any, Protocol, runtime_checkable

from alignloop.errors import AlignloopError
from alignloop.models.scoring import Scorer, score_all
from alignloop.stats.ratings import Battle, leaderboard
from alignloop.stats.winrate import head_to_head

#: Samples of every policy: policy name -> one list of k completions per prompt.
Samples = dict[str, list[list[str]]]


@runtime_checkable
class PairwiseJudge(Protocol):
    """Compares two completions of one prompt: "a", "b" or "tie" per pair."""

    name: str

    def judge(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str]: ...


class ScoreJudge:
    """A pairwise judge from a scorer: the higher score wins; scores within ``tolerance`` tie."""

    def __init__(self, scorer: Scorer, name: str, tolerance: float = 0.0, batch_size: int = 32) -> None:
        self.scorer, self.name, self.tolerance, self.batch_size = scorer, name, tolerance, batch_size

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return score_all(self.scorer, prompts, completions, self.batch_size)

    def judge(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str]:
        n = len(prompts)
        s = self.scores(list(prompts) * 2, list(a) + list(b))
        return [outcome(s[i], s[n + i], self.tolerance) for i in range(n)]


def outcome(score_a: float, score_b: float, tolerance: float = 0.0) -> str:
    """ "a" if a scores higher by more than ``tolerance``, "b" if b does, else "tie"."""
    if abs(score_a - score_b) <= tolerance:
        return "tie"
    return "a" if score_a > score_b else "b"


def _check(samples: Samples, prompt_ids: Sequence[str]) -> int:
    k = None
    for name, per_prompt in samples.items():
        if len(per_prompt) != len(prompt_ids):
            raise AlignloopError(f"policy {name!r} has samples for {len(per_prompt)} of {len(prompt_ids)} prompts")
        for s in per_prompt:
            if k is None:
                k = len(s)
            if len(s) != k:
                raise AlignloopError("every policy needs the same number of samples per prompt")
    return k or 0


def score_samples(judge: ScoreJudge, prompts: Sequence[str], samples: Samples) -> dict[str, list[list[float]]]:
    """Every completion's score, in one batched pass over all policies."""
    names = list(samples)
    flat_p, flat_c = [], []
    for name in names:
        for p, comps in zip(prompts, samples[name], strict=True):
            flat_p.extend([p] * len(comps))
            flat_c.extend(comps)
    flat = judge.scores(flat_p, flat_c)
    out: dict[str, list[list[float]]] = {}
    i = 0
    for name in names:
        rows = []
        for comps in samples[name]:
            rows.append(flat[i : i + len(comps)])
            i += len(comps)
        out[name] = rows
    return out


def battles_from_scores(
    prompt_ids: Sequence[str], scores: dict[str, list[list[float]]], tolerance: float = 0.0
) -> list[Battle]:
    """Sample j of policy a against sample j of policy b on each prompt, for every pair of policies."""
    out = []
    for a, b in combinations(list(scores), 2):
        for pid, sa, sb in zip(prompt_ids, scores[a], scores[b], strict=True):
            for x, y in zip(sa, sb, strict=True):
                out.append(Battle(a, b, outcome(x, y, tolerance), pid))
    return out


def pairwise_battles(
    judge: PairwiseJudge, prompt_ids: Sequence[str], prompts: Sequence[str], samples: Samples, baseline: str
) -> list[Battle]:
    """Ask a pairwise judge about every policy sample against the baseline's sample j of the same prompt."""
    out = []
    for name in samples:
        if name == baseline:
            continue
        ids, ps, a, b = [], [], [], []
        for pid, p, mine, base in zip(prompt_ids, prompts, samples[name], samples[baseline], strict=True):
            for x, y in zip(mine, base, strict=True):
                ids.append(pid)
                ps.append(p)
                a.append(x)
                b.append(y)
        verdicts = judge.judge(ps, a, b)
        out.extend(Battle(name, baseline, v, pid) for pid, v in zip(ids, verdicts, strict=True))
    return out


#: Bootstrap resamples of the leaderboards' intervals, at most (the win rates use ``n_bootstrap`` in
#: full). Each resample refits Bradley-Terry and replays Elo over every battle, far costlier than a
#: win-rate resample, and the leaderboards are a summary beside the win rates, which decide.
LEADERBOARD_BOOTSTRAP = 200


def summarize_battles(
    battles: Sequence[Battle], policies: Sequence[str], baseline: str, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Win rate of each policy against the baseline (bootstrap over prompts, Wilson) and both leaderboards
    (with at most :data:`LEADERBOARD_BOOTSTRAP` resamples)."""
    rates = {}
    for name in policies:
        if name == baseline:
            continue
        rates[name] = asdict(head_to_head(battles, name, baseline, n_bootstrap=n_bootstrap, seed=seed))
    boards = {}
    for method in ("bradley_terry", "elo"):
        n = min(n_bootstrap, LEADERBOARD_BOOTSTRAP)
        rows = leaderboard(battles, method, n_bootstrap=n, seed=seed, anchor=baseline)
        boards[method] = [asdict(r) for r in rows]
    return {"win_rates": rates, "leaderboard": boards, "n_battles": len(battles)}


def evaluate_win_rates(
    judge: ScoreJudge | PairwiseJudge,
    prompt_ids: Sequence[str],
    prompts: Sequence[str],
    samples: Samples,
    baseline: str,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge every policy's samples against the baseline's and summarise; ``samples`` must include the baseline."""
    if baseline not in samples:
        raise AlignloopError(f"no samples of the baseline {baseline!r}")
    if len(samples) < 2:
        raise AlignloopError("a win rate needs at least one policy besides the baseline", "add --policy NAME=PATH")
    k = _check(samples, prompt_ids)
    result: dict[str, Any] = {"judge": judge.name, "samples_per_prompt": k, "n_prompts": len(prompt_ids)}
    if isinstance(judge, ScoreJudge):
        scores = score_samples(judge, prompts, samples)
        battles = battles_from_scores(prompt_ids, scores, judge.tolerance)
        result["mean_score"] = {n: _mean([x for row in s for x in row]) for n, s in scores.items()}
    else:
        battles = pairwise_battles(judge, prompt_ids, prompts, samples, baseline)
    result.update(summarize_battles(battles, list(samples), baseline, n_bootstrap, seed))
    return result


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
