"""Config: YAML onto one dataclass per stage; unknown keys and wrong types name the key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import LoopConfig, SFTConfig, dump_config, load_config
from alignloop.errors import AlignloopError


def test_defaults_and_override(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("sft:\n  lr: 1.0e-4\n  epochs: 3\n  model:\n    dtype: bfloat16\nrounds: 2\n")
    cfg = load_config(p)
    assert cfg.sft.lr == 1e-4 and cfg.sft.epochs == 3 and cfg.sft.model.dtype == "bfloat16"
    assert cfg.rounds == 2 and cfg.rm == LoopConfig().rm


def test_int_accepted_for_float_and_tuple_fields(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  split_fractions: [0.5, 0.25, 0.25]\nppo:\n  beta: 1\n")
    cfg = load_config(p)
    assert cfg.data.split_fractions == (0.5, 0.25, 0.25) and cfg.ppo.beta == 1.0


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("sft:\n  lrr: 1\n", "field 'sft.lrr': unknown key"),
        ("sft:\n  lr: fast\n", "field 'sft.lr': expected a number"),
        ("sft:\n  epochs: 1.5\n", "field 'sft.epochs': expected an integer"),
        ("sft:\n  model:\n    dtype: int8\n", "field 'sft.model.dtype'"),
        ("data:\n  split_fractions: [0.5, 0.5, 0.5]\n", "field 'data.split_fractions'"),
        ("ppo: 3\n", "field 'ppo'"),
        ("ppo:\n  adam_beta2: 0.99\n", "field 'ppo.adam_beta2': unknown key"),  # the old spelling of adam_betas
        ("- a\n- b\n", "top level must be a mapping"),
        ("sft: [\n", "invalid YAML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(AlignloopError) as err:
        load_config(p)
    assert needle in str(err.value)
    assert str(p) in str(err.value)


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo", "dpo"])
def test_every_stage_spells_adamw_settings_alike(tmp_path, stage: str) -> None:
    """``adam_betas`` (two numbers in [0, 1)) and ``adam_eps`` (positive), with one check, in every
    trainer's config; the old PPO keys ``adam_beta1``/``adam_beta2`` are unknown keys, and the error
    lists the one to use."""
    p = tmp_path / "c.yaml"
    p.write_text(f"{stage}:\n  adam_betas: [0.8, 0.99]\n  adam_eps: 1.0e-6\n")
    cfg = getattr(load_config(p), stage)
    assert cfg.adam_betas == (0.8, 0.99) and cfg.adam_eps == 1e-6
    for bad, needle in (
        ("adam_betas: [0.9, 1.0]", r"field 'STAGE.adam_betas': must be two numbers in \[0, 1\), got \[0.9, 1.0\]"),
        ("adam_betas: [0.9]", "field 'STAGE.adam_betas': expected 2 items, got 1"),
        ("adam_eps: 0", "field 'STAGE.adam_eps': must be positive, got 0"),
        ("adam_beta1: 0.9", r"field 'STAGE.adam_beta1': unknown key \(known keys: .*adam_betas, adam_eps"),
    ):
        p.write_text(f"{stage}:\n  {bad}\n")
        with pytest.raises(AlignloopError, match=needle.replace("STAGE", stage)):
            load_config(p)


def test_ppo_keeps_its_adamw_defaults() -> None:
    from alignloop.config import PPOConfig

    assert PPOConfig().adam_betas == (0.9, 0.999) and PPOConfig().adam_eps == 1e-5


def test_stage_config_round_trip(tmp_path) -> None:
    cfg = SFTConfig(epochs=5, lr=3e-5)
    dump_config(cfg, tmp_path / "sft.yaml")
    assert load_config(tmp_path / "sft.yaml", SFTConfig) == cfg


def test_cli_config_show_prints_resolved_config_and_one_line_errors(tmp_path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text("ppo:\n  beta: 0.02\n")
    result = runner.invoke(app, ["config", "show", str(good)])
    assert result.exit_code == 0, result.output
    assert "beta: 0.02" in result.output and "max_prompts_per_user: 200" in result.output


def test_cli_error_is_one_line_without_traceback(tmp_path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lrr: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "alignloop.cli.main", "config", "show", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sft.lrr" in lines[0] and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "alignloop.cli.main", "--debug", "config", "show", str(bad)],
        capture_output=True,
        text=True,
    )
    assert "Traceback" in proc.stderr


def test_example_configs_are_valid() -> None:
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml"))
    assert examples, "examples/configs/ holds the documented configs"
    from alignloop.config import CompareConfig

    for path in examples:
        cls = CompareConfig if path.name == "compare.yaml" else LoopConfig  # `alignloop compare` takes its own
        assert isinstance(load_config(path, cls), cls)


def test_yaml_numbers_in_scientific_notation_are_numbers(tmp_path) -> None:
    from alignloop.config import SFTConfig, load_config, load_yaml

    p = tmp_path / "sft.yaml"
    p.write_text("lr: 1e-4\nweight_decay: 5E-2\nwarmup_ratio: .5\nepochs: 3\n", encoding="utf-8")
    assert load_yaml(p) == {"lr": 1e-4, "weight_decay": 0.05, "warmup_ratio": 0.5, "epochs": 3}
    cfg = load_config(p, SFTConfig)
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.epochs == 3
    p.write_text("model:\n  name: 1e4-model\n", encoding="utf-8")  # not a number: stays a string
    assert load_yaml(p) == {"model": {"name": "1e4-model"}}


def test_resume_on_another_stages_folder_says_so(tmp_path) -> None:
    import yaml

    from alignloop.config import PPOConfig, RMConfig, SFTConfig, config_to_dict, dump_config, load_stage_config
    from alignloop.errors import AlignloopError

    dump_config(RMConfig(), tmp_path / "config.yaml")
    with pytest.raises(AlignloopError) as err:
        load_stage_config(None, SFTConfig, "sft", run_dir=tmp_path, resume=True)
    assert str(err.value) == (
        f"cannot resume {tmp_path} as a sft run: it holds a rm run (see its config.yaml) "
        "(resume it with `alignloop rm ... --resume`, or give this sft run a new --out)"
    )
    assert load_stage_config(None, RMConfig, "rm", run_dir=tmp_path, resume=True) == RMConfig()
    with pytest.raises(AlignloopError, match="it holds a rm run"):
        load_stage_config(None, PPOConfig, "ppo", run_dir=tmp_path, resume=True)
    # a PPO run saved before adam_beta1/adam_beta2 became adam_betas: the old keys are named
    saved = config_to_dict(PPOConfig())
    del saved["adam_betas"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved | {"adam_beta1": 0.9, "adam_beta2": 0.999}))
    with pytest.raises(AlignloopError, match=r"another stage \(keys not in ppo: adam_beta1, adam_beta2\)"):
        load_stage_config(None, PPOConfig, "ppo", run_dir=tmp_path, resume=True)


def test_progress_bars_show_the_newest_key_metrics(tmp_path) -> None:
    from alignloop.train.runlog import RunLog, key_metrics_text

    log = RunLog(tmp_path, tensorboard=False)
    assert key_metrics_text() == ""
    log.log(1, {"train/loss": 2.5, "train/lr": 1e-3})
    log.log(2, {"train/loss": 1.25, "val/loss": 1.5})
    assert key_metrics_text() == "loss 1.25  val loss 1.5"
    RunLog(tmp_path / "ppo", tensorboard=False).log(1, {"rm_score": 0.5, "kl": 0.0123456})
    assert key_metrics_text() == "reward 0.5  KL 0.01235"  # a new run starts afresh
