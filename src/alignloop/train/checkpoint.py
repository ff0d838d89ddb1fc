"""Checkpoints that resume exactly: weights, optimizer, scheduler, RNG states and data position.

Layout: ``RUN_DIR/checkpoints/step-000123/`` holds the model as a Hugging Face folder (or
whatever ``save_model`` writes) plus ``trainer_state.pt``. A checkpoint is written to a
temporary folder and renamed into place, so a run killed mid-save (even by SIGKILL) never
leaves a half-written checkpoint that a resume would pick up.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignloop.errors import TrainingInterrupted

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    save_model: Callable[[Path], None],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints.

    ``extra`` carries trainer-specific state (data position, KL controller, best metric...).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(tmp / "model")
    state = {
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
    }
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    _crash_point(run_dir, step)
    return final


CRASH_ENV = "ALIGNLOOP_CRASH_AFTER_CHECKPOINT"


def _crash_point(run_dir: str | os.PathLike[str], step: int) -> None:
    """Fault injection for resume tests: ``ALIGNLOOP_CRASH_AFTER_CHECKPOINT=ppo:2`` SIGKILLs this
    process right after checkpoint 2 of a run folder named ``ppo`` is in place.

    A real SIGKILL, at a point the test chooses instead of one it must catch by polling: a test that
    waits for a checkpoint file and then kills races the trainer on a loaded machine (the run may
    finish first). Unset, this costs one environment lookup per checkpoint.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, at = spec.rpartition(":")
    if Path(run_dir).name == name and str(step) == at:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.exists():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from ``path``; return the state (``step``, ``extra``).
    The model weights are in ``path/model`` and are loaded by the caller (it knows their type)."""
    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


# --------------------------------------------------------------------------------------------------
# Interruption: Ctrl-C or SIGTERM stops a run at the next step boundary with a checkpoint.

_STOP: dict[str, int | None] = {"signal": None}
_DEADLINE: dict[str, float | None] = {"at": None}  # time.monotonic() at which the wall-time budget is spent


def stop_requested() -> bool:
    """True once SIGINT/SIGTERM arrived inside :func:`stop_on_signal`; trainers check it after each step."""
    return _STOP["signal"] is not None


def interrupt_point(step: int, run_dir: str | os.PathLike[str] | None) -> None:
    """Called by a trainer right after the checkpoint it writes when :func:`stop_requested`: ends the run."""
    if stop_requested():
        raise TrainingInterrupted(step, run_dir)


def budget_spent() -> bool:
    """True once the wall-time budget of :func:`wall_time_budget` is spent. Trainers check it at each
    step boundary and then end the run as if that step were the last (they write the policy), unlike a
    signal, which checkpoints and raises: a spent budget is a finished run, not an interrupted one."""
    at = _DEADLINE["at"]
    return at is not None and time.monotonic() >= at


def budget_active() -> bool:
    """Whether a wall-time budget is set (distributed trainers then agree on :func:`budget_spent`)."""
    return _DEADLINE["at"] is not None


def agreed_budget_spent(acc: Any) -> bool:
    """:func:`budget_spent`, agreed by every process of the Accelerator ``acc`` (any one's clock decides):
    all processes then leave the loop after the same step, where one leaving alone would hang the
    others in their next collective."""
    if not budget_active():
        return False
    spent = torch.tensor(float(budget_spent()), device=acc.device)
    return bool((acc.reduce(spent, "sum") if acc.num_processes > 1 else spent) > 0)


@contextmanager
def wall_time_budget(seconds: float | None) -> Iterator[None]:
    """Give the code inside ``seconds`` of wall time (None: no budget). ``alignloop compare`` runs each
    method under one, so every method stops at its first step boundary after the same time.

    Why a deadline and not a step count: methods' steps cost different amounts (a PPO iteration
    samples, scores and updates; a DPO step is one forward/backward), so equal steps are not equal compute.
    """
    previous = _DEADLINE["at"]
    _DEADLINE["at"] = None if seconds is None else time.monotonic() + seconds
    try:
        yield
    finally:
        _DEADLINE["at"] = previous


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into a request to stop at the next step boundary (the trainer then
    checkpoints and raises :class:`TrainingInterrupted`); a second one aborts at once (KeyboardInterrupt).

    Why: killing a step midway loses everything since the last periodic checkpoint, and a script
    (``sft && rm train``) must see a failing exit status, not a silent 0.
    """
    import signal
    import sys

    def handler(signum: int, _frame: Any) -> None:
        if _STOP["signal"] is not None:
            raise KeyboardInterrupt
        _STOP["signal"] = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint (again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _STOP["signal"] = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP["signal"] = None
