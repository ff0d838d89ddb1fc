"""Database engines for the feedback service: embedded SQLite (WAL) by default, PostgreSQL by URL.

Durability is the point of this module: a label is committed before the server answers, so a
label the client saw accepted survives a crash. SQLite runs in WAL mode with
``synchronous=FULL`` (each commit is on disk) and write transactions take the write lock up
front (``BEGIN IMMEDIATE``) so concurrent workers queue on ``busy_timeout`` instead of
failing with "database is locked" half way through a transaction.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from alignloop.errors import AlignloopError
from alignloop.feedback.models import ServerSecret

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, pool_size: int = 8) -> Engine:
    """An engine for ``url``; SQLite gets WAL, FULL sync, a busy timeout and foreign keys."""
    if _is_sqlite(url):
        engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            # pysqlite's own implicit BEGIN is disabled (isolation_level=None); take the write lock
            # at BEGIN for write sessions so two writers never deadlock upgrading a read lock.
            mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False)


class Database:
    """An engine with two session factories: ``read()`` and ``write()`` (write locks SQLite up front)."""

    def __init__(self, url: str, pool_size: int = 8) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.is_sqlite = _is_sqlite(url)
        #: the engine for write transactions (on SQLite its transactions start with BEGIN IMMEDIATE)
        self.write_engine = self.engine.execution_options(sqlite_write=True) if self.is_sqlite else self.engine
        #: held around hot write transactions on SQLite: threads of one worker queue here (FIFO, no
        #: sleeping) instead of in SQLite's busy handler, whose back-off sleeps inflate latency
        self.write_guard: contextlib.AbstractContextManager = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        self.read = sessionmaker(self.engine, expire_on_commit=False)
        self.write = sessionmaker(self.write_engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()


def _alembic_config(url: str):
    from alembic.config import Config

    ini = resources.files("alignloop.feedback") / "alembic.ini"
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(Path(str(ini)).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> str:
    """Bring the schema at ``url`` to the newest migration; return the revision now applied."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    if _is_sqlite(url) and url not in ("sqlite://", "sqlite:///:memory:"):
        path = Path(url.split("///", 1)[-1])
        if not path.parent.exists():
            raise AlignloopError(f"database folder {path.parent} does not exist", "create it or change database_url")
    cfg = _alembic_config(url)
    db = Database(url, pool_size=1)
    try:
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""
    except OperationalError as err:
        raise AlignloopError(
            f"cannot reach the feedback database {db.engine.url.render_as_string(hide_password=True)}: {err.orig}",
            "check FeedbackConfig.database_url (sqlite:///path.db or postgresql+psycopg://user@host/db)",
        ) from None
    finally:
        db.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head() or ""


def check_schema(db: Database) -> None:
    """Fail with a clear message when the database has not been migrated to the code's schema."""
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head_revision():
        raise AlignloopError(
            f"the feedback database is at schema revision {current or 'none'}, the code needs {head_revision()}",
            "run `alignloop feedback migrate` (alignloop serve does it on start)",
        )


def secret(db: Database, name: str = "signing_key") -> bytes:
    """The database's secret ``name``, created on first use; every worker of one database shares it."""
    with db.write() as s:
        row = s.scalar(select(ServerSecret).where(ServerSecret.name == name))
        if row is None:
            s.add(ServerSecret(name=name, value=secrets.token_hex(32)))
            try:
                s.commit()
            except IntegrityError:  # another worker created it first
                s.rollback()
            row = s.scalar(select(ServerSecret).where(ServerSecret.name == name))
        assert row is not None
        return bytes.fromhex(row.value)


def new_session(db: Database, write: bool = False) -> Session:
    return (db.write if write else db.read)()
