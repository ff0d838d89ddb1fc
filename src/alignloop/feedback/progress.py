"""How far labelers are: pending / done / skipped counts, today's count, throughput and time on task.

Time on task is measured from the labels themselves, with no clock in the page: the gap between
a labeler's consecutive labels is the time they spent on the second one, unless it is longer than
:data:`BREAK_SECONDS` (then they were away, and that task's time is unknown). Labels per hour is
the number of timed labels over the summed timed gaps, so breaks do not dilute throughput.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback.models import Assignment, Item, Label, LabelerGroup, User

BREAK_SECONDS = 20 * 60


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _counts(s: Session, campaign_id: int | None, labeler_id: int | None = None) -> dict[int, dict[str, int]]:
    q = select(Assignment.labeler_id, Assignment.status, func.count())
    q = q.group_by(Assignment.labeler_id, Assignment.status)
    if campaign_id is not None:
        q = q.join(Item, Item.id == Assignment.item_id).where(Item.campaign_id == campaign_id)
    if labeler_id is not None:
        q = q.where(Assignment.labeler_id == labeler_id)
    out: dict[int, dict[str, int]] = defaultdict(lambda: {"pending": 0, "done": 0, "skipped": 0})
    for uid, status, n in s.execute(q):
        out[uid][status] = n
    return out


def _label_times(s: Session, campaign_id: int | None, labeler_id: int | None = None) -> dict[int, list[datetime]]:
    q = select(Label.labeler_id, Label.created_at).order_by(Label.labeler_id, Label.created_at)
    if campaign_id is not None:
        q = q.join(Item, Item.id == Label.item_id).where(Item.campaign_id == campaign_id)
    if labeler_id is not None:
        q = q.where(Label.labeler_id == labeler_id)
    out: dict[int, list[datetime]] = defaultdict(list)
    for uid, t in s.execute(q):
        out[uid].append(_utc(t))
    return out


def timing(times: list[datetime]) -> tuple[float | None, float | None]:
    """(labels per hour, median seconds on task) from one labeler's label times, oldest first."""
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    timed = [g for g in gaps if 0 <= g <= BREAK_SECONDS]
    if not timed:
        return None, None
    total = sum(timed)
    per_hour = 3600 * len(timed) / total if total > 0 else None
    return per_hour, statistics.median(timed)


def labeler_progress(s: Session, labeler_id: int, now: datetime | None = None) -> dict[str, int]:
    """One labeler's own counts for the task page: done, pending, skipped and labels given today (UTC)."""
    now = now or datetime.now(UTC)
    c = _counts(s, None, labeler_id)[labeler_id]
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = sum(1 for t in _label_times(s, None, labeler_id)[labeler_id] if t >= start)
    return {"done": c["done"], "pending": c["pending"], "skipped": c["skipped"], "today": today}


def progress_table(s: Session, campaign_id: int | None = None) -> list[dict[str, Any]]:
    """Per labeler (all labelers, or those with tasks in ``campaign_id``): counts, throughput, time on task."""
    counts = _counts(s, campaign_id)
    times = _label_times(s, campaign_id)
    q = select(User, LabelerGroup.name).outerjoin(LabelerGroup, User.group_id == LabelerGroup.id)
    q = q.where(User.role == "labeler").order_by(User.username)
    rows = []
    for u, group in s.execute(q):
        if campaign_id is not None and u.id not in counts:
            continue
        c = counts[u.id]
        per_hour, median = timing(times.get(u.id, []))
        total = c["pending"] + c["done"] + c["skipped"]
        rows.append(
            {
                "labeler": u.username,
                "group": group,
                "active": u.active,
                "qualified": u.qualified,
                "screening_score": u.screening_score,
                **c,
                "assigned": total,
                "share_done": (c["done"] + c["skipped"]) / total if total else None,
                "labels_per_hour": per_hour,
                "median_seconds": median,
                "last_label": times[u.id][-1].strftime("%Y-%m-%d %H:%M") if times.get(u.id) else None,
            }
        )
    return rows
