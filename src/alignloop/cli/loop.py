"""``alignloop loop CONFIG``: iterated rounds of rankings -> reward model -> PPO -> evaluation."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("loop")
    def loop(
        config: Path = typer.Argument(..., help="YAML config (LoopConfig keys; see alignloop config show)."),
        policy: str = typer.Option(..., "--policy", help="The starting policy: an SFT run's best/ folder."),
        prompts: Path = typer.Option(
            ..., "--prompts", help="Folder written by `alignloop data prepare` (rm_train / ppo_train / ppo_test)."
        ),
        demos: Path = typer.Option(None, "--demos", help="SFT demonstrations JSONL, for reward normalisation."),
        out: Path = typer.Option(None, "--out", help="Run folder (default: the config's out_dir)."),
    ) -> None:
        """Run rounds until the config's stop threshold or its number of rounds; each round in OUT/round-N/."""
        from alignloop.config import LoopConfig, load_config
        from alignloop.data.jsonl import read_jsonl
        from alignloop.data.pipeline import dataset_filename
        from alignloop.data.records import Demonstration, Prompt
        from alignloop.errors import AlignloopError
        from alignloop.labelers import GoldJudge, SimulatedPanel
        from alignloop.loop import ranking_source, run_loop

        cfg = load_config(config, LoopConfig)
        if not prompts.is_dir():
            raise AlignloopError(f"{prompts} is not a folder", "run `alignloop data prepare ... --out FOLDER` first")
        rm_p = read_jsonl(prompts / dataset_filename("rm", "train"), Prompt)
        ppo_p = read_jsonl(prompts / dataset_filename("ppo", "train"), Prompt)
        eval_p = read_jsonl(prompts / dataset_filename("ppo", "test"), Prompt)[: cfg.eval.n_prompts]
        demo_records = read_jsonl(demos, Demonstration) if demos else []
        judge = GoldJudge()
        panel = SimulatedPanel(cfg.panel, judge)
        results = run_loop(
            cfg,
            policy,
            rm_p,
            ppo_p[: cfg.n_ppo_prompts],
            eval_p,
            ranking_source(cfg, panel),
            judge,
            demo_records,
            out or Path(cfg.out_dir),
            log=lambda m: typer.secho(m, fg=typer.colors.CYAN),
        )
        for r in results:
            rate = r.win_rate["win_rates"]["new"]
            typer.echo(
                f"round {r.index}: win rate vs previous {rate['rate']:.1%} "
                f"[{rate['ci_low']:.1%}, {rate['ci_high']:.1%}] -> {'kept' if r.accepted else 'rejected'}"
            )
