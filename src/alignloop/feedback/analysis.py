"""Agreement, screening and policy ratings for a campaign, computed by :mod:`alignloop.stats`.

This module only turns stored labels into the plain inputs the statistics take; the figures
themselves (pairwise agreement, kappas, alpha, the per-labeler outlier table, Elo and
Bradley-Terry leaderboards) have one implementation in ``alignloop.stats``, shared with the
evaluation.

A ranking-like label (ranking, best-pick, rule-violation ranking) becomes the ranks of its
completions, so two labelers are compared pair of completions by pair of completions, as the
paper's agreement figure is. For the chance-corrected coefficients each such pair is a unit whose
value says whether the lower-numbered completion won.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback.export import export_records
from alignloop.feedback.forms import ranks_of
from alignloop.feedback.models import Campaign, Item, Label, User
from alignloop.stats import agreement as ag
from alignloop.stats import ratings

RANKING_LIKE = ("ranking", "best_pick", "rule_violations")


def _value(task_type: str, payload: dict[str, Any], k: int) -> Any:
    """The comparable value of one label: ranks for ranking-like forms, else the category."""
    if task_type in RANKING_LIKE:
        return ranks_of(task_type, payload, k)
    if task_type == "thumbs":
        return "up" if payload["up"] else "down"
    if task_type == "rating":
        return payload["likert"]
    raise AlignloopError(
        f"a {task_type} campaign has no labels to agree on (free text)", "use a ranking or rating campaign"
    )


def label_triples(s: Session, campaign: Campaign) -> list[tuple[int, str, Any]]:
    """(item_id, labeler, value) for every answered (not skipped) label of ``campaign``."""
    rows = s.execute(
        select(Label.item_id, User.username, Label.payload, Item.completions)
        .join(User, User.id == Label.labeler_id)
        .join(Item, Item.id == Label.item_id)
        .where(Item.campaign_id == campaign.id, Label.payload.is_not(None))
        .order_by(Label.id)
    )
    return [(iid, name, _value(campaign.task_type, p, len(c))) for iid, name, p, c in rows]


def gold_triples(s: Session, campaign: Campaign) -> list[tuple[int, str, Any]]:
    rows = s.execute(
        select(Item.id, Item.gold, Item.completions).where(Item.campaign_id == campaign.id, Item.gold.is_not(None))
    )
    return [(iid, "gold", _value(campaign.task_type, g, len(c))) for iid, g, c in rows]


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _unit_triples(triples: list[tuple[int, str, Any]], ranking_like: bool) -> list[tuple[Hashable, str, Any]]:
    """One categorical value per unit: for rankings, per completion pair, "did the lower index win"."""
    if not ranking_like:
        return list(triples)
    j = ag.judgments(triples)
    out = []
    for labeler, units in j.by_labeler.items():
        for unit, winner in units.items():
            _, pair = unit
            out.append((unit, labeler, int(winner == min(pair))))
    return out


def _cohen_pairs(units: list[tuple[Hashable, str, Any]]) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of labelers with at least two shared units."""
    by: dict[str, dict[Hashable, Any]] = {}
    for unit, labeler, value in units:
        by.setdefault(labeler, {})[unit] = value
    names = sorted(by)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = [u for u in by[a] if u in by[b]]
            if len(shared) < 2:
                continue
            k = ag.cohens_kappa([by[a][u] for u in shared], [by[b][u] for u in shared])
            out.append({"labeler_a": a, "labeler_b": b, "n": len(shared), "kappa": _finite(k.kappa)})
    return out


def campaign_agreement(s: Session, campaign: Campaign, threshold: float | None = None) -> dict[str, Any]:
    """Every agreement figure of one campaign plus the per-labeler table with outliers."""
    if campaign.task_type == "demonstration":
        raise AlignloopError(
            "a demonstration campaign has no labels to agree on (free text)", "use a ranking or rating campaign"
        )
    triples = label_triples(s, campaign)
    ranking_like = campaign.task_type in RANKING_LIKE
    gold = gold_triples(s, campaign)
    out: dict[str, Any] = {"campaign": campaign.name, "task_type": campaign.task_type, "n_labels": len(triples)}
    try:
        rate = ag.pairwise_agreement(triples)
        out["pairwise_agreement"] = {
            "rate": rate.rate,
            "stderr": _finite(rate.stderr),
            "n_judgments": rate.n_judgments,
            "n_items": rate.n_items,
        }
    except AlignloopError as err:
        out["pairwise_agreement"] = None
        out["note"] = err.message
    units = _unit_triples(triples, ranking_like)
    coefficients: dict[str, Any] = {}
    if out["pairwise_agreement"] is not None:
        cohen = _cohen_pairs(units)
        kappas = [c["kappa"] for c in cohen if c["kappa"] is not None]
        coefficients["cohen_kappa_mean"] = sum(kappas) / len(kappas) if kappas else None
        coefficients["cohen_kappa_pairs"] = cohen
        coefficients["fleiss_kappa"] = _finite(ag.fleiss_kappa(units).kappa)
        level = "ordinal" if campaign.task_type == "rating" else "nominal"
        coefficients["krippendorff_alpha"] = _finite(ag.krippendorff_alpha(units, level).alpha)
        coefficients["krippendorff_level"] = level
    out.update(coefficients)
    rows = ag.labeler_agreement(triples, gold or None, threshold=threshold) if triples else []
    out["labelers"] = [
        {
            "labeler": r.labeler_id,
            "n_shared": r.n_units,
            "consensus_agreement": _finite(r.consensus_agreement),
            "n_gold": r.n_gold,
            "gold_agreement": _finite(r.gold_agreement),
            "outlier": r.outlier,
            "reason": r.reason,
        }
        for r in rows
    ]
    return out


def screen(s: Session, campaign: Campaign, threshold: float) -> list[dict[str, Any]]:
    """Score every labeler of a screening campaign against the admins' gold labels and set who qualifies.

    A labeler qualifies when their agreement with gold is at least ``threshold``; the result is
    stored on the user (``qualified``, ``screening_score``) and decides who gets real tasks in
    campaigns created with ``screened_only``.
    """
    if not campaign.screening:
        raise AlignloopError(f"campaign {campaign.name!r} is not a screening campaign", "create one: screening=true")
    gold = gold_triples(s, campaign)
    if not gold:
        raise AlignloopError(f"screening campaign {campaign.name!r} has no gold labels", "PUT /api/admin/items/ID/gold")
    rows = ag.labeler_agreement(label_triples(s, campaign), gold, threshold=threshold)
    out = []
    for r in rows:
        score = _finite(r.gold_agreement)
        ok = score is not None and score >= threshold
        s.execute(update(User).where(User.username == r.labeler_id).values(qualified=ok, screening_score=score))
        out.append({"labeler": r.labeler_id, "gold_agreement": score, "n_gold": r.n_gold, "qualified": ok})
    return out


def campaign_ratings(s: Session, campaigns: list[Campaign], n_bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Elo and Bradley-Terry leaderboards of the policies behind the completions (needs ``sources``)."""
    rankings = export_records(s, "rm", campaigns, held_out="include")
    battles = ratings.battles_from_rankings(rankings)
    if not battles:
        raise AlignloopError(
            "no pairwise judgments between two different policies in these campaigns",
            "upload items with 'sources' naming the policy behind each completion",
        )
    out: dict[str, Any] = {"n_battles": len(battles)}
    for method in ("bradley_terry", "elo"):
        rows = ratings.leaderboard(battles, method, n_bootstrap=n_bootstrap, seed=seed)
        out[method] = [
            {
                "rank": r.rank,
                "policy": r.model,
                "rating": r.rating,
                "ci_low": _finite(r.ci_low),
                "ci_high": _finite(r.ci_high),
                "n_battles": r.n_battles,
                "wins": r.wins,
                "losses": r.losses,
                "ties": r.ties,
                "win_rate": r.win_rate,
            }
            for r in rows
        ]
    return out
