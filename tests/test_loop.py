"""The loop and the demo on the tiny model: rounds, ranking sources, stopping rule, artifacts."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from alignloop.config import LoopConfig, PanelConfig, load_config
from alignloop.data.jsonl import read_jsonl
from alignloop.data.records import Prompt, Ranking
from alignloop.errors import AlignloopError
from alignloop.labelers import GoldJudge, SimulatedPanel
from alignloop.loop import PanelRankingSource, ranking_source
from alignloop.train.runlog import read_metrics


def test_panel_source_gives_overlap_rankings_per_item_with_sources() -> None:
    panel = SimulatedPanel(
        PanelConfig(n_labelers=4, n_groups=2, careless_fraction=0.0, length_lover_fraction=0.0), GoldJudge()
    )
    source = PanelRankingSource(panel, overlap=2)
    prompts = [Prompt("p1", "Write a happy poem about the sea.", "u1"), Prompt("p2", "Name three fruits.", "u2")]
    comps = [
        ["The sea is wonderful and happy.", "no", "Waves.", "I love the sea, a happy poem."],
        ["Apple, banana and cherry are three fruits.", "Cars.", "fruit", "Bananas are great."],
    ]
    sources = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    rankings = source.collect_rankings(prompts, comps, sources=sources)
    assert len(rankings) == 4
    assert [r.prompt_id for r in rankings] == ["p1", "p1", "p2", "p2"]
    assert len({r.labeler_id for r in rankings[:2]}) == 2  # two different labelers per item
    assert rankings[2].sources == ["e", "f", "g", "h"]
    assert all(len(r.comparisons()) == 6 for r in rankings)


def test_screened_panel_source_leaves_the_careless_labelers_out() -> None:
    panel = SimulatedPanel(PanelConfig(n_labelers=6, n_groups=3, careless_fraction=0.34), GoldJudge())
    careless = {lab.id for lab in panel.labelers if lab.careless}
    assert len(careless) == 2
    qualified = panel.qualified(0.7)
    assert {lab.id for lab in qualified} == {lab.id for lab in panel.labelers} - careless
    prompts = [Prompt(f"p{i}", f"Write a short happy note number {i} about the sea.", "u") for i in range(12)]
    comps = [["The sea is wonderful and happy.", "no", "Waves.", "I love the sea, a happy note."]] * 12
    everyone = PanelRankingSource(panel, overlap=2).collect_rankings(prompts, comps)
    screened = PanelRankingSource(panel, overlap=2, labelers=qualified).collect_rankings(prompts, comps)
    assert careless & {r.labeler_id for r in everyone}  # 24 rankings over 6 labelers reach them unscreened
    assert len(screened) == 24 and not careless & {r.labeler_id for r in screened}


def test_rm_rankings_all_trains_round_two_on_both_rounds_rankings(tmp_path) -> None:
    from alignloop.demo import demo_config, select_prompts
    from alignloop.loop import LoopInputs, run_loop, start_loop

    cfg = demo_config(tiny=True)
    cfg.rounds, cfg.accept_rule, cfg.rm_rankings = 2, "always", "all"
    cfg.n_rm_prompts, cfg.n_ppo_prompts = 4, 8
    cfg.rm = replace(cfg.rm, epochs=1)
    gen = replace(cfg.ppo.generation, max_new_tokens=4)
    cfg.ppo = replace(cfg.ppo, total_episodes=8, batch_size=8, minibatch_size=4, ppo_epochs=1, generation=gen)
    cfg.ranking_generation = replace(cfg.ranking_generation, max_new_tokens=4)
    cfg.eval = replace(cfg.eval, n_prompts=2, samples_per_prompt=1, bootstrap=20, generation=gen)
    sets = select_prompts(cfg)
    start_loop(cfg, tmp_path / "run", LoopInputs("tiny", sets["rm"], sets["ppo"], sets["eval"]))
    assert run_loop(tmp_path / "run", log=lambda m: None).status == "finished"
    rounds = {r["index"]: r["metrics"] for r in json.loads((tmp_path / "run" / "loop.json").read_text())["rounds"]}
    assert rounds[1]["rm_rankings"] == rounds[1]["rankings"] == 4
    assert rounds[2]["rm_rankings"] == rounds[1]["rankings"] + rounds[2]["rankings"] == 8


def test_service_source_needs_url_and_user() -> None:
    cfg = LoopConfig(ranking_source="service")
    with pytest.raises(AlignloopError, match="feedback_url"):
        ranking_source(cfg, panel=None)


def test_loop_config_validation_names_the_field(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("k: 12\n")
    with pytest.raises(AlignloopError, match="field 'k'"):
        load_config(p)
    p.write_text("rm_init: policy\n")
    with pytest.raises(AlignloopError, match="rm_init"):
        load_config(p)


def test_stop_threshold_ends_the_loop_only_when_the_win_rate_reaches_it() -> None:
    from alignloop.loop import reaches_stop_threshold

    cfg = LoopConfig(stop_threshold=0.6)
    assert not reaches_stop_threshold(cfg, 0.59) and reaches_stop_threshold(cfg, 0.6)
    assert reaches_stop_threshold(cfg, 0.75)
    assert not reaches_stop_threshold(LoopConfig(stop_threshold=None), 1.0)  # no threshold: run every round


@pytest.mark.slow
def test_tiny_demo_runs_the_whole_loop_and_stops_at_threshold(tmp_path, monkeypatch) -> None:
    import alignloop.models as models
    from alignloop.demo import demo_config, run_demo

    loads: list[tuple[str, str]] = []  # (policy, weights dtype) of every sampling-only load
    real_load = models.load_policy
    monkeypatch.setattr(models, "load_policy", lambda p, d="float32", *a: loads.append((p, d)) or real_load(p, d, *a))
    cfg = demo_config(tiny=True)
    cfg.sampling_dtype = "bfloat16"  # what the demo picks on a CPU with native bf16
    cfg.out_dir = str(tmp_path / "demo")
    # any win rate reaches 0: the loop must take the early stop after round 1 (which rates reach which
    # threshold is the unit test above)
    cfg.rounds, cfg.stop_threshold = 2, 0.0
    cfg.rm_init = "sft"  # the paper's RM start (the default, rm.model, runs in the service test below)
    cfg.n_sft_prompts, cfg.n_rm_prompts, cfg.n_ppo_prompts = 8, 6, 16
    cfg.sft = replace(cfg.sft, epochs=1)
    cfg.rm = replace(cfg.rm, epochs=1)
    gen = replace(cfg.ppo.generation, max_new_tokens=8)
    cfg.ppo = replace(cfg.ppo, total_episodes=16, batch_size=8, minibatch_size=4, ppo_epochs=1, generation=gen)
    cfg.ranking_generation = replace(cfg.ranking_generation, max_new_tokens=8)
    cfg.eval = replace(
        cfg.eval,
        n_prompts=4,
        samples_per_prompt=2,
        bootstrap=50,
        generation=replace(cfg.eval.generation, max_new_tokens=8),
    )
    lines: list[str] = []
    result = run_demo(cfg, log=lines.append)

    out = tmp_path / "demo"
    assert "screening: 9 of 10 labelers qualified" in lines  # the careless labeler ranks nothing
    assert "precision: fp32" in lines  # said once, before the first stage
    rounds = json.loads((out / "rounds.json").read_text())
    assert len(rounds) == 1 and rounds[0]["round"] == 1
    rankings = read_jsonl(out / "round-1" / "rankings.jsonl", Ranking)
    assert len(rankings) == 6 and all(r.k == cfg.k for r in rankings)
    assert (out / "round-1" / "rm" / "model").is_dir() and (out / "round-1" / "ppo" / "metrics.jsonl").exists()
    rm_info = json.loads((out / "round-1" / "rm" / "model" / "reward_config.json").read_text())
    assert rm_info["kind"] == "causal" and rm_info["base_model"] == str(result.sft_dir)
    assert rm_info["relevance_model"] == "minilm-l6" and rm_info["relevance_weight"] != 0  # fitted on the rankings
    assert [r for r in read_metrics(out / "round-1" / "rm") if r.get("relevance/weight") == rm_info["relevance_weight"]]
    sampled = {p for p, d in loads if d == "bfloat16"}  # ranking candidates and both evaluated policies
    assert {str(result.sft_dir), str(result.final_policy)} <= sampled
    assert all(d == "bfloat16" for p, d in loads if p in sampled)
    rate = result.win_rate["win_rates"]["ppo"]
    assert rate["n"] == 4 * 2 and rate["ci_low"] <= rate["rate"] <= rate["ci_high"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gold_win_rate"] == rate["rate"]
    page = result.report.read_text()
    assert "sft" in page and "ppo" in page
    with pytest.raises(AlignloopError, match="already holds a demo run"):
        run_demo(cfg, log=lambda m: None)


@pytest.mark.slow
def test_tiny_demo_through_the_service_and_loop_status_on_its_folder(tmp_path) -> None:
    """`alignloop demo --service --tiny`: the service on SQLite in the run folder, simulated labelers
    in a second process, the same report; `loop status` reads the folder; both processes stopped."""
    import subprocess
    import sys

    import httpx
    import yaml

    small = {
        "n_sft_prompts": 8, "n_rm_prompts": 6, "n_ppo_prompts": 16, "poll_seconds": 0.2,
        "sft": {"epochs": 1}, "rm": {"epochs": 1},
        "ppo": {"total_episodes": 16, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 1,
                "generation": {"max_new_tokens": 8}},
        "ranking_generation": {"max_new_tokens": 8},
        "eval": {"n_prompts": 4, "samples_per_prompt": 2, "bootstrap": 50, "generation": {"max_new_tokens": 8}},
    }  # fmt: skip
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    out = tmp_path / "demo"
    cli = [sys.executable, "-m", "alignloop.cli.main"]
    args = ["demo", "--service", "--tiny", "--out", str(out), "--config", str(tmp_path / "small.yaml")]
    p = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "final policy vs SFT, gold-judge win rate on 4 held-out prompts x 2 samples" in p.stdout
    assert re.search(r"screening: \d+ of 10 labelers qualified", p.stdout)
    assert (out / "feedback.db").exists() and (out / "report" / "index.html").exists()
    assert "Rounds of the loop" in (out / "report" / "index.html").read_text()
    state = json.loads((out / "loop.json").read_text())
    r1 = state["rounds"][0]
    assert state["source"] == "service" and r1["stage"] == "decided" and r1["decision"]["judge"] == "human"
    assert {"human", "rm", "gold"} <= set(r1["metrics"]["win_rates"])  # gold exists: the labelers are simulated
    assert set(r1["campaigns"]) == {"rankings", "evaluation"}
    url = yaml.safe_load((out / "config.yaml").read_text())["feedback_url"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)  # the demo stopped its service
    status = subprocess.run([*cli, "loop", "status", str(out)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "rankings #" in status.stdout and "(human)" in status.stdout, status.stdout


def test_loop_gives_up_after_wait_timeout_with_exit_3_and_resumes_without_a_second_push(tmp_path) -> None:
    """No labeler on the service: the loop pushes its ranking campaign, waits `wait_timeout`
    seconds with its progress line, exits 3; a resume finds the campaign by name instead of
    pushing another one."""
    import yaml
    from typer.testing import CliRunner

    from alignloop.cli.main import app
    from alignloop.config import FeedbackConfig
    from alignloop.feedback.accounts import create_admin
    from alignloop.feedback.app import create_app
    from alignloop.feedback.client import FeedbackClient
    from feedback_fixtures import live_server

    db = f"sqlite:///{tmp_path / 'f.db'}"
    with live_server(create_app(FeedbackConfig(database_url=db))) as url:
        token = create_admin(db, "root", token=True).token
        gen = {"max_new_tokens": 4}
        cfg = {"policy": {"name": "tiny"}, "ranking_source": "service", "feedback_url": url, "n_rm_prompts": 2,
               "wait_timeout": 0.5, "poll_seconds": 0.1, "ranking_generation": gen}  # fmt: skip
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        out = tmp_path / "run"
        env = {"ALIGNLOOP_FEEDBACK_TOKEN": token}
        args = ["loop", str(tmp_path / "c.yaml"), "--out", str(out), "--policy", "tiny"]
        first = CliRunner().invoke(app, args, env=env)
        assert first.exit_code == 3, first.output
        assert re.search(r"round 1: waiting for campaign 1 \(rankings\): 0 of 2 items done \(overlap 1\)", first.output)
        assert "gave up waiting" in first.output
        again = CliRunner().invoke(app, ["loop", "--resume", str(out), "--no-wait"], env=env)
        assert again.exit_code == 0 and "waiting for campaign 1 (rankings)" in again.output, again.output
        assert [c["name"] for c in FeedbackClient(url, token).campaigns()] == [
            json.loads((out / "loop.json").read_text())["rounds"][0]["campaigns"]["rankings"]["name"]
        ]
