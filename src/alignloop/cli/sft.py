"""``alignloop sft``: supervised fine-tuning on demonstrations (thin: options -> SFTConfig -> train_sft)."""

from __future__ import annotations

from pathlib import Path

import typer

from alignloop.cli.run_options import OVERWRITE_HELP, RESUME_HELP
from alignloop.cli.scaling import DTYPE_HELP, GC_HELP, STRATEGY_HELP
from alignloop.config import SFTConfig, load_stage_config, with_distributed
from alignloop.errors import AlignloopError


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
        dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
        strategy: str = typer.Option(None, "--strategy", help=STRATEGY_HELP),
        grad_ckpt: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=GC_HELP),
        resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Fine-tune a policy on demonstrations: loss on response tokens, cosine LR, best epoch kept."""
        from alignloop.data.jsonl import read_jsonl
        from alignloop.data.records import Demonstration
        from alignloop.models.scoring import scorer_from_options
        from alignloop.train.checkpoint import stop_on_signal
        from alignloop.train.sft import train_sft

        cfg = load_stage_config(
            config, SFTConfig, "sft", run_dir=out, resume=resume, model=model, epochs=epochs, lr=lr, lora_r=lora_r
        )
        cfg = with_distributed(cfg, dtype=dtype, strategy=strategy, gradient_checkpointing=grad_ckpt)
        train = read_jsonl(data, Demonstration)
        if not train:
            raise AlignloopError(f"{data} holds no demonstrations", "give a JSONL file of demonstration records")
        val_demos = read_jsonl(val, Demonstration) if val is not None else None
        scorer = scorer_from_options(rm, judge)
        if scorer is not None and not val_demos:
            raise AlignloopError("--rm/--judge score validation samples, but no --val was given", "add --val VAL.jsonl")
        with stop_on_signal():  # Ctrl-C / SIGTERM: checkpoint, "resume with ...", exit 130
            res = train_sft(cfg, train, val_demos, out, scorer=scorer, resume=resume, overwrite=overwrite)
        typer.echo(f"trained {res.steps} steps; final model: {res.final_dir}")
        if res.best_step is not None:
            typer.echo(f"kept model: {res.best_dir} (step {res.best_step}, {res.best_metric} = {res.best_value:.4f})")
