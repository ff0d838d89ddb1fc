"""The admin console: run campaigns from the browser instead of the CLI.

Pages (GET, server-rendered like the rest of the service): people with their progress, a new
campaign from an uploaded JSONL file, one campaign's management page (assignment, screening,
per-labeler progress, exports), the label browser and the disagreement view.

Actions (POST) are small form endpoints behind the ordinary admin dependency, so they need the
session cookie *and* the page's CSRF token in the ``X-CSRF-Token`` header; ``static/console.js``
sends the forms that way and shows the one-line answer in a live region. They answer JSON:
``{"message": ..., "location": ...}`` on success, ``{"detail": ...}`` naming the field on error.
Creating a campaign from a file is one transaction: the campaign, every item and (optionally)
the assignment are stored together or not at all.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from alignloop.errors import AlignloopError
from alignloop.feedback import accounts, auth, progress
from alignloop.feedback.assignment import assign, eligible_labelers
from alignloop.feedback.disagreement import describe, disagreements
from alignloop.feedback.export import export_records, select_campaigns, to_rows
from alignloop.feedback.forms import RATEABLE, TASK_TYPES
from alignloop.feedback.models import Assignment, Campaign, Item, Label, LabelerGroup, User
from alignloop.feedback.pages import page_user, render
from alignloop.feedback.routes_admin import CampaignIn, ItemIn, _checked_item, campaign_dict
from alignloop.feedback.routes_people import group_id

pages = APIRouter(prefix="/admin", include_in_schema=False)
actions = APIRouter(prefix="/admin/console", include_in_schema=False, dependencies=[Depends(auth.admin)])
DATASETS = ("rm", "sft", "ppo", "thumbs", "ratings", "rule_violations")
LABELS_PER_PAGE = 50


def _names(text: str) -> list[str]:
    """A comma- or space-separated list from a form field."""
    return [n for n in text.replace(",", " ").split() if n]


def _done(message: str, location: str | None = None) -> dict[str, Any]:
    return {"message": message, "location": location}


# ---- pages ---------------------------------------------------------------------------------------


@pages.get("/people")
def people_page(request: Request) -> Response:
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        rows = progress.progress_table(s)
        groups = list(s.scalars(select(LabelerGroup).order_by(LabelerGroup.name)))
        admins = list(s.scalars(select(User.username).where(User.role == "admin").order_by(User.username)))
    return render(request, "console_people.html", user=user, rows=rows, groups=groups, admins=admins, nav="people")


@pages.get("/campaigns/new")
def new_campaign_page(request: Request) -> Response:
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        groups = list(s.scalars(select(LabelerGroup.name).order_by(LabelerGroup.name)))
    return render(
        request, "console_new.html", user=user, task_types=list(TASK_TYPES), rateable=RATEABLE, groups=groups, nav="new"
    )


def _campaign_or_page(request: Request, campaign_id: int, user: auth.Principal, s) -> Campaign | Response:
    c = s.get(Campaign, campaign_id)
    if c is None:
        return render(request, "error.html", 404, user=user, message=f"No campaign {campaign_id}.")
    return c


@pages.get("/campaigns/{campaign_id}/manage")
def manage_page(campaign_id: int, request: Request) -> Response:
    from alignloop.feedback import analysis  # numpy/scipy on first use

    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        c = _campaign_or_page(request, campaign_id, user, s)
        if isinstance(c, Response):
            return c
        info = campaign_dict(s, c)
        rows = progress.progress_table(s, c.id)
        groups = list(s.scalars(select(LabelerGroup.name).order_by(LabelerGroup.name)))
        screening = None
        if c.screening:
            n_gold = s.scalar(
                select(func.count()).select_from(Item).where(Item.campaign_id == c.id, Item.gold.is_not(None))
            )
            gold_rows = []
            if n_gold:
                try:
                    gold_rows = analysis.campaign_agreement(s, c, request.app.state.config.screening_threshold)[
                        "labelers"
                    ]
                except AlignloopError:
                    gold_rows = []
            screening = {
                "n_gold": n_gold,
                "rows": gold_rows,
                "threshold": request.app.state.config.screening_threshold,
                "qualified": {r["labeler"]: r["qualified"] for r in rows},
            }
    return render(
        request, "console_campaign.html", user=user, c=info, rows=rows, groups=groups, screening=screening,
        datasets=DATASETS, nav="campaign",
    )  # fmt: skip


@pages.get("/campaigns/{campaign_id}/labels")
def labels_page(
    campaign_id: int, request: Request, labeler: str = "", status: str = "", page: int = 1, q: str = ""
) -> Response:
    """The label browser: every label of a campaign, newest first, filtered by labeler, status or prompt text."""
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    page = max(1, page)
    with request.app.state.db.read() as s:
        c = _campaign_or_page(request, campaign_id, user, s)
        if isinstance(c, Response):
            return c
        query = (
            select(Label, User.username, Item.prompt_id, Item.prompt, Item.completions)
            .join(User, User.id == Label.labeler_id)
            .join(Item, Item.id == Label.item_id)
            .where(Item.campaign_id == c.id)
        )
        if labeler:
            query = query.where(User.username == labeler)
        if status == "done":
            query = query.where(Label.payload.is_not(None))
        elif status == "skipped":
            query = query.where(Label.payload.is_(None))
        if q:
            query = query.where(Item.prompt.contains(q))
        total = s.scalar(select(func.count()).select_from(query.subquery()))
        found = s.execute(query.order_by(Label.id.desc()).offset((page - 1) * LABELS_PER_PAGE).limit(LABELS_PER_PAGE))
        labels = [
            {
                "id": lb.id,
                "labeler": name,
                "prompt_id": pid,
                "prompt": prompt,
                "answer": describe(c.task_type, lb.payload, len(comps)),
                "skip_reason": lb.skip_reason,
                "created_at": lb.created_at.isoformat(sep=" ", timespec="seconds"),
            }
            for lb, name, pid, prompt, comps in found
        ]
        labelers = list(
            s.scalars(
                select(User.username).join(Label, Label.labeler_id == User.id).join(Item, Item.id == Label.item_id)
                .where(Item.campaign_id == c.id).distinct().order_by(User.username)
            )
        )  # fmt: skip
        info = campaign_dict(s, c)
    pages_n = max(1, -(-total // LABELS_PER_PAGE))
    return render(
        request, "console_labels.html", user=user, c=info, labels=labels, labelers=labelers, total=total,
        page=page, pages=pages_n, f={"labeler": labeler, "status": status, "q": q}, nav="labels",
    )  # fmt: skip


@pages.get("/campaigns/{campaign_id}/disagreement")
def disagreement_page(campaign_id: int, request: Request, labeler: str = "") -> Response:
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        c = _campaign_or_page(request, campaign_id, user, s)
        if isinstance(c, Response):
            return c
        info = campaign_dict(s, c)
        note = ""
        try:
            items = disagreements(s, c, labeler or None)
        except AlignloopError as err:
            items, note = [], err.message
        labelers = sorted({a["labeler"] for it in disagreements_safe(s, c) for a in it["answers"]})
    return render(
        request, "console_disagreement.html", user=user, c=info, items=items, note=note, labeler=labeler,
        labelers=labelers, nav="disagreement",
    )  # fmt: skip


def disagreements_safe(s, c: Campaign) -> list[dict[str, Any]]:
    try:
        return disagreements(s, c)
    except AlignloopError:
        return []


@pages.get("/campaigns/{campaign_id}/export")
def export_file(
    campaign_id: int, request: Request, dataset: str = "rm", format: str = "alignloop", held_out: str = "exclude"
) -> Response:
    """The export as a file download (the same rows as ``GET /api/admin/export``)."""
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        c = _campaign_or_page(request, campaign_id, user, s)
        if isinstance(c, Response):
            return c
        try:
            rows = to_rows(export_records(s, dataset, select_campaigns(s, [str(c.id)]), held_out), dataset, format)
        except (LookupError, ValueError) as err:
            return render(request, "error.html", 422, user=user, message=str(err))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    name = f"{c.name}-{dataset}-{format}.jsonl".replace("/", "_").replace('"', "")
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Record-Count": str(len(rows))}
    return StreamingResponse(iter([body]), media_type="application/x-ndjson", headers=headers)


# ---- actions -------------------------------------------------------------------------------------


def parse_items(data: bytes, filename: str) -> list[tuple[int, ItemIn]]:
    """Items from an uploaded JSONL file; an error names the file, the line and the field."""
    from alignloop.cli.feedback import item_from_row  # one reading of a row: item, Prompt or Ranking record

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(422, f"{filename}: not UTF-8 text (expected JSON lines)") from None
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append((n, ItemIn(**item_from_row(row, f"{filename}:{n}"))))
        except json.JSONDecodeError as err:
            raise HTTPException(422, f"{filename}:{n}: invalid JSON ({err.msg})") from None
        except AlignloopError as err:
            raise HTTPException(422, err.message) from None
        except ValidationError as err:
            e = err.errors()[0]
            raise HTTPException(422, f"{filename}:{n}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if not items:
        raise HTTPException(
            422, f"{filename}: holds no items (one JSON object per line: prompt_id, prompt, completions)"
        )
    return items


@actions.post("/campaigns")
async def create_campaign(
    request: Request,
    file: UploadFile = File(...),
    name: str = Form(...),
    task_type: str = Form("ranking"),
    guidelines: str = Form(...),
    overlap: int = Form(1),
    allow_ties: bool = Form(False),
    rate_completions: bool = Form(False),
    screening: bool = Form(False),
    screened_only: bool = Form(False),
    assign_now: bool = Form(False),
    groups: str = Form(""),
) -> dict[str, Any]:
    """A campaign with every item of the uploaded file, and optionally its assignment, in one transaction."""
    try:
        body = CampaignIn(
            name=name.strip(), task_type=task_type, guidelines=guidelines, overlap=overlap, allow_ties=allow_ties,
            rules=[], screening=screening, screened_only=screened_only, rate_completions=rate_completions,
        )  # fmt: skip
    except ValidationError as err:
        e = err.errors()[0]
        raise HTTPException(422, f"{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if body.task_type == "rule_violations":
        raise HTTPException(422, "task_type: create rule_violations campaigns with `alignloop feedback push --rule`")
    if body.allow_ties and body.task_type != "ranking":
        raise HTTPException(422, f"allow_ties: only ranking forms have ties, not {body.task_type}")
    if body.rate_completions and body.task_type not in RATEABLE:
        raise HTTPException(422, f"rate_completions: only forms with several completions, not {body.task_type}")
    items = parse_items(await file.read(), file.filename or "upload")
    group_names = _names(groups)
    with request.app.state.db.write() as s:
        c = Campaign(**body.model_dump(exclude={"items"}))  # the file holds the items
        s.add(c)
        try:
            s.flush()
        except IntegrityError:
            raise HTTPException(409, f"name: a campaign named {body.name!r} exists") from None
        rows = []
        for i, (line, it) in enumerate(items):
            try:
                rows.append(_checked_item(c, i, it))
            except HTTPException as err:  # "items[i].field: ..." -> "FILE:LINE: field: ..."
                detail = str(err.detail).removeprefix(f"items[{i}].")
                raise HTTPException(err.status_code, f"{file.filename or 'upload'}:{line}: {detail}") from None
        unique = {r["key"]: r for r in rows}
        s.add_all(Item(**r) for r in unique.values())
        s.flush()
        message = f"campaign {c.name!r} created with {len(unique)} items"
        if assign_now:
            for g in group_names:
                group_id(s, g)
            labelers = eligible_labelers(s, c, group_names or None)
            n = len(labelers) if c.screening else c.overlap
            result = assign(s, c, labelers, n)
            if c.screening:
                c.overlap = max(c.overlap, n)
            message += f"; {result.created} tasks assigned to {len(result.per_labeler)} labelers"
            if result.short:
                message += f" ({len(result.short)} items short of labelers)"
        s.commit()
        return _done(message, f"/admin/campaigns/{c.id}/manage")


@actions.post("/users")
def create_labeler(
    request: Request,
    username: str = Form(...),
    password: str = Form(""),
    group: str = Form(""),
    role: str = Form("labeler"),
) -> dict[str, Any]:
    if not 8 <= len(password) <= 256:
        raise HTTPException(422, "password: give 8 to 256 characters (the labeler logs in with it)")
    with request.app.state.db.write() as s:
        try:
            new = accounts.create_user(s, username.strip(), role, password, group or None)
        except AlignloopError as err:
            raise HTTPException(409 if "taken" in err.message else 422, err.message) from None
        s.commit()
    return _done(
        f"{new.role} {new.username!r} created" + (f" in group {new.group!r}" if new.group else ""), "/admin/people"
    )


@actions.post("/groups")
def create_group(request: Request, name: str = Form(...), held_out: bool = Form(False)) -> dict[str, Any]:
    if not name.strip():
        raise HTTPException(422, "name: give the group a name")
    with request.app.state.db.write() as s:
        s.add(LabelerGroup(name=name.strip(), held_out=held_out))
        try:
            s.commit()
        except IntegrityError:
            raise HTTPException(409, f"name: group {name!r} exists") from None
    return _done(f"group {name.strip()!r} created" + (" (held out)" if held_out else ""), "/admin/people")


@actions.post("/users/{username}/group")
def move_labeler(username: str, request: Request, group: str = Form("")) -> dict[str, Any]:
    with request.app.state.db.write() as s:
        u = s.scalar(select(User).where(User.username == username))
        if u is None:
            raise HTTPException(404, f"no user {username!r}")
        u.group_id = group_id(s, group or None)
        s.commit()
    return _done(f"{username!r} is now in {group!r}" if group else f"{username!r} is in no group", "/admin/people")


def _campaign(s, campaign_id: int) -> Campaign:
    c = s.get(Campaign, campaign_id)
    if c is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    return c


@actions.post("/campaigns/{campaign_id}/assign")
def assign_form(
    campaign_id: int, request: Request, overlap: int = Form(0), groups: str = Form(""), labelers: str = Form("")
) -> dict[str, Any]:
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        gs, ls = _names(groups), _names(labelers)
        for g in gs:
            group_id(s, g)
        people = eligible_labelers(s, c, gs or None, ls or None)
        if ls and len(people) < len(set(ls)):
            known = {u.username for u in people}
            missing = sorted(set(ls) - known)
            raise HTTPException(422, f"labelers: {missing[0]!r} is not an eligible active labeler")
        n = len(people) if c.screening else (overlap if overlap > 0 else c.overlap)
        result = assign(s, c, people, n)
        if c.screening:
            c.overlap = max(c.overlap, n)
        s.commit()
    msg = f"assigned {result.created} tasks to {len(result.per_labeler)} labelers (overlap {n})"
    if result.short:
        msg += f"; {len(result.short)} items short of labelers"
    return _done(msg, f"/admin/campaigns/{campaign_id}/manage")


@actions.post("/campaigns/{campaign_id}/reassign")
def reassign_form(campaign_id: int, request: Request, labeler: str = Form(...), to: str = Form("")) -> dict[str, Any]:
    """Take a labeler's pending tasks of this campaign away and give them to others (labels already given stay)."""
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        uid = s.scalar(select(User.id).where(User.username == labeler))
        if uid is None:
            raise HTTPException(422, f"labeler: no user {labeler!r}")
        items = select(Item.id).where(Item.campaign_id == c.id)
        gone = s.execute(
            delete(Assignment).where(
                Assignment.labeler_id == uid, Assignment.status == "pending", Assignment.item_id.in_(items)
            )
        ).rowcount
        people = [u for u in eligible_labelers(s, c, None, _names(to) or None) if u.id != uid]
        n = len(people) if c.screening else c.overlap
        result = assign(s, c, people, n)
        s.commit()
    msg = f"took {gone} pending tasks from {labeler!r}; "
    msg += f"assigned {result.created} tasks to {len(result.per_labeler)} others"
    if result.short:
        msg += f"; {len(result.short)} items short of labelers"
    return _done(msg, f"/admin/campaigns/{campaign_id}/manage")


@actions.post("/campaigns/{campaign_id}/screen")
def screen_form(campaign_id: int, request: Request, threshold: str = Form("")) -> dict[str, Any]:
    from alignloop.feedback import analysis

    try:
        bar = float(threshold) if threshold.strip() else request.app.state.config.screening_threshold
    except ValueError:
        raise HTTPException(422, f"threshold: a number from 0 to 1, got {threshold!r}") from None
    if not 0 <= bar <= 1:
        raise HTTPException(422, f"threshold: a number from 0 to 1, got {bar}")
    with request.app.state.db.write() as s:
        c = _campaign(s, campaign_id)
        try:
            rows = analysis.screen(s, c, bar)
        except AlignloopError as err:
            raise HTTPException(422, err.message) from None
        s.commit()
    passed = sum(r["qualified"] for r in rows)
    return _done(
        f"screened {len(rows)} labelers at {bar:.2f}: {passed} qualified", f"/admin/campaigns/{campaign_id}/manage"
    )
