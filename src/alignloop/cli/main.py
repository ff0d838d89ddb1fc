"""The ``alignloop`` command: thin Typer groups that parse options and call the library.

Each module in :data:`COMMAND_MODULES` defines ``register(app)``. Errors a user can cause are
:class:`~alignloop.errors.AlignloopError` and print as one line; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings

import typer

from alignloop.errors import AlignloopError, TrainingInterrupted

# Library progress bars ("Loading weights", "Writing model shards") would interleave with our own,
# which show the stage's metrics; huggingface_hub's switch silences transformers' bars too.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# peft asks transformers a deprecated question on every LoRA wrap; nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# Order here is the order in --help. A module that does not exist yet is skipped.
COMMAND_MODULES = (
    "demo",
    "loop",
    "data",
    "config_cmd",
    "sft",
    "rm",
    "bon",
    "sample",
    "ppo",
    "dpo",
    "compare",
    "serve",
    "feedback",
    "eval",
    "report",
)

app = typer.Typer(
    name="alignloop",
    help="The InstructGPT RLHF loop: feedback -> SFT -> reward model -> PPO -> evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("ALIGNLOOP_ONLINE") != "1" else None


for _name in COMMAND_MODULES:
    _mod = f"alignloop.cli.{_name}"
    if importlib.util.find_spec(_mod) is not None:
        importlib.import_module(_mod).register(app)


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues an interrupted run: the same one, with ``--resume``."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "alignloop " + shlex.join(args)


def main() -> None:
    """Console-script entry: run the app, turning user errors into one clear line."""
    debug = "--debug" in sys.argv[1:]
    try:
        app(standalone_mode=False)
    except AlignloopError as err:
        if debug:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    except TrainingInterrupted as err:
        line = f"interrupted at step {err.step}; resume with: {resume_command()}"
        typer.secho(line, fg=typer.colors.YELLOW, err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as err:  # click usage errors and the like
        import click

        if isinstance(err, click.exceptions.Abort):
            raise SystemExit(1) from None
        if isinstance(err, click.ClickException):
            err.show()
            raise SystemExit(err.exit_code) from None
        if debug:
            raise
        typer.secho(
            f"error: {type(err).__name__}: {err} (run with --debug for the traceback)", fg=typer.colors.RED, err=True
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
