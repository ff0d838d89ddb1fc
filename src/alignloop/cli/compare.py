"""``alignloop compare CONFIG --out OUT``: every method on the same feedback in one table (thin)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from alignloop.config import CompareConfig, load_config


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        config: Path = typer.Argument(
            ..., help="YAML: policy, rankings, prompts, eval_prompts, methods, budget, rm, ppo, dpo, rejection_ft."
        ),
        out: Path = typer.Option(..., "--out", help="Folder for the runs, compare.md, compare.json and compare.png."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue an interrupted comparison in OUT: finished stages and answers are kept."
        ),
    ) -> None:
        """PPO, PPO-ptx, RLOO, GRPO, DPO, rejection-sampling FT and best-of-N from one SFT policy, under the same
        sample or wall-time budget, judged against SFT by gold and RM; `alignloop report OUT` shows the table."""
        from alignloop.compare import budget_note, format_table, run_compare

        cfg = load_config(config, CompareConfig)
        rows = run_compare(cfg, out, log=typer.echo, resume=resume)
        typer.echo(format_table(rows))
        rm_seconds = json.loads((out / "compare.json").read_text())["rm_seconds"]
        typer.echo(budget_note(dataclasses.asdict(cfg.budget), rm_seconds))
        typer.echo(f"table: {out / 'compare.md'}  plot: {out / 'compare.png'}")
