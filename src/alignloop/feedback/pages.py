"""Server-rendered pages: log in, the labeler's task list and task pages, the admin overview.

Jinja2 renders every page with autoescaping on, so model text (untrusted) reaches the browser
as text, never as markup; the page script (``static/label.js``) reads only our own data
attributes and writes with ``textContent``. The pages call the same JSON API as every other
client, authenticated by the session cookie plus the page's CSRF token.
"""

from __future__ import annotations

import hmac
from typing import Any

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from alignloop.data.records import METADATA_FLAGS
from alignloop.errors import AlignloopError
from alignloop.feedback import auth, progress
from alignloop.feedback.edge import Id
from alignloop.feedback.export import select_campaigns
from alignloop.feedback.models import Campaign, LabelerGroup, User
from alignloop.feedback.routes_admin import campaign_dict
from alignloop.feedback.routes_labeler import load_task, pending_tasks
from alignloop.feedback.throttle import throttled_login

router = APIRouter(include_in_schema=False)
ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("alignloop.feedback", "templates"),
    autoescape=True,  # model outputs are untrusted: everything interpolated is escaped
    undefined=jinja2.StrictUndefined,
)
LETTERS = "ABCDEFGHI"
FLAG_TEXT = {
    "fails_to_follow_instruction": "Fails to follow the instruction",
    "hallucination": "Makes up information (closed-domain hallucination)",
    "inappropriate_for_customer_assistant": "Inappropriate for a customer assistant",
    "denigrates_protected_class": "Denigrates a protected class",
    "sexual_content": "Sexual content",
    "violent_content": "Violent content",
    "harmful_advice": "Encourages or gives harmful advice",
    "expresses_opinion": "Expresses an opinion",
    "moral_judgment": "Expresses a moral judgment",
}
assert set(FLAG_TEXT) == set(METADATA_FLAGS)


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    user = ctx.get("user")
    ctx.setdefault("csrf", request.app.state.auth.csrf(user.session) if user else "")
    html = ENV.get_template(name).render(request=request, **ctx)
    return HTMLResponse(html, status_code=status)


def page_user(request: Request, role: str | None = None) -> auth.Principal | Response:
    """The logged-in user, or a redirect to the login page; a 403 page for the wrong role."""
    try:
        user = request.app.state.auth.authenticate(request)
    except HTTPException:
        return RedirectResponse("/login", status_code=303)
    if role is not None and user.role != role:
        return render(request, "error.html", 403, user=user, message=f"This page is for {role}s.")
    return user


@router.get("/")
def home(request: Request) -> Response:
    user = page_user(request)
    if isinstance(user, Response):
        return user
    return RedirectResponse("/admin" if user.role == "admin" else "/tasks", status_code=303)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", error=None, user=None)


@router.post("/login")
def login_form(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
    authn = request.app.state.auth
    try:
        user = throttled_login(request, username, lambda: authn.login_password(username, password))
    except HTTPException as err:  # 429: too many attempts
        resp = render(request, "login.html", err.status_code, error=f"{err.detail}.", user=None)
        resp.headers.update(err.headers or {})
        return resp
    if user is None:
        return render(request, "login.html", 401, error="Wrong username or password.", user=None)
    token = authn.issue(user.id)
    resp = RedirectResponse("/admin" if user.role == "admin" else "/tasks", status_code=303)
    resp.set_cookie(
        auth.SESSION_COOKIE,
        token,
        max_age=auth.SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    """The page's "Log out" form: it sends the CSRF token as a form field (a form cannot set headers)."""
    authn = request.app.state.auth
    try:
        user = authn.authenticate(request, check_csrf=False)
    except HTTPException:
        user = None
    if user is None or not hmac.compare_digest(csrf.encode(), authn.csrf(user.session).encode()):
        return RedirectResponse("/", status_code=303)
    if user.via_cookie:
        authn.end_session(user.session)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(auth.SESSION_COOKIE)
    return resp


@router.get("/tasks")
def tasks_page(request: Request) -> Response:
    user = page_user(request, "labeler")
    if not isinstance(user, auth.Principal):
        return user
    return render(
        request,
        "tasks.html",
        user=user,
        tasks=pending_tasks(request, user),
    )


@router.get("/tasks/next")
def next_task(request: Request) -> Response:
    user = page_user(request, "labeler")
    if not isinstance(user, auth.Principal):
        return user
    pending = pending_tasks(request, user, limit=1)
    return RedirectResponse(f"/tasks/{pending[0]['assignment_id']}" if pending else "/tasks", status_code=303)


@router.get("/tasks/{assignment_id}")
def task_page(assignment_id: Id, request: Request) -> Response:
    user = page_user(request, "labeler")
    if not isinstance(user, auth.Principal):
        return user
    try:
        task = load_task(request, user, assignment_id)
    except HTTPException as err:
        return render(request, "error.html", err.status_code, user=user, message=err.detail)
    with request.app.state.db.read() as s:
        mine = progress.labeler_progress(s, user.user_id)
    return render(
        request,
        "task.html",
        user=user,
        t=task,
        progress=mine,
        letters=LETTERS,
        flag_text=FLAG_TEXT,
    )


@router.get("/admin")
def admin_page(request: Request) -> Response:
    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        campaigns = [campaign_dict(s, c) for c in s.query(Campaign).order_by(Campaign.id)]
        users = s.query(User, LabelerGroup.name).outerjoin(LabelerGroup).order_by(User.id).all()
    return render(
        request,
        "admin.html",
        user=user,
        campaigns=campaigns,
        users=users,
        nav="overview",
    )


@router.get("/admin/campaigns/{campaign_id}")
def campaign_page(campaign_id: Id, request: Request) -> Response:
    from alignloop.feedback import analysis  # numpy/scipy on first use

    user = page_user(request, "admin")
    if not isinstance(user, auth.Principal):
        return user
    with request.app.state.db.read() as s:
        c = s.get(Campaign, campaign_id)
        if c is None:
            return render(request, "error.html", 404, user=user, message=f"No campaign {campaign_id}.")
        info = campaign_dict(s, c)
        agreement: dict[str, Any] | None
        ratings: dict[str, Any] | None = None
        note = ""
        try:  # with the screening bar, 2 labelers can be flagged too (the robust cut needs 3)
            agreement = analysis.campaign_agreement(s, c, request.app.state.config.screening_threshold)
        except AlignloopError as err:
            agreement, note = None, str(err)
        if c.task_type in analysis.RANKING_LIKE:
            try:
                ratings = analysis.campaign_ratings(s, select_campaigns(s, [str(c.id)]), n_bootstrap=100)
            except AlignloopError:
                ratings = None
    return render(
        request,
        "campaign.html",
        user=user,
        c=info,
        agreement=agreement,
        ratings=ratings,
        note=note,
        nav="agreement",
    )
