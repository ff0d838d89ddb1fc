"""``alignloop loop``: the loop's rounds as a resumable state machine in OUT/loop.json.

``alignloop loop CONFIG --out OUT [--policy SFT] [--no-wait]`` starts a run,
``alignloop loop --resume OUT [--no-wait]`` continues it, ``alignloop loop status OUT`` prints
the round table.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("loop")
    def loop(
        config: str = typer.Argument(None, help="YAML config (LoopConfig keys), or 'status' to show a run."),
        target: Path = typer.Argument(None, help="With 'status': the run folder."),
        out: Path = typer.Option(None, "--out", help="Run folder (default: the config's out_dir)."),
        resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder from its loop.json."),
        policy: str = typer.Option(
            None, "--policy", help="The SFT policy folder (the start and the KL reference); omit with round 0."
        ),
        prompts: Path = typer.Option(
            None, "--prompts", help="Folder from `alignloop data prepare` (default: the built-in prompts)."
        ),
        demos: Path = typer.Option(None, "--demos", help="SFT demonstrations JSONL, for reward normalisation."),
        no_wait: bool = typer.Option(
            False, "--no-wait", help="Exit 0 when the loop must wait for labelers (else wait; exit 3 on wait_timeout)."
        ),
    ) -> None:
        """Run rounds of rankings -> reward model -> PPO -> evaluation until the stop rule; each round in
        OUT/round-N/, the state in OUT/loop.json. Safe to kill and --resume at any time."""
        from alignloop.errors import AlignloopError
        from alignloop.loop import run_loop

        if config == "status":
            if target is None:
                raise AlignloopError("loop status needs the run folder", "alignloop loop status OUT")
            _print_status(target)
            return
        if resume is None:
            if config is None:
                raise AlignloopError("give a config or --resume OUT", "alignloop loop CONFIG --out OUT")
            run_dir = _start(Path(config), out, policy, prompts, demos)
        else:
            if config is not None:
                raise AlignloopError("--resume continues a run with its saved config", "drop the CONFIG argument")
            run_dir = resume
        try:
            outcome = run_loop(run_dir, no_wait=no_wait, log=lambda m: typer.secho(m, fg=typer.colors.CYAN))
        except KeyboardInterrupt:  # the state on disk is whole: every write is atomic
            typer.echo(f"\ninterrupted; continue with: alignloop loop --resume {run_dir}")
            raise typer.Exit(130) from None
        for r in outcome.rounds:
            w = r.win_rate["win_rates"]["new"]
            typer.echo(
                f"round {r.index}: {r.win_rate.get('judge', '')} win rate vs previous {w['rate']:.1%} "
                f"[{w['ci_low']:.1%}, {w['ci_high']:.1%}] -> {'accepted' if r.accepted else 'rejected'}"
            )
        typer.echo(outcome.line)
        if outcome.status != "finished":
            typer.echo(f"continue later: alignloop loop --resume {run_dir}" + (" --no-wait" if no_wait else ""))
        if outcome.status == "timed_out":  # scripts see that the wait ran out (--no-wait exits 0 by design)
            typer.echo("gave up waiting after wait_timeout seconds; the state is saved")
            raise typer.Exit(3)


def _start(config: Path, out: Path | None, policy: str | None, prompts: Path | None, demos: Path | None) -> Path:
    """Create the run folder from the config, the prompt sets and the optional SFT policy."""
    from alignloop.config import LoopConfig, load_config
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.records import Demonstration, Prompt
    from alignloop.errors import AlignloopError
    from alignloop.loop import LoopInputs, start_loop

    cfg = load_config(config, LoopConfig)
    run_dir = out or Path(cfg.out_dir)
    if prompts is None:
        from alignloop.demo import select_prompts

        sets = select_prompts(cfg)
    else:
        from alignloop.data.pipeline import dataset_filename

        if not prompts.is_dir():
            raise AlignloopError(f"{prompts} is not a folder", "run `alignloop data prepare ... --out FOLDER` first")
        sets = {
            "rm": read_jsonl(prompts / dataset_filename("rm", "train"), Prompt),
            "ppo": read_jsonl(prompts / dataset_filename("ppo", "train"), Prompt)[: cfg.n_ppo_prompts],
            "eval": read_jsonl(prompts / dataset_filename("ppo", "test"), Prompt)[: cfg.eval.n_prompts],
        }
        sft_train = prompts / dataset_filename("sft", "train")
        if sft_train.exists():
            sft = read_jsonl(sft_train, Prompt)
            sets["sft"] = sft[: cfg.n_sft_prompts]
            sets["sft_val"] = read_jsonl(prompts / dataset_filename("sft", "val"), Prompt)[: cfg.n_sft_val_prompts]
    inputs = LoopInputs(
        policy,
        sets["rm"],
        sets["ppo"],
        sets["eval"],
        read_jsonl(demos, Demonstration) if demos else [],
        sets.get("sft", []),
        sets.get("sft_val", []),
    )
    start_loop(cfg, run_dir, inputs)
    return run_dir


def _print_status(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignloop.loop_state import LoopState, status_rows

    state = LoopState.load(run_dir)
    d = state.data
    title = f"{run_dir}: run {d['run_id']}, {d.get('source', 'panel')}" + (", finished" if d["finished"] else "")
    table = Table("round", "stage", "campaigns (items done)", "RM accuracy (held-out group)", "KL to SFT",
                  "win rate vs previous", "decision", title=title)  # fmt: skip
    for row in status_rows(state):
        table.add_row(*row.values())
    Console(width=200).print(table)
    for r in state.rounds:
        if r.get("waiting"):
            typer.echo(r["waiting"])
    typer.echo(f"best policy: {d.get('best_policy')}")
