"""Alembic environment: migrate the database named by the caller (or $ALIGNLOOP_FEEDBACK_DB)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from alignloop.feedback.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("ALIGNLOOP_FEEDBACK_DB")
    if not url:
        raise RuntimeError("no database URL: set ALIGNLOOP_FEEDBACK_DB or pass one to alignloop feedback migrate")
    return url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
