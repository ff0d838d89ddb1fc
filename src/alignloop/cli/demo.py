"""``alignloop demo``: the whole loop on the packaged default model with the simulated panel."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(None, "--out", help="Run folder (default runs/demo, or runs/demo-tiny)."),
        tiny: bool = typer.Option(False, "--tiny", help="The same path on the tiny random model (about a minute)."),
        config: Path = typer.Option(None, "--config", help="YAML overriding the demo defaults (LoopConfig keys)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder first."),
        service: bool = typer.Option(
            False, "--service", help="Through the real feedback service (SQLite in the run folder), labeled over HTTP."
        ),
    ) -> None:
        """Run prompts -> demonstrations -> SFT -> rankings -> RM -> PPO -> evaluation and write a report.

        Prints the final policy's gold-judge win rate against the SFT policy on held-out prompts,
        with its 95 % confidence interval.
        """
        from alignloop.config import config_to_dict, load_yaml
        from alignloop.demo import demo_config, run_demo
        from alignloop.schema import from_dict

        cfg = demo_config(tiny)
        if config is not None:
            merged = _merge(config_to_dict(cfg), load_yaml(config))
            cfg = from_dict(type(cfg), merged)
        if out is not None:
            cfg.out_dir = str(out)
        if overwrite and Path(cfg.out_dir).exists():
            shutil.rmtree(cfg.out_dir)
        log = lambda m: typer.secho(m, fg=typer.colors.CYAN)  # noqa: E731
        if service:
            from alignloop.demo_service import demo_service

            with demo_service(Path(cfg.out_dir), cfg, log) as (client, loop_cfg):
                result = run_demo(loop_cfg, log=log, client=client)
        else:
            result = run_demo(cfg, log=log)
        rate = result.win_rate["win_rates"]["ppo"]
        typer.secho(
            f"\nfinal policy vs SFT, gold-judge win rate on {rate['n_prompts']} held-out prompts "
            f"x {result.win_rate['samples_per_prompt']} samples: {rate['rate']:.1%} "
            f"(95 % CI {rate['ci_low']:.1%} .. {rate['ci_high']:.1%})",
            fg=typer.colors.GREEN,
            bold=True,
        )
        typer.echo(
            f"total time {result.seconds['total']:.0f} s; "
            + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
        )
        if result.report is not None:
            typer.echo(f"report: {result.report}")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
