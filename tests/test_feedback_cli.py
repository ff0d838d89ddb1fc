"""The command line: migrate, the first admin, labelers and groups, push, status, export; migrations themselves."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from alignloop.cli.main import app as cli
from alignloop.config import FeedbackConfig
from alignloop.data.jsonl import read_jsonl
from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.db import head_revision, migrate
from feedback_fixtures import live_server, ranking_items

runner = CliRunner()


def _run(args: list[str], env: dict[str, str] | None = None) -> str:
    result = runner.invoke(cli, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_from_first_admin_to_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    assert f"schema revision {head_revision()}" in _run(["feedback", "migrate", "--db", url])
    out = _run(["feedback", "admin", "create", "boss", "--password", "boss-password", "--db", url])
    token = re.search(r"API token \(shown once\): (alk_\S+)", out).group(1)
    assert "log in at http://127.0.0.1:8000/login as boss" in out
    with pytest.raises(AlignloopError, match="'boss' is taken"):
        _run(["feedback", "admin", "create", "boss", "--db", url])

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in ranking_items(3, 4)), encoding="utf-8")
    with live_server(create_app(FeedbackConfig(database_url=url), migrate=False)) as base:
        env = {"ALIGNLOOP_FEEDBACK_URL": base, "ALIGNLOOP_FEEDBACK_TOKEN": token}
        _run(["feedback", "user", "group", "train"], env)
        assert "(held out)" in _run(["feedback", "user", "group", "eval", "--held-out"], env)
        ann = _run(["feedback", "user", "create", "ann", "--group", "train", "--with-token"], env)
        _run(["feedback", "user", "create", "ben", "--group", "eval", "--password", "ben-password"], env)
        ann_token = re.search(r"API token: (alk_\S+)", ann).group(1)

        push = ["feedback", "push", str(items), "--campaign", "c1", "--guidelines", "Rank.", "--group", "train"]
        out = _run(push, env)
        assert "3 new items, 0 already there" in out and "assigned 3 tasks to 1 labelers" in out
        assert "0 new items, 3 already there" in _run(["feedback", "push", str(items), "--campaign", "c1"], env)
        ann_client = FeedbackClient(base, ann_token)
        for t in ann_client.tasks():
            ann_client.submit(t["assignment_id"], {"order": [3, 2, 1, 0]})
        status = _run(["feedback", "status"], env)
        assert "c1" in status and "ranking" in status

        rm = tmp_path / "rm.jsonl"
        assert "wrote 3 rm rows" in _run(["feedback", "export", "--out", str(rm), "--campaign", "c1"], env)
        rankings = read_jsonl(rm, Ranking)
        assert [r.order for r in rankings] == [[3, 2, 1, 0]] * 3 and {r.labeler_id for r in rankings} == {"ann"}
        trl = tmp_path / "trl.jsonl"
        _run(["feedback", "export", "--out", str(trl), "--format", "trl"], env)
        rows = [json.loads(line) for line in trl.read_text().splitlines()]
        assert len(rows) == 3 * 6 and set(rows[0]) == {"prompt", "chosen", "rejected"}
        assert "no item was labeled by two or more labelers" in _run(["feedback", "agreement", "c1"], env)
        with pytest.raises(AlignloopError, match="no campaign 'nope'"):
            _run(["feedback", "agreement", "nope"], env)


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "alignloop.cli.main", "feedback", "status", "--server", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: no admin token (pass --token or set ALIGNLOOP_FEEDBACK_TOKEN (alignloop feedback admin create))"
    ]


def test_migrations_create_the_schema_once_and_the_app_refuses_an_unmigrated_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    head = head_revision()
    with pytest.raises(AlignloopError, match=f"schema revision none, the code needs {head}"):
        create_app(FeedbackConfig(database_url=url), migrate=False)
    assert migrate(url) == head and migrate(url) == head  # idempotent
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert {"users", "campaigns", "items", "assignments", "labels", "alembic_version"} <= tables
    assert journal == "wal"
    with pytest.raises(AlignloopError, match="database folder .* does not exist"):
        migrate(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_admin_password_from_a_file_or_a_prompt_never_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    pw = tmp_path / "pw.txt"
    pw.write_text("file-password-1\n", encoding="utf-8")
    out = _run(["feedback", "admin", "create", "ann", "--password-file", str(pw), "--db", url])
    assert f"admin 'ann' created in {url}" in out and "web console: log in at" in out
    result = runner.invoke(cli, ["feedback", "admin", "create", "bob", "--ask-password", "--db", url],
                           input="prompt-password-1\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = _run(["feedback", "admin", "create", "cid", "--db", url])
    assert "no password given: no web login for this admin" in out
    assert f"alignloop serve --db {url}" in out
    from alignloop.feedback.auth import Authenticator
    from alignloop.feedback.db import Database

    db = Database(url)
    authn = Authenticator(db, b"k" * 32)
    assert authn.login_password("ann", "file-password-1") is not None
    assert authn.login_password("bob", "prompt-password-1") is not None
    db.dispose()
    with pytest.raises(AlignloopError, match="give one of --password, --password-file"):
        _run(["feedback", "admin", "create", "dan", "--password", "x" * 9, "--password-file", str(pw), "--db", url])


def test_migration_0003_keeps_old_campaigns_without_per_completion_ratings(tmp_path):
    from alembic import command

    from alignloop.feedback.db import Database, _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = _alembic_config(url)
    db = Database(url, pool_size=1)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO campaigns (name, task_type, guidelines, overlap, allow_ties, rules, screening, screened_only,"
            " created_at) VALUES ('old', 'ranking', 'g', 1, 0, '[]', 0, 0, '2026-01-01')"
        )
    db.dispose()
    assert migrate(url) == head_revision()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name, rate_completions FROM campaigns").all() == [("old", 0)]
    engine.dispose()


def test_serve_and_admin_create_share_the_default_database(tmp_path, monkeypatch):
    """Without --db both commands use FeedbackConfig.database_url; serve counts the admins it can offer."""
    from alignloop.cli.serve import feedback_config
    from alignloop.feedback.accounts import count_admins

    monkeypatch.chdir(tmp_path)
    url = feedback_config(None).database_url
    migrate(url)
    assert count_admins(url) == 0
    out = _run(["feedback", "admin", "create", "ann"])
    assert f"created in {url}" in out and f"alignloop serve --db {url}" in out
    assert count_admins(url) == 1
