"""``alignloop compare CONFIG --out OUT``: every method on the same feedback in one table (thin)."""

from __future__ import annotations

from pathlib import Path

import typer

from alignloop.config import CompareConfig, load_config


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        config: Path = typer.Argument(
            ..., help="YAML: policy, rankings, prompts, eval_prompts, methods, rm, ppo, dpo."
        ),
        out: Path = typer.Option(..., "--out", help="Folder for the runs, compare.md, compare.json and compare.png."),
    ) -> None:
        """PPO, PPO-ptx, RLOO, GRPO, DPO and best-of-N from one SFT policy, judged against SFT by gold and RM."""
        from alignloop.compare import format_table, run_compare

        rows = run_compare(load_config(config, CompareConfig), out, log=typer.echo)
        typer.echo(format_table(rows))
        typer.echo(f"table: {out / 'compare.md'}  plot: {out / 'compare.png'}")
