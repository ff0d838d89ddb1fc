"""Where labelers disagree: every item with two or more answers, scored by how much its labelers differ.

Two answers to a ranking-like item agree on a pair of completions when they order it the same way
(both tied counts as the same); their agreement is the share of the C(K,2) pairs they order alike,
the unit the paper's inter-annotator agreement counts. Thumbs agree when equal; Likert ratings by
``1 - |a - b| / 6``. An item's disagreement is one minus the mean agreement over its labeler
pairs; each answer also gets its own agreement with the item's other answers, so an admin can
sort by one labeler and read the items where that labeler stands apart.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback.forms import ranks_of
from alignloop.feedback.models import Campaign, Item, Label, User

RANKING_LIKE = ("ranking", "best_pick", "rule_violations")


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def answer_agreement(task_type: str, a: Any, b: Any) -> float:
    """Agreement in [0, 1] of two comparable answers (ranks, a thumb, or a Likert score)."""
    if task_type in RANKING_LIKE:
        pairs = list(combinations(range(len(a)), 2))
        same = sum(_sign(a[i] - a[j]) == _sign(b[i] - b[j]) for i, j in pairs)
        return same / len(pairs)
    if task_type == "rating":
        return 1.0 - abs(a - b) / 6.0
    return float(a == b)


def _comparable(task_type: str, payload: dict[str, Any], k: int) -> Any:
    if task_type in RANKING_LIKE:
        return ranks_of(task_type, payload, k)
    if task_type == "thumbs":
        return bool(payload["up"])
    if task_type == "rating":
        return int(payload["likert"])
    raise AlignloopError(f"a {task_type} campaign has free-text answers: there is no disagreement to score")


def describe(task_type: str, payload: dict[str, Any] | None, k: int) -> str:
    """A short, readable form of one answer: completions by number (#1 = the first uploaded), best first."""
    if payload is None:
        return ""
    if task_type in ("ranking", "rule_violations"):
        tied = {i for group in payload.get("ties", []) for i in group}
        ranks = ranks_of(task_type, payload, k) or []
        parts, prev = [], None
        for i in payload["order"]:
            sep = " = " if prev is not None and i in tied and ranks[i] == ranks[prev] else " > "
            parts.append(("" if prev is None else sep) + f"#{i + 1}")
            prev = i
        text = "".join(parts)
    elif task_type == "best_pick":
        text = f"best #{payload['best'] + 1}"
    elif task_type == "thumbs":
        text = "thumbs up" if payload["up"] else "thumbs down"
    elif task_type == "rating":
        flags = [f for f, on in payload.get("flags", {}).items() if on]
        text = f"Likert {payload['likert']}" + (f" ({', '.join(flags)})" if flags else "")
    else:
        text = (payload.get("text") or "")[:120]
    if payload.get("ratings"):
        text += "  ·  ratings " + " ".join(f"#{i + 1}:{r['likert']}" for i, r in enumerate(payload["ratings"]))
    return text


def disagreements(s: Session, campaign: Campaign, labeler: str | None = None) -> list[dict[str, Any]]:
    """Items with two or more answers, most disagreed first (or, with ``labeler``, the items where
    that labeler's answer agrees least with the others')."""
    rows = s.execute(
        select(Item.id, Item.prompt_id, Item.prompt, Item.completions, User.username, Label.payload)
        .join(Label, Label.item_id == Item.id)
        .join(User, User.id == Label.labeler_id)
        .where(Item.campaign_id == campaign.id, Label.payload.is_not(None))
        .order_by(Item.id, User.username)
    ).all()
    by_item: dict[int, dict[str, Any]] = {}
    for iid, pid, prompt, comps, name, payload in rows:
        entry = by_item.setdefault(iid, {"item_id": iid, "prompt_id": pid, "prompt": prompt, "k": len(comps), "a": []})
        entry["a"].append((name, payload, _comparable(campaign.task_type, payload, len(comps))))
    out = []
    for entry in by_item.values():
        answers = entry.pop("a")
        if len(answers) < 2:
            continue
        pair = {}
        for (na, _, va), (nb, _, vb) in combinations(answers, 2):
            pair[na, nb] = pair[nb, na] = answer_agreement(campaign.task_type, va, vb)
        per = []
        for name, payload, _ in answers:
            others = [pair[name, o] for o, _, _ in answers if o != name]
            per.append(
                {
                    "labeler": name,
                    "answer": describe(campaign.task_type, payload, entry["k"]),
                    "agreement": sum(others) / len(others),
                }
            )
        mean = sum(pair.values()) / len(pair)
        mine = next((p["agreement"] for p in per if p["labeler"] == labeler), None)
        if labeler is not None and mine is None:
            continue
        per.sort(key=lambda p: p["agreement"])
        out.append(entry | {"disagreement": 1.0 - mean, "answers": per, "labeler_agreement": mine})
    if labeler is not None:
        out.sort(key=lambda e: (e["labeler_agreement"], -e["disagreement"], e["item_id"]))
    else:
        out.sort(key=lambda e: (-e["disagreement"], e["item_id"]))
    return out
