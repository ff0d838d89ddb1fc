"""The feedback service's tables: labelers, campaigns of items, assignments and the labels they produce.

A *campaign* holds *items* (one prompt with its model completions) of one feedback form. An
*assignment* gives one item to one labeler; the unique ``(item_id, labeler_id)`` constraint is
what guarantees nobody labels the same item twice, and the unique ``labels.assignment_id`` is
what makes a retried submission land once. The schema itself is created by the Alembic
migrations in ``feedback/migrations``; these classes mirror them for queries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Python None is stored as SQL NULL (not JSON 'null'), so "IS NULL" finds missing gold labels and skips.
NULLABLE_JSON = JSON(none_as_null=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ServerSecret(Base):
    """Per-database secrets (the token signing key), shared by every worker process."""

    __tablename__ = "server_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


class LabelerGroup(Base):
    """A group of labelers; a held-out group's labels stay out of training exports (SPEC section 3)."""

    __tablename__ = "labeler_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    held_out: Mapped[bool] = mapped_column(Boolean, default=False)


class User(Base):
    """An admin (researcher) or a labeler. ``qualified`` is set by screening: None = not screened yet."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler"
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("labeler_groups.id"), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    qualified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    screening_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A long-lived API token; only its SHA-256 is stored (tokens are random, so a fast hash suffices)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Campaign(Base):
    """A batch of items of one feedback form, with the guidelines shown next to every task.

    Settings are fixed at creation so a label always means what the form said when it was given.
    """

    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task_type: Mapped[str] = mapped_column(String(32))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    allow_ties: Mapped[bool] = mapped_column(Boolean, default=False)
    rules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    screening: Mapped[bool] = mapped_column(Boolean, default=False)
    screened_only: Mapped[bool] = mapped_column(Boolean, default=False)
    #: ranking-like forms: rate every completion (Likert + flags) before ranking (InstructGPT's interface)
    rate_completions: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Item(Base):
    """One prompt with its completions (none for a demonstration); ``gold`` is an admin's label."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("campaign_id", "key", name="uq_items_campaign_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    prompt_id: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32), default="other")
    user_id: Mapped[str] = mapped_column(String(128), default="")
    completions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sources: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    gold: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Assignment(Base):
    """One item given to one labeler: ``pending`` until labeled (``done``) or skipped (``skipped``)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id", name="uq_assignments_item_labeler"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    """A labeler's answer (or skip) for one assignment; at most one per assignment."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    payload: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    skip_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoginSession(Base):
    """A login session: ended by deleting its row (logout, password change, deactivation).

    The token a client holds is signed; only the SHA-256 of its random session id is stored, so a
    copy of the database does not hand out live sessions.
    """

    __tablename__ = "login_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the session id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[float] = mapped_column(Float)  # Unix time: compares the same on SQLite and PostgreSQL


class LoginThrottle(Base):
    """Login attempts counted in a fixed window per key (an account or a client address), shared by all workers."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)  # "account:<sha256>" or "address:<sha256>"
    window_start: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer)
