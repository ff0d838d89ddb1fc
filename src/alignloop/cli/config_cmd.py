"""``alignloop config show FILE``: print the resolved config (defaults filled in)."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from alignloop.config import LoopConfig, config_to_dict, load_config


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect configuration files.", no_args_is_help=True)

    @group.command("show")
    def show(file: Path = typer.Argument(None, help="YAML config; omitted = all defaults.")) -> None:
        """Print the resolved config: every stage with defaults filled in, validated."""
        cfg = load_config(file, LoopConfig)
        typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())

    app.add_typer(group, name="config")
