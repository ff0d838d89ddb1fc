"""``alignloop report RUN_DIR``: one offline HTML page comparing the policies on every evaluation found."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="A run folder (the demo's, or one alignloop eval wrote to)."),
        out: Path = typer.Option(None, "--out", help="Folder for index.html and its PNGs (default RUN_DIR/report)."),
    ) -> None:
        """Write RUN_DIR/report/index.html: win rates, leaderboards, TruthfulQA, toxicity, bias, alignment tax,
        red teaming, over-optimisation and `alignloop compare` tables, with matplotlib plots embedded."""
        from alignloop.evaluate.report import build_report

        typer.echo(str(build_report(run_dir, out)))
