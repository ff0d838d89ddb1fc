"""Giving items to labelers: each item to N labelers (overlap), nobody twice, the load kept even.

Overlap is what makes inter-annotator agreement measurable (SPEC section 3). The database's
unique ``(item_id, labeler_id)`` constraint is the guarantee that no labeler gets an item twice;
this module only chooses *who*: for each item still short of N labelers, the eligible labelers
with the fewest open tasks, ties broken by a per-item hash so the pattern is deterministic but
not the same pairing everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback.models import Assignment, Campaign, Item, LabelerGroup, User


@dataclass
class AssignResult:
    created: int = 0
    per_labeler: dict[str, int] = field(default_factory=dict)
    short: list[dict[str, int]] = field(default_factory=list)  # items that could not reach the overlap


def eligible_labelers(
    s: Session, campaign: Campaign, groups: list[str] | None = None, usernames: list[str] | None = None
) -> list[User]:
    """Active labelers in ``groups``/``usernames`` (all when both are None).

    A campaign with ``screened_only`` takes only labelers whose screening passed; a screening
    campaign itself takes anyone (that is how they get screened).
    """
    q = select(User).where(User.role == "labeler", User.active.is_(True))
    if groups:
        q = q.join(LabelerGroup, User.group_id == LabelerGroup.id).where(LabelerGroup.name.in_(groups))
    if usernames:
        q = q.where(User.username.in_(usernames))
    if campaign.screened_only and not campaign.screening:
        q = q.where(User.qualified.is_(True))
    return list(s.scalars(q.order_by(User.id)))


def _tiebreak(item_id: int, user_id: int) -> str:
    return hashlib.sha1(f"{item_id}:{user_id}".encode()).hexdigest()


def assign(s: Session, campaign: Campaign, labelers: list[User], overlap: int) -> AssignResult:
    """Create assignments so every item of ``campaign`` has ``overlap`` labelers where possible."""
    result = AssignResult()
    if not labelers:
        return result
    ids = [u.id for u in labelers]
    names = {u.id: u.username for u in labelers}
    items = list(s.scalars(select(Item.id).where(Item.campaign_id == campaign.id).order_by(Item.id)))
    have: dict[int, set[int]] = {i: set() for i in items}
    for item_id, uid in s.execute(
        select(Assignment.item_id, Assignment.labeler_id)
        .join(Item, Item.id == Assignment.item_id)
        .where(Item.campaign_id == campaign.id)
    ):
        have[item_id].add(uid)
    load = dict.fromkeys(ids, 0)
    load.update(
        s.execute(
            select(Assignment.labeler_id, func.count())
            .where(Assignment.labeler_id.in_(ids), Assignment.status == "pending")
            .group_by(Assignment.labeler_id)
        ).all()
    )
    for item_id in items:
        need = overlap - len(have[item_id])
        if need <= 0:
            continue
        candidates = sorted((u for u in ids if u not in have[item_id]), key=lambda u: (load[u], _tiebreak(item_id, u)))
        for uid in candidates[:need]:
            s.add(Assignment(item_id=item_id, labeler_id=uid, status="pending"))
            load[uid] += 1
            result.created += 1
            result.per_labeler[names[uid]] = result.per_labeler.get(names[uid], 0) + 1
        if len(candidates) < need:
            result.short.append({"item_id": item_id, "missing": need - len(candidates)})
    return result
