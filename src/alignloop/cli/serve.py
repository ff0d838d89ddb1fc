"""``alignloop serve``: run the human feedback service (migrates the database first)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from alignloop.config import FeedbackConfig, LoopConfig, load_config, load_yaml


def feedback_config(config: Path | None, database_url: str | None = None) -> FeedbackConfig:
    """The feedback section of a YAML file (the stage alone or a whole loop config), with an optional URL override."""
    if config is None:
        cfg = FeedbackConfig()
    elif set(load_yaml(config)) <= {f.name for f in dataclasses.fields(FeedbackConfig)}:
        cfg = load_config(config, FeedbackConfig)
    else:
        cfg = load_config(config, LoopConfig).feedback
    if database_url:
        cfg = dataclasses.replace(cfg, database_url=database_url)
    return cfg


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Path = typer.Option(None, "--config", help="YAML with the feedback stage (or a whole loop config)."),
        db: str = typer.Option(None, "--db", help="Database URL: sqlite:///file.db or postgresql+psycopg://..."),
        host: str = typer.Option(None, "--host", help="Interface to listen on (default: feedback.host)."),
        port: int = typer.Option(
            None, "--port", envvar="ALIGNLOOP_FEEDBACK_PORT", help="Port (default: feedback.port)."
        ),
        workers: int = typer.Option(
            1, "--workers", min=1, help="Worker processes, each with its own DB pool (2 or more for PostgreSQL)."
        ),
        access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
    ) -> None:
        """Run the human feedback service: labeling pages for labelers, the API for admins and the loop."""
        import json

        import uvicorn

        from alignloop.feedback.accounts import count_admins
        from alignloop.feedback.app import ENV_CONFIG, ENV_DATABASE
        from alignloop.feedback.db import migrate

        cfg = feedback_config(config, db)
        revision = migrate(cfg.database_url)
        host = host or cfg.host
        port = port or cfg.port
        os.environ[ENV_DATABASE] = cfg.database_url
        os.environ[ENV_CONFIG] = json.dumps(dataclasses.asdict(cfg))  # limits and throttling reach the workers
        typer.echo(f"alignloop feedback service on http://{host}:{port} (schema {revision}, {workers} worker(s))")
        typer.echo(f"  database: {cfg.database_url}")
        typer.echo(f"  labelers and admins log in at http://{host}:{port}/login; API docs at /api/docs")
        if count_admins(cfg.database_url) == 0:
            typer.secho(
                f"  this database has no admin yet: alignloop feedback admin create NAME --db {cfg.database_url}"
                " (the same --db as here)",
                fg=typer.colors.YELLOW,
            )
        uvicorn.run(
            "alignloop.feedback.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=access_log,
        )
