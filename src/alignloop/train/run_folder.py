"""Opening a run folder: one rule for every trainer about what may already be in ``--out``.

A run folder holds exactly one run (:mod:`alignloop.train.runlog` describes the layout). Mixing
two runs in one folder is how results get lost: a fresh run would truncate the old
``metrics.jsonl`` and its checkpoints would interleave with the old ones (pruning could then
delete the new run's own), and resuming with other settings would continue a schedule the
config no longer describes. So :func:`open_run` decides, before a trainer writes anything:

* ``resume=False, overwrite=False``: the folder must be empty or absent; anything else is an
  error that names the folder, what it holds and the two flags.
* ``resume=True``: the folder must hold a checkpoint or a finished run (``finished_marker``).
  Nothing to resume is an error, never a silent fresh start: a typo in ``--out`` or a run that
  died before its first checkpoint should be noticed, and ``--overwrite`` (or no flag, on an empty
  folder) is the explicit way to start over. The saved ``config.yaml`` must equal the config
  asked for; the error names every changed field (``distributed.dtype``, ``lr``).
* ``overwrite=True``: removes what a run of this stage writes (the common layout plus the
  stage's ``outputs``) and nothing else. When the folder also holds anything else (a user's
  notes, another stage's model), nothing is deleted and the error names those entries: the
  only files ``--overwrite`` deletes are ones alignloop's run wrote.

``keep`` names entries that belong to the caller, not to the run (best-of-N writes its samples
before fine-tuning into the same folder): they are neither counted nor deleted.

Under a multi-process launch only rank 0 (``RANK``) checks emptiness and deletes, so no rank
races another's first writes; every rank looks up the same checkpoint.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignloop.config import config_to_dict, load_yaml
from alignloop.errors import AlignloopError
from alignloop.train.checkpoint import latest_checkpoint

#: What every run writes (see :mod:`alignloop.train.runlog` and :mod:`alignloop.train.checkpoint`).
COMMON_OUTPUTS: tuple[str, ...] = ("config.yaml", "metrics.jsonl", "tb", "checkpoints")
FLAGS_HINT = "pass --resume to continue the run there, --overwrite to replace it, or choose another --out folder"


@dataclass(frozen=True)
class RunFolder:
    """An opened run folder. ``checkpoint``: the newest checkpoint to resume from (None for a fresh
    run); ``finished``: a resumed run that had already finished (the trainer returns its result)."""

    path: Path
    checkpoint: Path | None = None
    finished: bool = False

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None or self.finished


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def can_resume(run_dir: str | os.PathLike[str], finished_marker: str | None = None) -> bool:
    """Whether ``open_run(..., resume=True)`` would find something to resume (a checkpoint or a
    finished run). For callers that own the folder and choose resume-or-overwrite themselves (the loop)."""
    run = Path(run_dir)
    return latest_checkpoint(run) is not None or (finished_marker is not None and (run / finished_marker).exists())


def changed_fields(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted names of every field whose value differs between two plain config dicts."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for k in sorted(set(saved) | set(now), key=str):
            out += changed_fields(saved.get(k), now.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == now else [prefix.rstrip(".")]


def check_same_config(run_dir: str | os.PathLike[str], cfg: Any) -> None:
    """Refuse to resume ``run_dir`` with a config other than its saved ``config.yaml`` (the schedule,
    the data order and the model would no longer be the run's). No saved config: nothing to compare."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.exists():
        return
    changed = changed_fields(load_yaml(saved_path), config_to_dict(cfg))
    if changed:
        raise AlignloopError(
            f"cannot resume {run_dir}: the config differs from the run's config.yaml in {', '.join(changed)}",
            "resume with the same settings, or start a new run in another --out folder",
        )


def open_run(
    run_dir: str | os.PathLike[str],
    cfg: Any,
    *,
    stage: str,
    resume: bool = False,
    overwrite: bool = False,
    outputs: Iterable[str] = (),
    keep: Iterable[str] = (),
    finished_marker: str | None = None,
) -> RunFolder:
    """Check (and with ``overwrite`` clear) ``run_dir`` for a run of ``stage`` with config ``cfg``;
    see the module docstring for the rules. ``outputs``: names (glob patterns) the stage writes
    besides :data:`COMMON_OUTPUTS`; ``keep``: the caller's own entries; ``finished_marker``: the
    file a finished run leaves (None when the stage's last checkpoint marks the end)."""
    run = Path(run_dir)
    if resume and overwrite:
        raise AlignloopError("--resume and --overwrite exclude each other", "pass one of them")
    keep = tuple(keep)
    if resume:
        finished = finished_marker is not None and (run / finished_marker).exists()
        ckpt = None if finished else latest_checkpoint(run)
        if ckpt is None and not finished:
            raise AlignloopError(
                f"nothing to resume: {run} holds no {stage} checkpoint",
                "drop --resume to start a new run (add --overwrite when the folder is not empty)",
            )
        check_same_config(run, cfg)
        return RunFolder(run, ckpt, finished)
    if not _is_main_rank() or not run.exists():
        return RunFolder(run)
    if not run.is_dir():
        raise AlignloopError(f"{run} is a file, not a run folder", "choose another --out folder")
    present = sorted(p.name for p in run.iterdir() if not _matches(p.name, keep))
    if not present:
        return RunFolder(run)
    if not overwrite:
        raise AlignloopError(f"{run} is not empty: it already holds {_listing(present)}", FLAGS_HINT)
    ours = (*COMMON_OUTPUTS, *outputs)
    foreign = [n for n in present if not _matches(n, ours)]
    if foreign:
        raise AlignloopError(
            f"--overwrite deletes only what a {stage} run writes, and {run} also holds {_listing(foreign)}",
            "move those out, or choose another --out folder (nothing was deleted)",
        )
    for name in present:
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return RunFolder(run)
