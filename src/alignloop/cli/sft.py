"""``alignloop sft``: supervised fine-tuning on demonstrations (thin: options -> SFTConfig -> train_sft)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from alignloop.config import LoopConfig, SFTConfig, load_config, load_yaml
from alignloop.errors import AlignloopError


def load_sft_config(path: Path | None) -> SFTConfig:
    """An SFTConfig from a YAML holding either the sft stage alone or a whole loop config."""
    if path is None:
        return SFTConfig()
    keys = set(load_yaml(path))
    if keys <= {f.name for f in dataclasses.fields(SFTConfig)}:
        return load_config(path, SFTConfig)
    return load_config(path, LoopConfig).sft


def apply_overrides(cfg: SFTConfig, **changes) -> SFTConfig:
    """Command-line overrides on top of the file, validated like the file is."""
    model = changes.pop("model", None)
    changes = {k: v for k, v in changes.items() if v is not None}
    if model is not None:
        changes["model"] = dataclasses.replace(cfg.model, name=model)
    cfg = dataclasses.replace(cfg, **changes)
    try:
        cfg.validate()
    except ValueError as err:
        raise AlignloopError(f"sft config: {err}") from None
    return cfg


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(
        data: Path = typer.Option(..., "--data", help="Demonstrations JSONL (prompt + completion per line)."),
        out: Path = typer.Option(..., "--out", help="Run folder (config, metrics, tb/, checkpoints/, best/, final/)."),
        val: Path = typer.Option(None, "--val", help="Validation demonstrations JSONL (val loss, RM score, best/)."),
        config: Path = typer.Option(None, "--config", help="YAML with the sft stage (or a whole loop config)."),
        model: str = typer.Option(None, "--model", help="Starting model: registry name, HF folder or hub id."),
        epochs: int = typer.Option(None, "--epochs", help="Override sft.epochs (the paper: 16)."),
        lr: float = typer.Option(None, "--lr", help="Override sft.lr."),
        lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank (0 = full fine-tuning)."),
        rm: str = typer.Option(None, "--rm", help="Reward model folder or URL: keep the epoch with the best score."),
        judge: str = typer.Option(None, "--judge", help="'gold': score validation samples with the gold judge."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    ) -> None:
        """Fine-tune a policy on demonstrations: loss on response tokens, cosine LR, best epoch kept."""
        from alignloop.data.jsonl import read_jsonl
        from alignloop.data.records import Demonstration
        from alignloop.models.scoring import scorer_from_options
        from alignloop.train.sft import train_sft

        if resume and config is None and (out / "config.yaml").exists():
            cfg = load_config(out / "config.yaml", SFTConfig)  # the resolved config of the run being resumed
        else:
            cfg = load_sft_config(config)
        cfg = apply_overrides(cfg, model=model, epochs=epochs, lr=lr, lora_r=lora_r)
        train = read_jsonl(data, Demonstration)
        if not train:
            raise AlignloopError(f"{data} holds no demonstrations", "give a JSONL file of demonstration records")
        val_demos = read_jsonl(val, Demonstration) if val is not None else None
        scorer = scorer_from_options(rm, judge)
        if scorer is not None and not val_demos:
            raise AlignloopError("--rm/--judge score validation samples, but no --val was given", "add --val VAL.jsonl")
        res = train_sft(cfg, train, val_demos, out, scorer=scorer, resume=resume)
        typer.echo(f"trained {res.steps} steps; final model: {res.final_dir}")
        if res.best_step is not None:
            typer.echo(f"kept model: {res.best_dir} (step {res.best_step}, {res.best_metric} = {res.best_value:.4f})")
