"""Who is asking: password and API-token login, revocable login sessions, role checks.

Passwords are hashed with scrypt (stdlib, memory-hard). Logging in yields a *session token*:
``session_id.expiry`` signed with HMAC-SHA256 under a per-database key, sent back as a bearer token
or an HttpOnly cookie. The signature rejects forged tokens without touching the database; a
well-signed one must also name a row of ``login_sessions`` (stored as its SHA-256), which is
looked up on every request together with the user's state. Deleting the row (logout, a password
change, deactivation) ends the session at once, in every worker.

Long-lived API tokens are random and stored as their SHA-256. They authenticate the hot labeling
path, so the token -> user and user -> state lookups are cached per process for a few seconds
in bounded LRU maps (a flood of bogus tokens evicts old entries instead of growing memory);
changes made through this process drop the user's cached state at once, other workers see them
within ``USER_CACHE_SECONDS``.

Password login costs one scrypt whatever the account: unknown, deactivated and token-only
accounts are checked against a dummy hash, so timing tells nothing about which names exist.

Cookie-authenticated requests that change state must carry the ``X-CSRF-Token`` header that the
page embeds (the logout form sends it as a form field); a bearer token cannot be sent by a
foreign site, so it needs none.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alignloop.feedback.db import Database
from alignloop.feedback.models import ApiToken, LabelerGroup, LoginSession, User

SESSION_COOKIE = "alignloop_session"
SESSION_SECONDS = 12 * 3600
USER_CACHE_SECONDS = 5.0
CACHE_ENTRIES = 4096  # per map and process: far more than the labelers of one service
ROLES = ("admin", "labeler")
MIN_PASSWORD = 8  # the API, the CLI and the pages all ask for this many characters
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def _parse_hash(stored: str | None) -> tuple[int, int, int, bytes, str] | None:
    """(n, r, p, salt, digest) of a stored scrypt hash, or None when there is none or it is malformed."""
    try:
        kind, n, r, p, salt, digest = (stored or "").split("$")
        if kind != "scrypt":
            return None
        return int(n), int(r), int(p), bytes.fromhex(salt), digest
    except ValueError:
        return None


def check_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; always runs one scrypt (a dummy one when nothing is stored)."""
    parsed = _parse_hash(stored)
    n, r, p, salt, digest = parsed or _parse_hash(_dummy_hash())  # type: ignore[misc]
    got = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=32)
    return hmac.compare_digest(got.hex(), digest) and parsed is not None


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))


def new_api_token() -> tuple[str, str]:
    """A fresh API token and the hash to store."""
    token = "alk_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def end_sessions(s: Session, user_id: int) -> None:
    """Delete every login session of a user in ``s`` (the caller commits): they end at once."""
    s.execute(delete(LoginSession).where(LoginSession.user_id == user_id))


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: int
    username: str
    role: str
    group: str | None
    via_cookie: bool = False
    session: str = ""


class BoundedCache:
    """A thread-safe LRU map with a time-to-live: at most ``size`` entries, each fresh for ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.ttl:
            return False, None
        return True, hit[1]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


def _principal_query():
    return select(User.id, User.username, User.role, User.active, LabelerGroup.name).outerjoin(
        LabelerGroup, User.group_id == LabelerGroup.id
    )


def _principal(row: Any) -> Principal | None:
    return Principal(row.id, row.username, row.role, row.name) if row is not None and row.active else None


class Authenticator:
    """Signs and checks session tokens for one database; caches API-token and user state per process."""

    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self.key = key
        self._users = BoundedCache(CACHE_ENTRIES, USER_CACHE_SECONDS)
        self._tokens = BoundedCache(CACHE_ENTRIES, USER_CACHE_SECONDS)
        _dummy_hash()  # made now, so no login pays for it (the first one would otherwise be slower)

    @property
    def cache_seconds(self) -> float:
        return self._users.ttl

    @cache_seconds.setter
    def cache_seconds(self, seconds: float) -> None:
        self._users.ttl = self._tokens.ttl = seconds

    # -- session tokens -------------------------------------------------------------------------
    def _sign(self, body: str) -> str:
        mac = hmac.new(self.key, body.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, user_id: int, seconds: int = SESSION_SECONDS) -> str:
        """Open a login session for ``user_id`` and return its signed token."""
        sid = secrets.token_urlsafe(24)  # no "." in the URL-safe alphabet
        expiry = int(time.time()) + seconds
        with self.db.write() as s:
            s.execute(delete(LoginSession).where(LoginSession.expires_at < time.time()))  # tidy as we go
            s.add(LoginSession(id=token_hash(sid), user_id=user_id, expires_at=float(expiry)))
            s.commit()
        body = f"{sid}.{expiry}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str) -> str | None:
        """The session id of a well-signed, unexpired session token, else None (never raises)."""
        body, _, sig = token.rpartition(".")
        if not body or not hmac.compare_digest(sig.encode("utf-8", "surrogatepass"), self._sign(body).encode()):
            return None
        sid, _, exp = body.partition(".")
        if not sid or not exp.isascii() or not exp.isdigit() or len(exp) > 12 or int(exp) < time.time():
            return None
        return sid

    def session_principal(self, sid: str) -> Principal | None:
        """The active user of a live session (one query, uncached: a revoked session is refused at once)."""
        with self.db.read() as s:
            row = s.execute(
                _principal_query()
                .join(LoginSession, LoginSession.user_id == User.id)
                .where(LoginSession.id == token_hash(sid), LoginSession.expires_at >= time.time())
            ).first()
        return _principal(row)

    def end_session(self, token: str) -> None:
        """Log one session out (an unknown or malformed token is ignored)."""
        sid = self.verify(token)
        if sid is None:
            return
        with self.db.write() as s:
            s.execute(delete(LoginSession).where(LoginSession.id == token_hash(sid)))
            s.commit()

    def forget(self, user_id: int) -> None:
        """Drop this process's cached state of a user (after a change made through this process)."""
        self._users.drop(user_id)

    def csrf(self, session: str) -> str:
        return self._sign("csrf:" + session)[:32]

    # -- users and API tokens -----------------------------------------------------------------
    def principal(self, user_id: int) -> Principal | None:
        """Current state of an active user (cached for a few seconds), or None if gone/deactivated."""
        hit, p = self._users.get(user_id)
        if hit:
            return p
        with self.db.read() as s:
            p = _principal(s.execute(_principal_query().where(User.id == user_id)).first())
        self._users.put(user_id, p)
        return p

    def api_token_user(self, token: str) -> int | None:
        h = token_hash(token)
        hit, uid = self._tokens.get(h)
        if hit:
            return uid
        with self.db.read() as s:
            uid = s.scalar(select(ApiToken.user_id).where(ApiToken.token_hash == h, ApiToken.revoked.is_(False)))
        self._tokens.put(h, uid)
        return uid

    def login_password(self, username: str, password: str) -> User | None:
        """The user for a right username and password, else None; one scrypt for every kind of account."""
        with self.db.read() as s:
            user = s.scalar(select(User).where(User.username == username))
        stored = user.password_hash if user is not None and user.active else None
        return user if check_password(password, stored) else None

    def login_token(self, token: str) -> User | None:
        uid = self.api_token_user(token)
        if uid is None:
            return None
        with self.db.read() as s:
            user = s.get(User, uid)
        return user if user is not None and user.active else None

    # -- per request ----------------------------------------------------------------------------
    def authenticate(self, request: Request, check_csrf: bool = True) -> Principal:
        """The caller of ``request``; 401 when there are no valid credentials.

        ``check_csrf=False`` is for the one route that checks the CSRF token itself (the logout form).
        """
        header = request.headers.get("authorization", "")
        via_cookie = False
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        else:
            token = request.cookies.get(SESSION_COOKIE, "")
            via_cookie = True
        if not token:
            raise HTTPException(401, "not logged in: send 'Authorization: Bearer <token>' (POST /api/login)")
        if token.startswith("alk_"):
            uid = self.api_token_user(token)
            p = self.principal(uid) if uid is not None else None
        else:
            sid = self.verify(token)
            p = self.session_principal(sid) if sid is not None else None
        if p is None:
            raise HTTPException(401, "invalid or expired credentials: log in again (POST /api/login)")
        if check_csrf and via_cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), self.csrf(token).encode()):
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
