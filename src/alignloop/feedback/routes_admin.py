"""Admin (researcher) API for campaigns: items, gold labels, assignment, screening, statistics, export.

Every route here requires the admin role. Request bodies are strict (unknown keys are a 422),
uploads are all-or-nothing, and re-uploading the same items is harmless: an item's key (by
default a hash of its prompt id, prompt and completions) is unique within its campaign.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from alignloop.data.records import CATEGORIES, stable_id
from alignloop.errors import AlignloopError
from alignloop.feedback import auth
from alignloop.feedback.assignment import assign, eligible_labelers
from alignloop.feedback.edge import Id, clip
from alignloop.feedback.export import export_records, select_campaigns, to_rows
from alignloop.feedback.forms import MAX_TEXT, RATEABLE, TASK_TYPES, FormError, check_answer, check_item
from alignloop.feedback.models import Assignment, Campaign, Item, Label, User
from alignloop.feedback.routes_people import Strict, group_id

router = APIRouter(prefix="/api/admin", dependencies=[Depends(auth.admin)])


# Every string is bounded here, so SQLite (which ignores VARCHAR lengths) and PostgreSQL (which
# enforces them) accept exactly the same values, and a page never carries more than the form needs.
MAX_K = max(hi for _, hi in TASK_TYPES.values())
Name = Annotated[str, Field(min_length=1, max_length=64)]
Completion = Annotated[str, Field(max_length=MAX_TEXT)]
Rule = Annotated[str, Field(min_length=1, max_length=200)]


class ItemIn(Strict):
    prompt_id: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=50_000)
    completions: list[Completion] = Field(default_factory=list, max_length=MAX_K)
    sources: list[Annotated[str, Field(max_length=128)]] | None = Field(None, max_length=MAX_K)
    category: str = Field("other", max_length=32)
    user_id: str = Field("", max_length=128)
    key: str | None = Field(None, max_length=64)
    gold: dict[str, Any] | None = None


class CampaignIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    task_type: Literal["demonstration", "ranking", "best_pick", "thumbs", "rating", "rule_violations"]
    guidelines: str = Field(min_length=1, max_length=20_000)
    overlap: int | None = Field(None, ge=1, le=50)  # labelers per item; default: FeedbackConfig.overlap
    allow_ties: bool = False
    rules: list[Rule] = Field(default_factory=list, max_length=100)
    screening: bool = False
    screened_only: bool = False
    # Items to store with the campaign in the same transaction: a push is all or nothing.
    items: list[ItemIn] | None = Field(None, max_length=10_000)
    rate_completions: bool = False  # ranking-like forms: Likert + flags for every completion first


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=10_000)


class AssignIn(Strict):
    overlap: int | None = Field(None, ge=1, le=50)
    groups: list[Name] | None = Field(None, max_length=1000)
    labelers: list[Name] | None = Field(None, max_length=1000)


class ScreenIn(Strict):
    threshold: float | None = Field(None, ge=0, le=1)


def _campaign(s, campaign_id: int) -> Campaign:
    c = s.get(Campaign, campaign_id)
    if c is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    return c


def campaign_dict(s, c: Campaign) -> dict[str, Any]:
    status = dict(
        s.execute(
            select(Assignment.status, func.count())
            .join(Item, Item.id == Assignment.item_id)
            .where(Item.campaign_id == c.id)
            .group_by(Assignment.status)
        ).all()
    )
    n_items = s.scalar(select(func.count()).select_from(Item).where(Item.campaign_id == c.id))
    keys = ("id", "name", "task_type", "guidelines", "overlap", "allow_ties", "rules", "screening", "screened_only")
    keys += ("rate_completions",)
    return {k: getattr(c, k) for k in keys} | {"n_items": n_items, "assignments": status}


@router.post("/campaigns", status_code=201)
def create_campaign(body: CampaignIn, request: Request) -> dict[str, Any]:
    """A campaign of one feedback form; its settings are fixed once created.

    With ``items`` the campaign and its items are stored in one transaction: a push whose items do
    not fit the form is refused whole (422) and leaves no empty campaign behind.
    """
    if body.task_type == "rule_violations" and not body.rules:
        raise HTTPException(422, "rules: a rule_violations campaign needs the list of written rules")
    if body.allow_ties and body.task_type not in ("ranking", "rule_violations"):
        raise HTTPException(422, f"allow_ties: only ranking forms have ties, not {body.task_type}")
    if body.rate_completions and body.task_type not in RATEABLE:
        raise HTTPException(422, f"rate_completions: only forms with several completions, not {body.task_type}")
    with request.app.state.db.write() as s:
        fields = body.model_dump(exclude={"items"})
        fields["overlap"] = body.overlap or request.app.state.config.overlap
        c = Campaign(**fields)
        s.add(c)
        try:
            s.flush()
        except IntegrityError:
            raise HTTPException(409, f"name: a campaign named {clip(body.name)!r} exists") from None
        added: dict[str, Any] = {}
        if body.items:
            created, ids = _add_items(s, c, body.items)  # a 422 here rolls the campaign back too
            added = {"created": created, "existing": len(ids) - created, "item_ids": ids}
        try:
            s.commit()
        except IntegrityError:
            raise HTTPException(409, f"name: a campaign named {clip(body.name)!r} exists") from None
        return campaign_dict(s, c) | added


@router.get("/campaigns")
def list_campaigns(request: Request) -> list[dict[str, Any]]:
    with request.app.state.db.read() as s:
        return [campaign_dict(s, c) for c in s.scalars(select(Campaign).order_by(Campaign.id))]


@router.get("/campaigns/{campaign_id}")
def get_campaign(campaign_id: Id, request: Request) -> dict[str, Any]:
    with request.app.state.db.read() as s:
        return campaign_dict(s, _campaign(s, campaign_id))


def _checked_item(c: Campaign, n: int, it: ItemIn) -> dict[str, Any]:
    try:
        check_item(c.task_type, it.completions, it.sources)
        if it.category not in CATEGORIES:
            raise FormError(f"category: must be one of {', '.join(CATEGORIES)}, got {it.category!r}")
        gold = None
        if it.gold is not None:
            gold = check_answer(c.task_type, len(it.completions), it.gold, c.allow_ties, list(c.rules))
    except FormError as err:
        raise HTTPException(422, f"items[{n}].{err}") from None
    key = it.key or stable_id(it.prompt_id, it.prompt, *it.completions)
    return it.model_dump(exclude={"key", "gold"}) | {"key": key, "gold": gold, "campaign_id": c.id}


@router.post("/campaigns/{campaign_id}/items", status_code=201)
def upload_items(campaign_id: Id, body: ItemsIn, request: Request) -> dict[str, Any]:
    """Upload prompts with their model completions; all are checked before any is stored."""
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        created, ids = _add_items(s, c, body.items)
        try:
            s.commit()
        except IntegrityError:
            raise HTTPException(409, "items: a concurrent upload added the same items; retry") from None
    return {"created": created, "existing": len(ids) - created, "item_ids": ids}


def _add_items(s, c: Campaign, items: list[ItemIn]) -> tuple[int, list[int]]:
    """Check every item, then add the new ones to ``s``: (number created, item id of each input in order)."""
    rows = [_checked_item(c, n, it) for n, it in enumerate(items)]
    existing = dict(s.execute(select(Item.key, Item.id).where(Item.campaign_id == c.id)).all())
    new: dict[str, Item] = {}
    for r in rows:
        if r["key"] not in existing and r["key"] not in new:
            new[r["key"]] = Item(**r)
    s.add_all(new.values())
    try:
        s.flush()
    except IntegrityError:
        raise HTTPException(409, "items: a concurrent upload added the same items; retry") from None
    return len(new), [existing[r["key"]] if r["key"] in existing else new[r["key"]].id for r in rows]


@router.put("/items/{item_id}/gold")
def set_gold(item_id: Id, answer: dict[str, Any], request: Request) -> dict[str, Any]:
    """An admin's (gold) answer to an item, used to screen labelers."""
    with request.app.state.db.write() as s:
        item = s.get(Item, item_id)
        if item is None:
            raise HTTPException(404, f"no item {item_id}")
        c = _campaign(s, item.campaign_id)
        try:
            item.gold = check_answer(c.task_type, len(item.completions), answer, c.allow_ties, list(c.rules))
        except FormError as err:
            raise HTTPException(422, str(err)) from None
        s.commit()
        return {"item_id": item_id, "gold": item.gold}


@router.post("/campaigns/{campaign_id}/assign")
def assign_campaign(campaign_id: Id, body: AssignIn, request: Request) -> dict[str, Any]:
    """Give each item to ``overlap`` labelers (default: the campaign's), never the same labeler twice.

    A screening campaign goes to every eligible labeler (each must label the whole gold set).
    """
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        for g in body.groups or []:
            group_id(s, g)
        labelers = eligible_labelers(s, c, body.groups, body.labelers)
        overlap = len(labelers) if c.screening else (body.overlap or c.overlap)
        result = assign(s, c, labelers, overlap)
        if c.screening:  # every labeler labels the whole gold set: record the overlap it really has
            c.overlap = max(c.overlap, overlap)
        s.commit()
    return {
        "created": result.created,
        "overlap": overlap,
        "eligible_labelers": len(labelers),
        "per_labeler": result.per_labeler,
        "short": result.short,
    }


@router.get("/campaigns/{campaign_id}/labels")
def list_labels(campaign_id: Id, request: Request) -> list[dict[str, Any]]:
    """Every label of a campaign with its labeler and item (skips included)."""
    with request.app.state.db.read() as s:
        _campaign(s, campaign_id)
        rows = s.execute(
            select(Label, User.username, Item.prompt_id)
            .join(User, User.id == Label.labeler_id)
            .join(Item, Item.id == Label.item_id)
            .where(Item.campaign_id == campaign_id)
            .order_by(Label.id)
        )
        return [
            {
                "label_id": lb.id,
                "assignment_id": lb.assignment_id,
                "item_id": lb.item_id,
                "prompt_id": pid,
                "labeler": name,
                "payload": lb.payload,
                "skip_reason": lb.skip_reason,
                "created_at": lb.created_at.isoformat(),
            }
            for lb, name, pid in rows
        ]


@router.post("/campaigns/{campaign_id}/screen")
def screen_campaign(campaign_id: Id, body: ScreenIn, request: Request) -> dict[str, Any]:
    """Score labelers against the gold set; those at or above the threshold qualify for real tasks."""
    from alignloop.feedback import analysis  # numpy/scipy: imported on first use, so workers start fast

    threshold = body.threshold if body.threshold is not None else request.app.state.config.screening_threshold
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        try:
            rows = analysis.screen(s, c, threshold)
        except AlignloopError as err:
            raise HTTPException(422, str(err)) from None
        s.commit()
    return {"threshold": threshold, "labelers": rows}


@router.get("/campaigns/{campaign_id}/agreement")
def agreement(campaign_id: Id, request: Request, threshold: float | None = Query(None, ge=0, le=1)) -> dict:
    """Inter-annotator agreement and the per-labeler table (outliers flagged)."""
    from alignloop.feedback import analysis

    with request.app.state.db.read() as s:
        c = _campaign(s, campaign_id)
        try:
            return analysis.campaign_agreement(s, c, threshold)
        except AlignloopError as err:
            raise HTTPException(422, str(err)) from None


@router.get("/ratings")
def policy_ratings(
    request: Request,
    campaign: list[Annotated[str, Field(max_length=128)]] | None = Query(None, max_length=100),
    bootstrap: int = Query(200, ge=0, le=5000),
    seed: int = Query(0, ge=0, le=2**32 - 1),
) -> dict[str, Any]:
    """Elo and Bradley-Terry ratings of the policies behind the completions, with bootstrap intervals."""
    from alignloop.feedback import analysis

    with request.app.state.db.read() as s:
        try:
            return analysis.campaign_ratings(s, select_campaigns(s, campaign), bootstrap, seed)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        except AlignloopError as err:
            raise HTTPException(422, str(err)) from None


@router.get("/export")
def export(
    request: Request,
    dataset: Literal["sft", "rm", "ppo", "thumbs", "ratings", "rule_violations"] = "rm",
    format: Literal["alignloop", "trl"] = "alignloop",
    campaign: list[Annotated[str, Field(max_length=128)]] | None = Query(None, max_length=100),
    held_out: Literal["exclude", "include", "only"] = "exclude",
) -> StreamingResponse:
    """A dataset as JSON lines: alignloop records (read_jsonl works) or TRL's columns."""
    with request.app.state.db.read() as s:
        try:
            rows = to_rows(export_records(s, dataset, select_campaigns(s, campaign), held_out), dataset, format)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
    # The edge keeps unencodable text out; "replace" still lets rows stored before it existed export.
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8", "replace")
    headers = {"X-Record-Count": str(len(rows))}
    return StreamingResponse(iter([body]), media_type="application/x-ndjson", headers=headers)
