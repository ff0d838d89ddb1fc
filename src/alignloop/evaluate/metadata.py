"""Likert quality and the yes/no metadata axes per policy, and the closed-domain hallucination rate.

The paper (section 4.1, Figure 4) reports, per policy, how often labelers flagged outputs as
failing the instruction, hallucinating on closed-domain tasks, being inappropriate for a
customer assistant, or expressing moral judgment, next to the mean Likert score. Here the
ratings come from a pluggable :class:`MetadataJudge`:

* :class:`GoldMetadataJudge`: the attentive simulated labeler (the gold judge's components read
  by :func:`alignloop.labelers.rules.metadata_flags`), no noise: the "simulated judge";
* :class:`PanelMetadataJudge`: the noisy simulated panel, majority vote over ``overlap`` labelers;
* human ratings collected by the feedback service, summarised by :func:`summarize_ratings`.

Closed-domain hallucination (section 4.2) is the ``hallucination`` flag rate on prompts whose
answer must stay inside the prompt's text: extraction and summarization.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from alignloop.data.records import METADATA_FLAGS, Prompt, Rating
from alignloop.stats.winrate import wilson_interval

#: Prompt categories on which closed-domain hallucination is measured (paper section 4.2).
CLOSED_DOMAIN_CATEGORIES: tuple[str, ...] = ("extraction", "summarization")


class MetadataJudge(Protocol):
    """Rates completions: Likert 1-7 and the metadata flags, one Rating per (prompt, completion)."""

    name: str

    def rate(
        self, prompts: Sequence[Prompt], completions: Sequence[str], source: str | None = None
    ) -> list[Rating]: ...


class GoldMetadataJudge:
    """The attentive labeler: flags from the gold components, Likert = 1 + round(6 * gold utility)."""

    name = "gold"

    def __init__(self, gold: Any = None) -> None:
        if gold is None:
            from alignloop.labelers.gold import GoldJudge

            gold = GoldJudge()
        self.gold = gold

    def rate(self, prompts: Sequence[Prompt], completions: Sequence[str], source: str | None = None) -> list[Rating]:
        from alignloop.labelers.rules import metadata_flags

        comps = self.gold.components_batch([p.text for p in prompts], list(completions))
        out = []
        for p, c, comp in zip(prompts, completions, comps, strict=True):
            flags = metadata_flags(p.text, c, comp, p.category)
            likert = 1 + round(6 * min(1.0, max(0.0, comp["utility"])))
            out.append(Rating(p.id, p.text, c, likert, "gold", flags, source))
        return out


class PanelMetadataJudge:
    """The simulated panel: ``overlap`` labelers rate each completion; flags by majority, Likert averaged."""

    name = "panel"

    def __init__(self, panel: Any = None, overlap: int = 3) -> None:
        if panel is None:
            from alignloop.labelers.panel import SimulatedPanel

            panel = SimulatedPanel()
        self.panel, self.overlap = panel, max(1, overlap)

    def rate(self, prompts: Sequence[Prompt], completions: Sequence[str], source: str | None = None) -> list[Rating]:
        self.panel.prefetch([(p, [c]) for p, c in zip(prompts, completions, strict=True)])
        out = []
        labelers = self.panel.labelers
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            ratings = [
                self.panel.rate(p, c, labelers[(i + j) % len(labelers)], source)
                for j in range(min(self.overlap, len(labelers)))
            ]
            flags = {f: 2 * sum(r.flags.get(f, False) for r in ratings) > len(ratings) for f in METADATA_FLAGS}
            likert = round(sum(r.likert for r in ratings) / len(ratings))
            out.append(Rating(p.id, p.text, c, likert, "panel", flags, source))
        return out


def summarize_ratings(ratings: Iterable[Rating]) -> dict[str, dict[str, Any]]:
    """Per source (policy): mean Likert and the rate of each metadata flag, over all its ratings."""
    by_source: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_source[r.source or "unknown"].append(r)
    out = {}
    for source, rs in sorted(by_source.items()):
        n = len(rs)
        out[source] = {
            "likert": sum(r.likert for r in rs) / n,
            "n": n,
            "flags": {f: sum(bool(r.flags.get(f, False)) for r in rs) / n for f in METADATA_FLAGS},
        }
    return out


def closed_domain(prompts: Sequence[Prompt], categories: Sequence[str] = CLOSED_DOMAIN_CATEGORIES) -> list[int]:
    """Indices of the prompts whose category makes them closed-domain."""
    return [i for i, p in enumerate(prompts) if p.category in categories]


def hallucination_rate(ratings: Sequence[Rating]) -> dict[str, float]:
    """Share of ratings flagged ``hallucination``, with a Wilson 95 % interval."""
    n = len(ratings)
    if n == 0:
        return {"rate": float("nan"), "n": 0, "ci_low": float("nan"), "ci_high": float("nan")}
    k = sum(bool(r.flags.get("hallucination", False)) for r in ratings)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "n": n, "ci_low": lo, "ci_high": hi}


def rate_policies(
    judge: MetadataJudge, prompts: Sequence[Prompt], samples: dict[str, list[list[str]]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata summary per policy, closed-domain hallucination per policy) from one judge's ratings."""
    closed = set(closed_domain(prompts))
    all_ratings: list[Rating] = []
    halluc = {}
    for name, per_prompt in samples.items():
        ps = [prompts[i] for i, comps in enumerate(per_prompt) for _ in comps]
        cs = [c for comps in per_prompt for c in comps]
        ratings = judge.rate(ps, cs, source=name)
        all_ratings.extend(ratings)
        idx = [i for i, comps in enumerate(per_prompt) for _ in comps]
        halluc[name] = hallucination_rate([r for r, i in zip(ratings, idx, strict=True) if i in closed])
    return summarize_ratings(all_ratings), halluc


def human_ratings_summary(
    ratings: Sequence[Rating], prompts: Sequence[Prompt] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Likert/metadata per policy, closed-domain hallucination per policy) from people's ratings.

    ``ratings`` are the feedback service's rating export (``Rating.source`` names the policy).
    Hallucination counts ratings of closed-domain prompts: those of ``prompts`` whose category is
    closed-domain when the ids match, else every rating (labelers answer that question only for
    closed-domain tasks).
    """
    closed_ids = {p.id for p in prompts if p.category in CLOSED_DOMAIN_CATEGORIES}
    known = {p.id for p in prompts}
    by_source: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        if r.prompt_id in closed_ids or (r.prompt_id not in known):
            by_source[r.source or "unknown"].append(r)
    return summarize_ratings(ratings), {s: hallucination_rate(rs) for s, rs in sorted(by_source.items())}
