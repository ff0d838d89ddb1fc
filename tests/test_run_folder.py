"""open_run(): what a trainer may find in its --out folder (train/run_folder.py). No model needed:
a checkpoint is a step folder with a trainer_state.pt, a run is its config.yaml."""

from __future__ import annotations

import os

import pytest

from alignloop.config import SFTConfig, dump_config
from alignloop.errors import AlignloopError
from alignloop.train.checkpoint import STATE_FILE
from alignloop.train.run_folder import can_resume, changed_fields, open_run


def _fake_run(run, cfg, step: int | None = 2) -> None:
    dump_config(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    if step is not None:
        ckpt = run / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / STATE_FILE).write_bytes(b"")


def test_a_fresh_run_needs_an_empty_folder(tmp_path) -> None:
    cfg = SFTConfig()
    assert open_run(tmp_path / "new", cfg, stage="SFT").checkpoint is None  # absent: fine
    (tmp_path / "empty").mkdir()
    assert not open_run(tmp_path / "empty", cfg, stage="SFT").resuming
    _fake_run(tmp_path / "run", cfg)
    with pytest.raises(AlignloopError) as err:
        open_run(tmp_path / "run", cfg, stage="SFT")
    msg = str(err.value)
    assert f"{tmp_path / 'run'} is not empty: it already holds checkpoints, config.yaml, metrics.jsonl" in msg
    assert "--resume" in msg and "--overwrite" in msg
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "best_of_n.jsonl").write_text("{}\n")  # the caller's own file, named in keep
    assert not open_run(tmp_path / "own", cfg, stage="SFT", keep=["best_of_n.jsonl"]).resuming
    with pytest.raises(AlignloopError, match="exclude each other"):
        open_run(tmp_path / "run", cfg, stage="SFT", resume=True, overwrite=True)


def test_resume_finds_the_checkpoint_and_names_every_changed_field(tmp_path) -> None:
    cfg = SFTConfig()
    _fake_run(tmp_path / "run", cfg)
    opened = open_run(tmp_path / "run", cfg, stage="SFT", resume=True)
    assert opened.checkpoint == tmp_path / "run" / "checkpoints" / "step-000002" and not opened.finished
    changed = SFTConfig(lr=1e-3, epochs=7)
    changed.distributed.dtype = "bf16"
    with pytest.raises(
        AlignloopError, match=r"config differs from the run's config.yaml in distributed\.dtype, epochs, lr"
    ):
        open_run(tmp_path / "run", changed, stage="SFT", resume=True)
    assert changed_fields({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "d": 3, "e": 0}) == ["a.c", "e"]


def test_resume_without_a_checkpoint_is_an_error_but_a_finished_run_is_returned(tmp_path) -> None:
    cfg = SFTConfig()
    _fake_run(tmp_path / "run", cfg, step=None)  # died before its first checkpoint
    assert not can_resume(tmp_path / "run")
    with pytest.raises(AlignloopError, match="nothing to resume: .* holds no SFT checkpoint"):
        open_run(tmp_path / "run", cfg, stage="SFT", resume=True)
    (tmp_path / "run" / "finished.json").write_text("{}")
    assert can_resume(tmp_path / "run", "finished.json")
    assert open_run(tmp_path / "run", cfg, stage="SFT", resume=True, finished_marker="finished.json").finished


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path) -> None:
    cfg = SFTConfig()
    run = tmp_path / "run"
    _fake_run(run, cfg)
    (run / "final").mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "model").mkdir()  # another stage's output (a reward model) is not an SFT run's either
    with pytest.raises(AlignloopError, match=r"also holds model, notes.txt") as err:
        open_run(run, cfg, stage="SFT", overwrite=True, outputs=("final",))
    assert "nothing was deleted" in str(err.value)
    assert sorted(os.listdir(run)) == ["checkpoints", "config.yaml", "final", "metrics.jsonl", "model", "notes.txt"]
    (run / "notes.txt").unlink()
    (run / "model").rmdir()
    assert not open_run(run, cfg, stage="SFT", overwrite=True, outputs=("final",)).resuming
    assert os.listdir(run) == []


def test_only_rank_zero_judges_and_clears_the_folder(tmp_path, monkeypatch) -> None:
    cfg = SFTConfig()
    _fake_run(tmp_path / "run", cfg)
    monkeypatch.setenv("RANK", "1")  # rank 0 decides; a second rank must not race its first writes
    assert not open_run(tmp_path / "run", cfg, stage="SFT", overwrite=True).resuming
    assert (tmp_path / "run" / "config.yaml").exists()
