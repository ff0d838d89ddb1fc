"""Admin API for people: labelers and admins, their API tokens, and labeler groups (some held out)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from alignloop.errors import AlignloopError
from alignloop.feedback import accounts, auth
from alignloop.feedback.edge import clip
from alignloop.feedback.models import ApiToken, Label, LabelerGroup, User

router = APIRouter(prefix="/api/admin", dependencies=[Depends(auth.admin)])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(Strict):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Literal["admin", "labeler"] = "labeler"
    password: str | None = Field(None, min_length=auth.MIN_PASSWORD, max_length=256)
    group: str | None = Field(None, max_length=64)
    token: bool = False  # also create an API token and return it once


class UserPatch(Strict):
    active: bool | None = None
    group: str | None = Field(None, max_length=64)
    qualified: bool | None = None
    password: str | None = Field(None, min_length=auth.MIN_PASSWORD, max_length=256)


class GroupIn(Strict):
    name: str = Field(min_length=1, max_length=64)
    held_out: bool = False


def group_id(s, name: str | None) -> int | None:
    if name is None:
        return None
    gid = s.scalar(select(LabelerGroup.id).where(LabelerGroup.name == name))
    if gid is None:
        raise HTTPException(422, f"group: no labeler group named {name!r}; create it with POST /api/admin/groups")
    return gid


@router.post("/users", status_code=201)
def create_user(body: UserIn, request: Request) -> dict[str, Any]:
    """Create an admin or a labeler with a password and/or an API token (returned once, stored hashed)."""
    with request.app.state.db.write() as s:
        try:
            new = accounts.create_user(s, body.username, body.role, body.password, body.group, body.token)
        except AlignloopError as err:
            raise HTTPException(409 if "taken" in err.message else 422, err.message) from None
        s.commit()
    out = {"id": new.id, "username": new.username, "role": new.role, "group": new.group}
    return out | ({"token": new.token} if new.token else {})


@router.get("/users")
def list_users(request: Request) -> list[dict[str, Any]]:
    with request.app.state.db.read() as s:
        done = dict(s.execute(select(Label.labeler_id, func.count()).group_by(Label.labeler_id)).all())
        rows = s.execute(select(User, LabelerGroup.name).outerjoin(LabelerGroup).order_by(User.id)).all()
        return [
            {
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "group": g,
                "active": u.active,
                "qualified": u.qualified,
                "screening_score": u.screening_score,
                "n_labels": done.get(u.id, 0),
            }
            for u, g in rows
        ]


@router.patch("/users/{username}")
def patch_user(username: str, body: UserPatch, request: Request) -> dict[str, Any]:
    with request.app.state.db.write() as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            raise HTTPException(404, f"no user {clip(username)!r}")
        fields = body.model_dump(exclude_unset=True)
        if "group" in fields:
            user.group_id = group_id(s, body.group)
        for name in ("active", "qualified"):
            if name in fields:
                setattr(user, name, fields[name])
        if body.password:
            user.password_hash = auth.hash_password(body.password)
        if body.password or fields.get("active") is False:
            auth.end_sessions(s, user.id)  # a new password or deactivation logs the user out everywhere, at once
        s.commit()
        request.app.state.auth.forget(user.id)
        return {"username": user.username, "active": user.active, "qualified": user.qualified}


@router.post("/users/{username}/tokens", status_code=201)
def create_token(username: str, request: Request) -> dict[str, str]:
    """A new API token for ``username`` (shown once; only its hash is kept)."""
    with request.app.state.db.write() as s:
        uid = s.scalar(select(User.id).where(User.username == username))
        if uid is None:
            raise HTTPException(404, f"no user {clip(username)!r}")
        token, digest = auth.new_api_token()
        s.add(ApiToken(user_id=uid, token_hash=digest, name="api", revoked=False))
        s.commit()
    return {"username": username, "token": token}


@router.post("/groups", status_code=201)
def create_group(body: GroupIn, request: Request) -> dict[str, Any]:
    """A labeler group; ``held_out`` groups produce no training data (their labels stay out of exports)."""
    with request.app.state.db.write() as s:
        g = LabelerGroup(name=body.name, held_out=body.held_out)
        s.add(g)
        try:
            s.commit()
        except IntegrityError:
            raise HTTPException(409, f"name: group {clip(body.name)!r} exists") from None
        return {"id": g.id, "name": g.name, "held_out": g.held_out}


@router.get("/groups")
def list_groups(request: Request) -> list[dict[str, Any]]:
    with request.app.state.db.read() as s:
        return [{"id": g.id, "name": g.name, "held_out": g.held_out} for g in s.scalars(select(LabelerGroup))]
