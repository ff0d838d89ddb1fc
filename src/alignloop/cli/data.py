"""``alignloop data``: run the prompt pipeline on a JSONL of prompts, or write the built-in prompt set."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alignloop.config import DataConfig, LoopConfig, load_config, load_yaml
from alignloop.data.builtin import builtin_prompts
from alignloop.data.jsonl import read_jsonl, write_jsonl
from alignloop.data.pipeline import DATASETS, SPLITS, PreparedData, prepare, write_prepared
from alignloop.data.records import CATEGORIES, Prompt


def load_data_config(path: Path | None) -> DataConfig:
    """A DataConfig from a YAML holding either the data stage alone or a whole loop config."""
    if path is None:
        return DataConfig()
    keys = set(load_yaml(path))
    if keys <= {f.name for f in dataclasses.fields(DataConfig)}:
        return load_config(path, DataConfig)
    return load_config(path, LoopConfig).data


def report_tables(prepared: PreparedData) -> tuple[Table, Table]:
    """What was kept and dropped and why; then prompts and users per dataset and split."""
    rep, cfg = prepared.report, prepared.config
    why = Table(title="prompt pipeline")
    why.add_column("step")
    why.add_column("prompts", justify="right")
    why.add_column("why")
    why.add_row("input", str(rep.n_input), f"{rep.users_input} users")
    why.add_row("dropped: empty or invalid", str(rep.dropped["invalid"]), "empty text or user id, or a repeated id")
    why.add_row(
        "dropped: duplicate",
        str(rep.dropped["duplicate"]),
        f"same first {cfg.dedupe_prefix_chars} characters (case and spacing ignored) as an earlier prompt",
    )
    why.add_row(
        "dropped: over per-user cap",
        str(rep.dropped["over_user_cap"]),
        f"{rep.users_over_cap} users had more than {cfg.max_prompts_per_user} prompts; their first ones are kept",
    )
    why.add_row("[bold]kept[/bold]", f"[bold]{rep.n_kept}[/bold]", "")

    sizes = Table(title="kept prompts (users)", caption="no user is in two splits")
    sizes.add_column("dataset")
    for split in SPLITS:
        sizes.add_column(split, justify="right")
    for dataset in DATASETS:
        cells = [f"{c['prompts']} ({c['users']})" for c in (rep.counts[dataset][s] for s in SPLITS)]
        sizes.add_row(dataset, *cells)
    sizes.add_row("[bold]users[/bold]", *(f"[bold]{rep.users_per_split[s]}[/bold]" for s in SPLITS))
    return why, sizes


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Prepare prompts: dedupe, per-user cap, user splits, SFT/RM/PPO sets.", no_args_is_help=True
    )

    @group.command("prepare")
    def prepare_cmd(
        prompts_file: Path = typer.Argument(..., help="JSONL of prompts (id, text, user_id, category, source)."),
        out: Path = typer.Option(..., "--out", help="Folder for sft/rm/ppo x train/val/test JSONL and summary.json."),
        config: Path = typer.Option(None, "--config", help="YAML with the data stage (or a whole loop config)."),
        prefix_chars: int = typer.Option(None, "--prefix-chars", help="Shared prefix length that makes a duplicate."),
        max_per_user: int = typer.Option(None, "--max-per-user", help="Most prompts kept per user."),
        seed: int = typer.Option(None, "--seed", help="Seed of the user splits and dataset assignment."),
    ) -> None:
        """Dedupe, cap per user, split by user, and write disjoint SFT / RM / PPO prompt sets."""
        cfg = load_data_config(config)
        overrides = {"dedupe_prefix_chars": prefix_chars, "max_prompts_per_user": max_per_user, "seed": seed}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        prepared = prepare(read_jsonl(prompts_file, Prompt), cfg)
        paths = write_prepared(prepared, out)
        console = Console()
        for table in report_tables(prepared):
            console.print(table)
        console.print(f"wrote {len(paths)} files to {out} (dropped prompts with their reason: {paths['dropped'].name})")

    @group.command("builtin")
    def builtin_cmd(
        out: Path = typer.Option(..., "--out", help="JSONL file to write."),
        users: int = typer.Option(60, "--users", help="Number of synthetic users."),
        seed: int = typer.Option(0, "--seed", help="Seed of the shuffling and user assignment."),
    ) -> None:
        """Write the built-in prompt set (all use-case categories, synthetic users) as JSONL."""
        if users < 3:
            raise typer.BadParameter("need at least 3 users", param_hint="--users")
        prompts = builtin_prompts(n_users=users, seed=seed)
        write_jsonl(out, prompts)
        per_cat = Counter(p.category for p in prompts)
        typer.echo(
            f"wrote {len(prompts)} prompts from {len({p.user_id for p in prompts})} users to {out} ("
            + ", ".join(f"{c} {per_cat[c]}" for c in CATEGORIES)
            + ")"
        )

    app.add_typer(group, name="data")
