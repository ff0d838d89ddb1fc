"""Creating accounts: the one place a user row and its API token are made (API, CLI and tests).

``alignloop feedback admin create`` calls :func:`create_user` directly against the database
because there is no admin yet to call the API with; everything later goes through the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback import auth
from alignloop.feedback.db import Database, check_schema
from alignloop.feedback.models import ApiToken, LabelerGroup, User

#: The names the API accepts (routes_people.UserIn), checked here too for the CLI: the same on every database.
USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


@dataclass
class NewUser:
    id: int
    username: str
    role: str
    group: str | None
    token: str | None  # shown once; only its hash is stored


def create_user(
    s: Session, username: str, role: str, password: str | None = None, group: str | None = None, token: bool = False
) -> NewUser:
    """Add a user in session ``s`` (the caller commits); AlignloopError if the name is taken or the group unknown."""
    if not USERNAME.fullmatch(username):
        raise AlignloopError(
            f"username: 1 to 64 letters, digits or _.@- characters, got {username[:64]!r}", "pick another name"
        )
    if role not in auth.ROLES:
        raise AlignloopError(f"role: must be admin or labeler, got {role!r}")
    if password is None and not token:
        raise AlignloopError("password: give a password or ask for a token, or the user cannot log in")
    if password is not None and len(password) < auth.MIN_PASSWORD:
        raise AlignloopError(
            f"password: at least {auth.MIN_PASSWORD} characters, got {len(password)}", "choose a longer password"
        )
    group_id = None
    if group is not None:
        group_id = s.scalar(select(LabelerGroup.id).where(LabelerGroup.name == group))
        if group_id is None:
            raise AlignloopError(f"group: no labeler group named {group!r}", "create it first (POST /api/admin/groups)")
    user = User(
        username=username,
        role=role,
        password_hash=auth.hash_password(password) if password else None,
        group_id=group_id,
        active=True,
    )
    s.add(user)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise AlignloopError(f"username: {username!r} is taken", "pick another name") from None
    plain = None
    if token:
        plain, digest = auth.new_api_token()
        s.add(ApiToken(user_id=user.id, token_hash=digest, name="created with user", revoked=False))
    return NewUser(user.id, username, role, group, plain)


def create_admin(database_url: str, username: str, password: str | None = None, token: bool = True) -> NewUser:
    """Make an admin straight in the database (the first admin); the database must be migrated."""
    db = Database(database_url, pool_size=1)
    try:
        check_schema(db)
        with db.write() as s:
            new = create_user(s, username, "admin", password, None, token)
            s.commit()
        return new
    finally:
        db.dispose()


def count_admins(database_url: str) -> int:
    """Active admins in a (migrated) database: ``serve`` warns when there is none to log in with."""
    from sqlalchemy import func

    db = Database(database_url, pool_size=1)
    try:
        with db.read() as s:
            return s.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.active)) or 0
    finally:
        db.dispose()
