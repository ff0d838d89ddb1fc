"""Login throttling: attempts per account and per client address, counted in the database.

Each password or token login first counts itself against two keys, the account (the user name
as typed) and the client's address, in one upsert per key: a fixed window of
``login_window_seconds`` that restarts once it has passed. When either count is over its limit
the login is answered 429 with ``Retry-After`` *without* running scrypt, so a flood of guesses
costs the server a row update each, not 100 ms of CPU each. A successful login clears its
account's count and takes its own attempt back from the address (an office of labelers behind one
address is not throttled by logging in). The counts live in the database, so every worker of
one service shares them, on SQLite and PostgreSQL alike. Keys are SHA-256 digests: neither user
names as typed nor addresses are stored.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import case, delete, update
from sqlalchemy.dialects import postgresql, sqlite

from alignloop.config import FeedbackConfig
from alignloop.feedback.db import Database
from alignloop.feedback.models import LoginThrottle

TIDY_EVERY = 200  # attempts (per process) between deletions of expired windows


def _key(kind: str, value: str) -> str:
    return f"{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


class Throttle:
    """Counts login attempts for one database with the limits of ``config``."""

    def __init__(self, db: Database, config: FeedbackConfig) -> None:
        self.db = db
        self.window = float(config.login_window_seconds)
        self.per_account = config.login_attempts_per_account
        self.per_address = config.login_attempts_per_address
        self._insert = (sqlite.insert if db.is_sqlite else postgresql.insert)(LoginThrottle)
        self._since_tidy = 0

    def _count(self, conn, key: str, now: float) -> tuple[int, float]:
        """Count one attempt for ``key``: (attempts in the current window, the window's start)."""
        expired = LoginThrottle.window_start <= now - self.window
        stmt = (
            self._insert.values(key=key, window_start=now, attempts=1)
            .on_conflict_do_update(
                index_elements=[LoginThrottle.key],
                set_={
                    "attempts": case((expired, 1), else_=LoginThrottle.attempts + 1),
                    "window_start": case((expired, now), else_=LoginThrottle.window_start),
                },
            )
            .returning(LoginThrottle.attempts, LoginThrottle.window_start)
        )
        attempts, start = conn.execute(stmt).one()
        return attempts, start

    def attempt(self, account: str | None, address: str) -> int | None:
        """Count a login attempt; the seconds to wait when it is over a limit (then refuse it unchecked)."""
        now = time.time()
        keys = [(_key("address", address), self.per_address)]
        if account is not None:
            keys.append((_key("account", account), self.per_account))
        wait = 0.0
        with self.db.write_guard, self.db.write_engine.begin() as conn:
            for key, limit in keys:
                attempts, start = self._count(conn, key, now)
                if attempts > limit:
                    wait = max(wait, start + self.window - now)
            self._since_tidy += 1
            if self._since_tidy >= TIDY_EVERY:
                self._since_tidy = 0
                conn.execute(delete(LoginThrottle).where(LoginThrottle.window_start <= now - self.window))
        return max(1, math.ceil(wait)) if wait > 0 else None

    def succeeded(self, account: str | None, address: str) -> None:
        """A login went through: forget the account's attempts and give the address its attempt back."""
        with self.db.write_guard, self.db.write_engine.begin() as conn:
            if account is not None:
                conn.execute(delete(LoginThrottle).where(LoginThrottle.key == _key("account", account)))
            conn.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key == _key("address", address), LoginThrottle.attempts > 0)
                .values(attempts=LoginThrottle.attempts - 1)
            )


def client_address(request: Request) -> str:
    """The address logins are throttled by (the peer; a proxy in front makes it the proxy's)."""
    return request.client.host if request.client else "unknown"


def throttled_login(request: Request, account: str | None, check: Callable[[], Any]) -> Any:
    """Run ``check()`` (a password or token check) unless the account or address is over its limit (429)."""
    throttle: Throttle = request.app.state.throttle
    address = client_address(request)
    wait = throttle.attempt(account, address)
    if wait is not None:
        raise HTTPException(429, f"too many login attempts: try again in {wait} s", headers={"Retry-After": str(wait)})
    user = check()
    if user is not None:
        throttle.succeeded(account, address)
    return user
