"""Who is asking: password and API-token login, signed session tokens, role checks.

Passwords are hashed with scrypt (stdlib, memory-hard). Logging in yields a *session token*:
``user_id.role.expiry`` signed with HMAC-SHA256 under a per-database key, sent back as a bearer
token or an HttpOnly cookie. Checking it costs no database query, which keeps the labeling hot
path lean; a per-process cache of user state (refreshed every few seconds) still locks out a
deactivated user quickly. Long-lived API tokens are random and stored as their SHA-256.

Cookie-authenticated requests that change state must carry the ``X-CSRF-Token`` header that the
page embeds; a bearer token cannot be sent by a foreign site, so it needs none.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import select

from alignloop.feedback.db import Database
from alignloop.feedback.models import ApiToken, LabelerGroup, User

SESSION_COOKIE = "alignloop_session"
SESSION_SECONDS = 12 * 3600
USER_CACHE_SECONDS = 5.0
ROLES = ("admin", "labeler")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, n, r, p, salt, digest = stored.split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))


def new_api_token() -> tuple[str, str]:
    """A fresh API token and the hash to store."""
    token = "alk_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: int
    username: str
    role: str
    group: str | None
    via_cookie: bool = False
    session: str = ""


class Authenticator:
    """Signs and checks session tokens for one database and caches user state per process."""

    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self.key = key
        self.cache_seconds = USER_CACHE_SECONDS
        self._users: dict[int, tuple[float, Principal | None]] = {}
        self._tokens: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    # -- session tokens -------------------------------------------------------------------------
    def _sign(self, body: str) -> str:
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, user_id: int, role: str, seconds: int = SESSION_SECONDS) -> str:
        body = f"{user_id}.{role}.{int(time.time()) + seconds}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str) -> int | None:
        """The user id of a valid, unexpired session token, else None."""
        body, _, sig = token.rpartition(".")
        if not body or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return None
        uid, _role, exp = body.split(".")
        if int(exp) < time.time():
            return None
        return int(uid)

    def csrf(self, session: str) -> str:
        return self._sign("csrf:" + session)[:32]

    # -- users and API tokens -----------------------------------------------------------------
    def principal(self, user_id: int) -> Principal | None:
        """Current state of an active user (cached for a few seconds), or None if gone/deactivated."""
        now = time.monotonic()
        hit = self._users.get(user_id)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        with self.db.read() as s:
            row = s.execute(
                select(User.id, User.username, User.role, User.active, LabelerGroup.name)
                .outerjoin(LabelerGroup, User.group_id == LabelerGroup.id)
                .where(User.id == user_id)
            ).first()
        p = Principal(row.id, row.username, row.role, row.name) if row and row.active else None
        with self._lock:
            self._users[user_id] = (now, p)
        return p

    def api_token_user(self, token: str) -> int | None:
        now = time.monotonic()
        h = token_hash(token)
        hit = self._tokens.get(h)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        with self.db.read() as s:
            uid = s.scalar(select(ApiToken.user_id).where(ApiToken.token_hash == h, ApiToken.revoked.is_(False)))
        with self._lock:
            self._tokens[h] = (now, uid)
        return uid

    def login_password(self, username: str, password: str) -> User | None:
        with self.db.read() as s:
            user = s.scalar(select(User).where(User.username == username))
        if user is None or not user.active:
            check_password(password, _dummy_hash())  # the same scrypt cost whether or not the user exists
            return None
        return user if check_password(password, user.password_hash) else None

    def login_token(self, token: str) -> User | None:
        uid = self.api_token_user(token)
        if uid is None:
            return None
        with self.db.read() as s:
            user = s.get(User, uid)
        return user if user is not None and user.active else None

    # -- per request ----------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Principal:
        """The caller of ``request``; 401 when there are no valid credentials."""
        header = request.headers.get("authorization", "")
        via_cookie = False
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        else:
            token = request.cookies.get(SESSION_COOKIE, "")
            via_cookie = True
        if not token:
            raise HTTPException(401, "not logged in: send 'Authorization: Bearer <token>' (POST /api/login)")
        uid = self.api_token_user(token) if token.startswith("alk_") else self.verify(token)
        p = self.principal(uid) if uid is not None else None
        if p is None:
            raise HTTPException(401, "invalid or expired credentials: log in again (POST /api/login)")
        if via_cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode(), self.csrf(token).encode()):
                raise HTTPException(403, "missing or wrong X-CSRF-Token header for a cookie-authenticated request")
        return Principal(p.user_id, p.username, p.role, p.group, via_cookie, token)


def require(request: Request, role: str) -> Principal:
    p: Principal = request.app.state.auth.authenticate(request)
    if p.role != role:
        raise HTTPException(403, f"this route is for {role}s; you are logged in as a {p.role}")
    return p


def admin(request: Request) -> Principal:
    """FastAPI dependency: the caller must be an admin."""
    return require(request, "admin")


def labeler(request: Request) -> Principal:
    """FastAPI dependency: the caller must be a labeler."""
    return require(request, "labeler")


def anyone(request: Request) -> Principal:
    """FastAPI dependency: any logged-in user."""
    return request.app.state.auth.authenticate(request)
