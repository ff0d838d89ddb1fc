"""``alignloop rm train|eval|crossval|serve``: the reward model from the command line.

Thin: parse options, load config and data, call :mod:`alignloop.train.reward` or
:mod:`alignloop.models.rm_server`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alignloop.cli.run_options import OVERWRITE_HELP, RESUME_HELP
from alignloop.cli.scaling import DTYPE_HELP, GC_HELP, STRATEGY_HELP
from alignloop.config import RMConfig, load_stage_config, with_distributed
from alignloop.data.jsonl import read_jsonl
from alignloop.data.records import Demonstration, Ranking
from alignloop.errors import AlignloopError


def _rankings(path: Path, what: str = "--data") -> list[Ranking]:
    rankings = read_jsonl(path, Ranking)
    if not rankings:
        raise AlignloopError(f"{path} holds no rankings", f"give a JSONL file of ranking records to {what}")
    return rankings


def _percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Train, evaluate, cross-validate and serve reward models.", no_args_is_help=True)

    @group.command("train")
    def train(
        data: Path = typer.Option(..., "--data", help="Rankings JSONL (one ranking of K completions per line)."),
        out: Path = typer.Option(..., "--out", help="Run folder (config, metrics, tb/, checkpoints/, model/)."),
        val: Path = typer.Option(None, "--val", help="Held-out rankings; default: split off val_fraction of prompts."),
        demos: Path = typer.Option(None, "--demos", help="SFT demonstrations JSONL for reward normalisation."),
        model: str = typer.Option(None, "--model", help="Backbone: registry name or SFT output folder."),
        config: Path = typer.Option(None, "--config", help="YAML with the rm stage (or a whole loop config)."),
        epochs: int = typer.Option(None, "--epochs", help="Override rm.epochs."),
        lr: float = typer.Option(None, "--lr", help="Override rm.lr."),
        dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
        strategy: str = typer.Option(None, "--strategy", help=STRATEGY_HELP),
        grad_ckpt: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=GC_HELP),
        resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Train a reward model with all C(K,2) comparisons of a prompt as one batch element."""
        from alignloop.train.checkpoint import stop_on_signal
        from alignloop.train.reward import train_reward_model

        cfg = load_stage_config(config, RMConfig, "rm", run_dir=out, resume=resume, model=model, epochs=epochs, lr=lr)
        cfg = with_distributed(cfg, dtype=dtype, strategy=strategy, gradient_checkpointing=grad_ckpt)
        rankings = _rankings(data)
        val_rankings = _rankings(val, "--val") if val is not None else None
        demo_records = read_jsonl(demos, Demonstration) if demos is not None else None
        if cfg.normalize and not demo_records:
            typer.secho(
                "note: no --demos given, the reward is not normalised (bias 0)", fg=typer.colors.YELLOW, err=True
            )
        with stop_on_signal():  # Ctrl-C / SIGTERM: checkpoint, "resume with ...", exit 130
            res = train_reward_model(
                cfg, rankings, out, val=val_rankings, demos=demo_records, resume=resume, overwrite=overwrite
            )
        line = f"reward model: {res.model_dir}  ({res.steps} steps, {res.train_seconds:.1f} s training)"
        if res.val:
            line += f"  held-out pairwise accuracy {_percent(res.val['val/accuracy'])}, loss {res.val['val/loss']:.4f}"
        if res.normalisation:
            n = res.normalisation
            line += f"  demonstrations' raw mean {n['raw_mean']:+.4f} -> bias {n['bias']:+.4f}"
        typer.echo(line)

    @group.command("eval")
    def evaluate(
        model_dir: Path = typer.Argument(..., help="Reward model folder (RUN_DIR/model)."),
        data: Path = typer.Option(..., "--data", help="Rankings JSONL to evaluate on."),
        micro_batch: int = typer.Option(32, "--micro-batch", help="Completions per forward pass."),
    ) -> None:
        """Pairwise accuracy, loss and mean margin on rankings."""
        from alignloop.train.reward import evaluate_reward_model

        m = evaluate_reward_model(model_dir, _rankings(data), micro_batch)
        typer.echo(
            f"pairwise accuracy {_percent(m['eval/accuracy'])}  loss {m['eval/loss']:.4f}  "
            f"mean margin {m['eval/margin']:+.4f}  ({int(m['eval/pairs'])} pairs)"
        )

    @group.command("crossval")
    def crossval_cmd(
        data: Path = typer.Option(..., "--data", help="Rankings JSONL with labeler ids / labeler groups."),
        folds: int = typer.Option(5, "--folds", help="Number of folds (labeler groups held out in turn)."),
        by: str = typer.Option("labeler_group", "--by", help="labeler_group (metadata) or labeler."),
        test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of prompts kept out of training."),
        model: str = typer.Option(None, "--model", help="Backbone: registry name or SFT output folder."),
        config: Path = typer.Option(None, "--config", help="YAML with the rm stage (or a whole loop config)."),
        out: Path = typer.Option(None, "--out", help="Keep each fold's run folder here (default: temporary)."),
    ) -> None:
        """k-fold cross-validation by labeler group: in-group vs held-out-group accuracy (mean +- std)."""
        from alignloop.train.reward_crossval import crossval

        cfg = load_stage_config(config, RMConfig, "rm", model=model)
        res = crossval(cfg, _rankings(data), folds, by, test_fraction=test_fraction, out_dir=out)
        table = Table(title=f"reward model {folds}-fold cross-validation by {by}")
        for col in ("fold", "held-out groups", "train rankings", "in-group acc", "held-out-group acc"):
            table.add_column(col, justify="right")
        for f in res.folds:
            table.add_row(
                str(f["fold"]),
                ", ".join(map(str, f["held_out_groups"])),
                str(f["train_rankings"]),
                _percent(f["in_group_accuracy"]),
                _percent(f["held_out_accuracy"]),
            )
        Console().print(table)
        typer.echo(res.summary())

    @group.command("serve")
    def serve_cmd(
        model_dir: Path = typer.Argument(..., help="Reward model folder (RUN_DIR/model)."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8100, "--port"),
        batch_size: int = typer.Option(16, "--batch-size", help="Completions per forward pass."),
        device: str = typer.Option(None, "--device", help="Where the model runs, e.g. cuda:1 (default: the CPU)."),
        dtype: str = typer.Option(None, "--dtype", help="Weights: fp32, bf16 or fp16 (default: as saved)."),
    ) -> None:
        """Serve POST /score {prompts, completions} -> {scores} for PPO and evaluation."""
        from alignloop.models.rm_server import serve

        if dtype is not None and dtype not in ("fp32", "bf16", "fp16"):
            raise AlignloopError(f"--dtype: must be fp32, bf16 or fp16, got {dtype!r}")
        serve(str(model_dir), host, port, batch_size, device=device, dtype=dtype)

    app.add_typer(group, name="rm")
