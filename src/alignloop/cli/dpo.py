"""``alignloop dpo``: train the policy directly on K-way rankings (thin: options -> DPOConfig -> train_dpo)."""

from __future__ import annotations

from pathlib import Path

import typer

from alignloop.cli.run_options import OVERWRITE_HELP, RESUME_HELP
from alignloop.cli.scaling import DTYPE_HELP, GC_HELP, STRATEGY_HELP
from alignloop.config import DPOConfig, load_stage_config, with_distributed
from alignloop.errors import AlignloopError


def register(app: typer.Typer) -> None:
    @app.command("dpo")
    def dpo(
        policy: str = typer.Option(None, "--policy", help="SFT policy (start and reference): folder or name."),
        data: Path = typer.Option(..., "--data", help="Rankings JSONL (one ranking of K completions per line)."),
        out: Path = typer.Option(..., "--out", help="Run folder (config, metrics, tb/, checkpoints/, policy/)."),
        val: Path = typer.Option(None, "--val", help="Held-out rankings; default: split off val_fraction of prompts."),
        config: Path = typer.Option(None, "--config", help="YAML with the dpo stage (or a whole loop config)."),
        loss: str = typer.Option(None, "--loss", help="Override dpo.loss: sigmoid | ipo | plackett_luce."),
        beta: float = typer.Option(None, "--beta", help="Override dpo.beta."),
        epochs: int = typer.Option(None, "--epochs", help="Override dpo.epochs."),
        lr: float = typer.Option(None, "--lr", help="Override dpo.lr."),
        lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank (0 = full fine-tuning)."),
        dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
        strategy: str = typer.Option(None, "--strategy", help=STRATEGY_HELP),
        grad_ckpt: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=GC_HELP),
        resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """DPO (or IPO, Plackett-Luce) on rankings, all C(K,2) pairs of a prompt as one batch element."""
        from alignloop.data.jsonl import read_jsonl
        from alignloop.data.records import Ranking
        from alignloop.train.dpo import train_dpo

        cfg = load_stage_config(
            config, DPOConfig, "dpo", run_dir=out, resume=resume, model=policy,
            loss=loss, beta=beta, epochs=epochs, lr=lr, lora_r=lora_r,
        )  # fmt: skip
        cfg = with_distributed(cfg, dtype=dtype, strategy=strategy, gradient_checkpointing=grad_ckpt)
        rankings = read_jsonl(data, Ranking)
        if not rankings:
            raise AlignloopError(f"{data} holds no rankings", "give a JSONL file of ranking records to --data")
        held = read_jsonl(val, Ranking) if val is not None else None
        res = train_dpo(cfg, rankings, out, val=held, resume=resume, overwrite=overwrite)
        line = f"policy: {res.policy_dir}  ({res.steps} steps, {res.train_seconds:.1f} s training)"
        if res.val:
            v = res.val
            line += (
                f"  held-out implicit-reward accuracy {100 * v['val/accuracy']:.1f} %, "
                f"margin {v['val/margin']:+.4f}, KL to reference {v['val/kl_ref']:.4f}"
            )
        typer.echo(line)
