"""A run folder: the resolved config, metrics as JSONL and TensorBoard, and progress bars.

Every training stage (SFT, RM, best-of-N, PPO) writes the same layout so reports and resumes
read one format::

    RUN_DIR/config.yaml        the resolved config of this run
    RUN_DIR/metrics.jsonl      one JSON object per logged step: {"step": n, "<name>": value, ...}
    RUN_DIR/tb/                TensorBoard events with the same names
    RUN_DIR/checkpoints/       see :mod:`alignloop.train.checkpoint`
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alignloop.config import dump_config

T = TypeVar("T")

#: The metrics a progress bar shows, in this order, by the stage's own names (SFT and RM loss,
#: RM accuracy, PPO's reward and KL); the newest value of each that was logged is shown.
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("train/loss", "loss"),
    ("train/accuracy", "acc"),
    ("val/loss", "val loss"),
    ("val/accuracy", "val acc"),
    ("rm_score", "reward"),
    ("kl", "KL"),
    ("score_gold", "gold"),
)
_latest: dict[str, float] = {}  # the newest logged value of each key metric, read by track()


def key_metrics_text() -> str:
    """ "loss 1.234  KL 0.012" from the newest logged values (empty before the first log)."""
    return "  ".join(f"{short} {_latest[k]:.4g}" for k, short in KEY_METRICS if k in _latest)


class RunLog:
    """Metrics sink for one run. ``resume_step`` drops metrics logged after the checkpoint being
    resumed, so an interrupted-and-resumed run's metrics.jsonl equals an uninterrupted one's."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Any = None,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        _latest.clear()
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            dump_config(config, self.dir / "config.yaml")
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one row; non-finite floats are written as null so the JSONL stays valid."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            row[k] = v
        _latest.update({k: row[k] for k, _ in KEY_METRICS if isinstance(row.get(k), (int, float))})
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl (empty if none)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """A rich progress bar over ``items`` (silent when disabled, e.g. on non-main ranks)."""
    if not enabled or os.environ.get("ALIGNLOOP_NO_PROGRESS") == "1":
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total if total is not None else _len(items), metrics="")
        for item in items:
            yield item
            progress.update(task, advance=1, metrics=key_metrics_text())


def _len(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class Timer:
    """Accumulates wall seconds per phase (generate / score / train) for the logs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds[self.name] = self.timer.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0
