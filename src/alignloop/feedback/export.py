"""From labels to the three datasets of the loop (SPEC section 2): SFT, RM and PPO.

* ``sft``: demonstrations -> :class:`~alignloop.data.records.Demonstration`;
* ``rm``: rankings, best-picks and rule-violation rankings -> :class:`~alignloop.data.records.Ranking`;
* ``ppo``: the prompts alone -> :class:`~alignloop.data.records.Prompt` (a prompt every labeler skipped is left out);
* ``thumbs``, ``ratings``, ``rule_violations``: the other forms' records, for evaluation.

Held-out labeler groups produce no training data (SPEC section 3), so their labels are left out
unless ``held_out="include"`` or ``"only"`` (the latter is what evaluation of generalisation uses).
Screening campaigns are gold-set tests, never training data, unless named explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.data.export import to_trl_preference, to_trl_prompt_completion
from alignloop.data.records import Prompt
from alignloop.feedback.edge import MAX_ID
from alignloop.feedback.forms import to_record
from alignloop.feedback.models import Campaign, Item, Label, LabelerGroup, User

DATASETS: dict[str, tuple[str, ...]] = {
    "sft": ("demonstration",),
    "rm": ("ranking", "best_pick", "rule_violations"),
    "ppo": tuple(),  # every form: prompts only
    "thumbs": ("thumbs",),
    "ratings": ("rating",),
    "rule_violations": ("rule_violations",),
}
FORMATS = ("alignloop", "trl")
HELD_OUT = ("exclude", "include", "only")


def select_campaigns(s: Session, names_or_ids: list[str] | None) -> list[Campaign]:
    """Campaigns named (by name or id), or every non-screening campaign when none is named."""
    if not names_or_ids:
        return list(s.scalars(select(Campaign).where(Campaign.screening.is_(False)).order_by(Campaign.id)))
    out = []
    for ref in names_or_ids:
        q = select(Campaign).where(Campaign.name == ref)
        is_id = ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) <= MAX_ID
        c = s.scalar(q) or (s.get(Campaign, int(ref)) if is_id else None)
        if c is None:
            raise LookupError(f"campaign: no campaign named {ref!r:.80}")
        out.append(c)
    return out


def _labels(s: Session, campaign: Campaign, held_out: str) -> Iterator[tuple[Item, Label, str]]:
    q = (
        select(Item, Label, User.username)
        .join(Label, Label.item_id == Item.id)
        .join(User, User.id == Label.labeler_id)
        .outerjoin(LabelerGroup, User.group_id == LabelerGroup.id)
        .where(Item.campaign_id == campaign.id)
        .order_by(Item.id, Label.id)
    )
    if held_out == "exclude":
        q = q.where((LabelerGroup.held_out.is_(False)) | (User.group_id.is_(None)))
    elif held_out == "only":
        q = q.where(LabelerGroup.held_out.is_(True))
    yield from s.execute(q)  # type: ignore[misc]


def export_records(s: Session, dataset: str, campaigns: list[Campaign], held_out: str = "exclude") -> list[Any]:
    """The records of ``dataset`` from the labels in ``campaigns``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out: must be one of {', '.join(HELD_OUT)}, got {held_out!r}")
    records: list[Any] = []
    if dataset == "ppo":
        seen: set[str] = set()
        for c in campaigns:
            answered: dict[int, bool] = {}
            items: dict[int, Item] = {}
            for item, label, _ in _labels(s, c, held_out):
                items[item.id] = item
                answered[item.id] = answered.get(item.id, False) or label.skip_reason is None
            for item in s.scalars(select(Item).where(Item.campaign_id == c.id).order_by(Item.id)):
                if item.prompt_id in seen or (item.id in answered and not answered[item.id]):
                    continue
                seen.add(item.prompt_id)
                records.append(Prompt(item.prompt_id, item.prompt, item.user_id, item.category, "feedback"))
        return records
    for c in campaigns:
        if c.task_type not in DATASETS[dataset]:
            continue
        for item, label, username in _labels(s, c, held_out):
            if label.payload is None:  # skipped
                continue
            rec = to_record(c.task_type, item, label.payload, username)
            if dataset == "rm" and c.task_type == "rule_violations":
                rec = rec.ranking()
            records.append(rec)
    return records


def to_rows(records: list[Any], dataset: str, fmt: str) -> list[dict[str, Any]]:
    """Plain rows: alignloop records as dicts, or TRL's columns (prompt/chosen/rejected, prompt/completion, prompt)."""
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "alignloop":
        return [dataclasses.asdict(r) for r in records]
    if dataset == "rm":
        return to_trl_preference(records)
    if dataset == "sft":
        return to_trl_prompt_completion(records)
    if dataset == "ppo":
        return [{"prompt": r.text} for r in records]
    raise ValueError(f"format: TRL has no column layout for the {dataset} dataset; use format=alignloop")
