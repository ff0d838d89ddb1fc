"""Labeler API: see your assigned tasks, answer them, skip them. Nobody else's tasks are visible.

Submitting is the hot path of the service and its reliability core:

1. one write transaction claims the assignment (pending -> done, only if it is yours and still
   pending), checks the answer against the form, inserts the label, and commits before the
   response is sent: an acknowledged label survives a crash;
2. a malformed answer is a 422 naming the field; it is raised inside the transaction, which
   rolls back, so a rejected request changes nothing;
3. a retried submission (same assignment, same answer) is answered 200 with the original label
   instead of writing a second one; a *different* answer to a finished assignment is a 409.
   The claim's row lock and the unique ``labels.assignment_id`` make this hold under concurrent
   retries too. A client's ``Idempotency-Key`` header is stored with the label for auditing;
   the assignment itself is the idempotency key.
"""

from __future__ import annotations

import random
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from alignloop.data.records import METADATA_FLAGS
from alignloop.feedback import auth
from alignloop.feedback.edge import Id
from alignloop.feedback.forms import SKIP_REASONS, FormError, check_answer
from alignloop.feedback.models import Assignment, Campaign, Item, Label

router = APIRouter(prefix="/api")
MAX_TASKS = 10_000  # most tasks one listing returns


def campaign_settings(request: Request, campaign_id: int) -> dict[str, Any]:
    """A campaign's form settings; campaigns are immutable, so each worker caches them."""
    cache: dict[int, dict[str, Any]] = request.app.state.campaigns
    hit = cache.get(campaign_id)
    if hit is None:
        with request.app.state.db.read() as s:
            c = s.get(Campaign, campaign_id)
            assert c is not None
            hit = {
                "id": c.id,
                "name": c.name,
                "task_type": c.task_type,
                "guidelines": c.guidelines,
                "allow_ties": c.allow_ties,
                "rules": list(c.rules or []),
                "rate_completions": bool(c.rate_completions),
                "screening": bool(c.screening),
            }
        cache[campaign_id] = hit
    return hit


def display_order(assignment_id: int, k: int) -> list[int]:
    """The order completions are shown to this labeler: shuffled per assignment against position bias."""
    order = list(range(k))
    random.Random(assignment_id).shuffle(order)
    return order


def load_task(request: Request, user: auth.Principal, assignment_id: int) -> dict[str, Any]:
    """Everything a labeler needs to answer one assignment; 404 unless it is assigned to ``user``."""
    with request.app.state.db.read() as s:
        row = s.execute(
            select(Assignment, Item)
            .join(Item, Item.id == Assignment.item_id)
            .where(Assignment.id == assignment_id, Assignment.labeler_id == user.user_id)
        ).first()
        if row is None:
            raise HTTPException(404, f"no task {assignment_id} is assigned to you")
        a, item = row
        label = s.scalar(select(Label).where(Label.assignment_id == a.id))
    c = campaign_settings(request, item.campaign_id)
    return {
        "assignment_id": a.id,
        "status": a.status,
        "campaign": c["name"],
        "task_type": c["task_type"],
        "guidelines": c["guidelines"],
        "allow_ties": c["allow_ties"],
        "rules": c["rules"],
        "flags": list(METADATA_FLAGS) if c["task_type"] == "rating" or c["rate_completions"] else [],
        "rate_completions": c["rate_completions"],
        "skip_reasons": list(SKIP_REASONS),
        "prompt": item.prompt,
        "category": item.category,
        "completions": list(item.completions),
        "display_order": display_order(a.id, len(item.completions)),
        "label": None if label is None else {"payload": label.payload, "skip_reason": label.skip_reason},
    }


def pending_tasks(request: Request, user: auth.Principal, limit: int = 100) -> list[dict[str, Any]]:
    """A labeler's pending tasks: screening (gold) tasks first, so nobody labels real items unscreened,
    then the rest oldest first."""
    with request.app.state.db.read() as s:
        rows = s.execute(
            select(Assignment.id, Item.campaign_id, Item.prompt)
            .join(Item, Item.id == Assignment.item_id)
            .join(Campaign, Campaign.id == Item.campaign_id)
            .where(Assignment.labeler_id == user.user_id, Assignment.status == "pending")
            .order_by(Campaign.screening.desc(), Assignment.id)
            .limit(limit)
        ).all()
    out = []
    for aid, cid, prompt in rows:
        c = campaign_settings(request, cid)
        out.append({"assignment_id": aid, "campaign": c["name"], "task_type": c["task_type"], "prompt": prompt[:200]})
    return out


def item_form(request: Request, conn: Connection, item_id: int) -> tuple[dict[str, Any], int]:
    """(campaign settings, K) of an item."""
    campaign_id, completions = conn.execute(select(Item.campaign_id, Item.completions).where(Item.id == item_id)).one()
    return campaign_settings(request, campaign_id), len(completions)


# The two statements of the hot path, built once. CLAIM moves the assignment from pending to
# done/skipped only if it is this labeler's and still pending, and returns what checking the
# answer needs (the item, its campaign and K) in the same round trip.
_ITEM_OF_ASSIGNMENT = Item.id == Assignment.item_id
CLAIM = (
    update(Assignment)
    .where(Assignment.id == bindparam("aid"), Assignment.labeler_id == bindparam("uid"), Assignment.status == "pending")
    .values(status=bindparam("new_status"))
    .returning(
        Assignment.item_id,
        select(Item.campaign_id).where(_ITEM_OF_ASSIGNMENT).scalar_subquery(),
        select(func.json_array_length(Item.completions)).where(_ITEM_OF_ASSIGNMENT).scalar_subquery(),
    )
)
INSERT_LABEL = insert(Label).returning(Label.id)


def _checked(c: dict[str, Any], k: int, answer: dict[str, Any] | None, skip: str | None) -> dict[str, Any] | None:
    if skip is not None:
        return None
    try:
        return check_answer(c["task_type"], k, answer or {}, c["allow_ties"], c["rules"], c["rate_completions"])
    except FormError as err:
        raise HTTPException(422, str(err)) from None


def submit(
    request: Request,
    user: auth.Principal,
    assignment_id: int,
    answer: dict[str, Any] | None,
    skip: str | None,
    key: str | None,
) -> JSONResponse:
    """Store one answer (or a skip) for an assignment; see the module docstring for the guarantees.

    The hot path is two statements and a commit: claim the assignment (pending -> done, only if it
    is this labeler's and still pending), then insert the label. A malformed answer raises inside
    the transaction, which rolls the claim back.
    """
    db = request.app.state.db
    status = "skipped" if skip is not None else "done"
    try:
        with db.write_guard, db.write_engine.begin() as conn:  # commits on leaving the block, before responding
            claimed = conn.execute(CLAIM, {"aid": assignment_id, "uid": user.user_id, "new_status": status}).first()
            if claimed is not None:
                item_id, campaign_id, k = claimed
                payload = _checked(campaign_settings(request, campaign_id), k, answer, skip)
                row = {
                    "assignment_id": assignment_id,
                    "item_id": item_id,
                    "labeler_id": user.user_id,
                    "payload": payload,
                    "skip_reason": skip,
                    "idempotency_key": key,
                }
                label_id = conn.execute(INSERT_LABEL, row).scalar_one()
            created = claimed is not None
    except IntegrityError:  # cannot happen while the claim above holds; answered as a retry below
        created = False
    if created:
        return JSONResponse(_receipt(label_id, assignment_id, skip, duplicate=False), status_code=201)
    # Not pending: not this labeler's task, or answered before (a retry, or a second answer).
    with db.engine.connect() as conn:
        row = conn.execute(
            select(Assignment.item_id, Label.id, Label.payload, Label.skip_reason)
            .outerjoin(Label, Label.assignment_id == Assignment.id)
            .where(Assignment.id == assignment_id, Assignment.labeler_id == user.user_id)
        ).first()
        if row is None:
            raise HTTPException(404, f"no task {assignment_id} is assigned to you")
        c, k = item_form(request, conn, row[0])
    payload = _checked(c, k, answer, skip)
    if row[1] is not None and row[2] == payload and row[3] == skip:
        return JSONResponse(_receipt(row[1], assignment_id, skip, duplicate=True), status_code=200)
    raise HTTPException(409, f"task {assignment_id} was already answered with a different answer; labels are final")


def _receipt(label_id: int, assignment_id: int, skip: str | None, duplicate: bool) -> dict[str, Any]:
    status = "skipped" if skip is not None else "done"
    return {"label_id": label_id, "assignment_id": assignment_id, "status": status, "duplicate": duplicate}


@router.get("/tasks")
def list_tasks(
    request: Request,
    limit: int = Query(100, ge=1, le=MAX_TASKS),
    user: auth.Principal = Depends(auth.labeler),
) -> dict[str, Any]:
    """Your pending tasks, oldest first."""
    with request.app.state.db.read() as s:
        counts = dict(
            s.execute(
                select(Assignment.status, func.count())
                .where(Assignment.labeler_id == user.user_id)
                .group_by(Assignment.status)
            ).all()
        )
    return {"tasks": pending_tasks(request, user, limit), "counts": counts}


@router.get("/tasks/{assignment_id}")
def get_task(assignment_id: Id, request: Request, user: auth.Principal = Depends(auth.labeler)) -> dict[str, Any]:
    """One task with its guidelines, prompt and completions."""
    return load_task(request, user, assignment_id)


@router.post("/tasks/{assignment_id}/label")
def post_label(
    assignment_id: Id,
    request: Request,
    answer: dict[str, Any] = Body(..., description="The answer; its fields depend on the task type."),
    idempotency_key: str | None = Header(None, max_length=128),
    user: auth.Principal = Depends(auth.labeler),
) -> JSONResponse:
    """Answer a task. 201 = stored, 200 = this exact answer was already stored, 409 = a different one was."""
    return submit(request, user, assignment_id, answer, None, idempotency_key)


@router.post("/tasks/{assignment_id}/skip")
def post_skip(
    assignment_id: Id,
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"reason": "intent unclear"}]),
    idempotency_key: str | None = Header(None, max_length=128),
    user: auth.Principal = Depends(auth.labeler),
) -> JSONResponse:
    """Skip a task with a reason (for example "intent unclear"); the item is not labeled by you."""
    reason = body.get("reason")
    if set(body) - {"reason"}:
        raise HTTPException(422, f"{sorted(set(body) - {'reason'})[0]}: not part of a skip (expected reason)")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 256:
        raise HTTPException(422, f"reason: give a reason of 1 to 256 characters, for example {SKIP_REASONS[0]!r}")
    return submit(request, user, assignment_id, None, reason.strip(), idempotency_key)
