"""``alignloop bon``: best-of-N sampling, and rejection-sampling fine-tuning with ``--finetune``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from alignloop.cli.run_options import OVERWRITE_HELP
from alignloop.cli.scaling import DTYPE_HELP, GC_HELP, STRATEGY_HELP
from alignloop.config import BoNConfig, dump_config, load_config, with_distributed
from alignloop.errors import AlignloopError


def register(app: typer.Typer) -> None:
    @app.command("bon")
    def bon(
        policy: str = typer.Option(..., "--policy", help="Policy: an SFT/PPO output folder or a registry name."),
        prompts: Path = typer.Option(..., "--prompts", help="Prompts JSONL (prompt records: id, text, user_id)."),
        out: Path = typer.Option(..., "--out", help="Output folder: best_of_n.jsonl, summary.json (+ SFT run)."),
        rm: str = typer.Option(None, "--rm", help="Reward model folder or URL that scores the samples."),
        judge: str = typer.Option(None, "--judge", help="'gold': score with the simulated panel's gold judge."),
        n: int = typer.Option(None, "--n", help="Samples per prompt (default from config: 4)."),
        config: Path = typer.Option(None, "--config", help="YAML of a BoNConfig (n, generation, sft, ...)."),
        finetune: bool = typer.Option(False, "--finetune", help="Fine-tune the policy on the best samples."),
        epochs: int = typer.Option(None, "--epochs", help="Override sft.epochs for --finetune."),
        lr: float = typer.Option(None, "--lr", help="Override sft.lr for --finetune."),
        dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
        strategy: str = typer.Option(None, "--strategy", help=STRATEGY_HELP),
        grad_ckpt: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=GC_HELP),
        resume: bool = typer.Option(False, "--resume", help="With --finetune: continue the run in --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="With --finetune: " + OVERWRITE_HELP),
    ) -> None:
        """Sample N completions per prompt, score them, keep the best (and optionally fine-tune on them)."""
        from alignloop.data.jsonl import read_jsonl
        from alignloop.data.records import Prompt
        from alignloop.models.scoring import scorer_from_options
        from alignloop.train.rejection import rejection_sampling_finetune, sample_best_of_n, write_best_of_n

        cfg = load_config(config, BoNConfig) if config is not None else BoNConfig()
        sft = dataclasses.replace(cfg.sft, **{k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None})
        sft = with_distributed(sft, dtype=dtype, strategy=strategy, gradient_checkpointing=grad_ckpt)
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, name=policy), sft=sft, n=n or cfg.n)
        try:
            cfg.validate()
            cfg.sft.validate()
        except ValueError as err:
            raise AlignloopError(f"bon config: {err}") from None
        scorer = scorer_from_options(rm, judge)
        if scorer is None:
            raise AlignloopError("best-of-N needs a scorer", "pass --rm REWARD_MODEL_DIR (or --judge gold)")
        records = read_jsonl(prompts, Prompt)
        if not records:
            raise AlignloopError(f"{prompts} holds no prompts", "give a JSONL file of prompt records")
        if finetune:
            from alignloop.train.checkpoint import stop_on_signal

            with stop_on_signal():  # Ctrl-C / SIGTERM in fine-tuning: checkpoint, "resume with ...", exit 130
                result, sft_result = rejection_sampling_finetune(
                    cfg, records, scorer, out, resume=resume, overwrite=overwrite
                )
            typer.echo(f"fine-tuned on {len(result.prompts)} best-of-{cfg.n} samples: {sft_result.best_dir}")
        else:
            result = sample_best_of_n(cfg, records, scorer)
            out.mkdir(parents=True, exist_ok=True)
            write_best_of_n(result, out)
            dump_config(cfg, out / "config.yaml")
        typer.echo(json.dumps(result.summary(), indent=2))
        typer.echo(f"samples: {out / 'best_of_n.jsonl'}")
