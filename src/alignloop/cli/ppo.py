"""``alignloop ppo``: PPO (or PPO-ptx) of a policy against a reward model from the command line.

Thin: parse options, read the prompts (and the pretraining corpus), call
:func:`alignloop.train.ppo.train_ppo`. Runs under ``accelerate launch`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

import typer

from alignloop.cli.run_options import OVERWRITE_HELP, RESUME_HELP
from alignloop.cli.scaling import DTYPE_HELP, FROZEN_HELP, GC_HELP, STRATEGY_HELP
from alignloop.config import PPOConfig, load_stage_config, with_distributed
from alignloop.data.jsonl import iter_documents, iter_json_lines
from alignloop.errors import AlignloopError

PTX_HINT = "give the pretraining corpus for PPO-ptx (.txt or .jsonl)"


def read_prompts(path: Path) -> list[str]:
    """Prompt texts of a JSONL file: one object per line with a ``text`` (prompt records) or ``prompt`` field."""
    hint = "give the PPO prompts JSONL (e.g. from `alignloop data prepare`)"
    prompts = []
    for where, obj in iter_json_lines(path, hint):
        text = obj.get("text", obj.get("prompt")) if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise AlignloopError(f"{where}: expected an object with a non-empty string field 'text'")
        prompts.append(text)
    if not prompts:
        raise AlignloopError(f"{path} holds no prompts", "give a JSONL file with one prompt per line")
    return prompts


def register(app: typer.Typer) -> None:
    @app.command("ppo")
    def ppo(
        policy: str = typer.Option(..., "--policy", help="The SFT policy: model folder or registry name."),
        rm: str = typer.Option(..., "--rm", help="Reward model folder, or the URL of `alignloop rm serve`."),
        prompts: Path = typer.Option(..., "--prompts", help="PPO prompts JSONL (one prompt per line, field 'text')."),
        out: Path = typer.Option(..., "--out", help="Run folder (config, metrics, tb/, checkpoints/, policy/)."),
        config: Path = typer.Option(None, "--config", help="YAML with the ppo stage (or a whole loop config)."),
        ptx: Path = typer.Option(None, "--ptx", help="Pretraining corpus for PPO-ptx (.txt or .jsonl with 'text')."),
        episodes: int = typer.Option(None, "--episodes", help="Override ppo.total_episodes."),
        dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
        strategy: str = typer.Option(None, "--strategy", help=STRATEGY_HELP),
        grad_ckpt: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=GC_HELP),
        frozen_dtype: str = typer.Option(None, "--frozen-dtype", help=FROZEN_HELP),
        resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Optimise the policy against the reward model with PPO (KL penalty to the SFT policy)."""
        from alignloop.train.checkpoint import stop_on_signal
        from alignloop.train.ppo import train_ppo

        cfg = load_stage_config(config, PPOConfig, "ppo", run_dir=out, resume=resume, total_episodes=episodes)
        cfg = with_distributed(
            cfg, dtype=dtype, strategy=strategy, gradient_checkpointing=grad_ckpt, frozen_dtype=frozen_dtype
        )
        texts = list(iter_documents(ptx, PTX_HINT)) if ptx is not None else None
        if cfg.gamma_ptx > 0 and not texts:
            raise AlignloopError("ppo.gamma_ptx > 0 needs a pretraining corpus", "pass --ptx FILE")
        with stop_on_signal():  # Ctrl-C / SIGTERM: checkpoint, "resume with ...", exit 130
            result = train_ppo(
                cfg, policy, rm, read_prompts(prompts), out, ptx_texts=texts, resume=resume, overwrite=overwrite
            )
        last = result.metrics[-1] if result.metrics else {}
        if last and result.is_main:
            typer.echo(
                f"PPO: {result.iterations} iterations; last: rm_score {last['rm_score']:.3f}, "
                f"kl {last['kl']:.3f}, eos_rate {last['eos_rate']:.2f}; policy saved to {result.policy_dir}"
            )
