"""``alignloop sample``: K completions per prompt from a policy, ready for ``alignloop feedback push``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from alignloop.errors import AlignloopError


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample(
        policy: str = typer.Option(..., "--policy", help="Policy: a model folder (runs/sft/final) or a registry name."),
        prompts: Path = typer.Option(..., "--prompts", help="Prompts JSONL (prompt records: id, text, category...)."),
        out: Path = typer.Option(..., "--out", help="Items JSONL: prompt_id, prompt, completions, sources + fields."),
        k: int = typer.Option(4, "--k", help="Completions per prompt (a ranking campaign takes 4..9)."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Longest completion in tokens."),
        temperature: float = typer.Option(None, "--temperature", help="Sampling temperature (default 1.0)."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed: the same seed gives the same completions."),
        source: str = typer.Option(None, "--source", help="Name of the policy in 'sources' (default: --policy)."),
    ) -> None:
        """Sample K completions per prompt for a ranking campaign; every field of each prompt is kept."""
        from alignloop.sampling import SampleConfig, read_prompt_rows, sample_items, write_items

        cfg = SampleConfig(k=k, seed=seed)
        changes = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        cfg.generation = dataclasses.replace(cfg.generation, **{n: v for n, v in changes.items() if v is not None})
        try:
            cfg.validate()
        except ValueError as err:
            raise AlignloopError(f"sample: {err}") from None
        rows = read_prompt_rows(prompts)
        items = sample_items(policy, rows, cfg, source or policy)
        write_items(items, out)
        typer.echo(f"wrote {len(items)} prompts x {k} completions to {out}")
        typer.echo(f"  next: alignloop feedback push {out} --campaign NAME --guidelines-file GUIDELINES.md")
