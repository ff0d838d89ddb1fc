"""Two rounds (plus round 0) on the tiny model through the real feedback service (SQLite and
PostgreSQL), with `alignloop feedback simulate` labeling in its own process and the loop process
SIGKILLed once while it waits for labels and once inside PPO: no campaign is pushed twice, and
the resumed run ends in the same state, rankings and metrics as an uninterrupted run with the
same seeds (compared on SQLite).
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alignloop.config import FeedbackConfig
from alignloop.feedback.accounts import create_admin
from alignloop.feedback.app import create_app
from alignloop.feedback.client import FeedbackClient
from alignloop.train.checkpoint import CRASH_ENV, list_checkpoints
from alignloop.train.runlog import read_metrics
from feedback_fixtures import database_url, live_server, pg_database, pg_url  # noqa: F401

WAITING = re.compile(r"round (\d+): waiting for campaign (\d+) \((\w+)\): (\d+) of (\d+) items done \(overlap (\d+)\)")
LABELERS = 4


def loop_config(url: str) -> dict:
    gen = {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 16}
    return {
        "policy": {"name": "tiny"},
        "ranking_source": "service",
        "feedback_url": url,
        "rounds": 2,
        "accept_rule": "always",  # round 2 must start from round 1's policy (the reference check)
        "demonstration_round": True,
        "n_sft_prompts": 4,
        "n_rm_prompts": 3,
        "n_ppo_prompts": 8,
        "k": 4,
        "poll_seconds": 0.1,
        "eval_overlap": 2,  # 3 items x 2 labelers: every one of the 4 labelers, the held-out one too, judges
        "wait_timeout": 300,
        "sft": {"epochs": 1, "batch_size": 4, "max_length": 64, "eval_at_start": False, "eval_prompts": 0,
                "lr": 1e-3},
        "rm": {"model": {"name": "tiny"}, "epochs": 1, "lr": 1e-3, "prompts_per_step": 2, "max_length": 64,
               "val_fraction": 0.34},
        "ppo": {"total_episodes": 12, "batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "lr": 1e-3,
                "checkpoint_every": 1, "no_eos_penalty": None, "generation": gen},
        "ranking_generation": gen,
        "eval": {"n_prompts": 3, "samples_per_prompt": 1, "bootstrap": 20, "generation": gen},
    }  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignloop.cli.main", *args]


def run(*args: str, env: dict, timeout: float = 600) -> str:
    p = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"alignloop {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


LOGS: dict[int, Path] = {}


def start(*args: str, env: dict, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cli(*args), env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    LOGS[proc.pid] = log
    return proc


def poll_until(what: str, check, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            tail = LOGS[proc.pid].read_text()[-3000:]
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state(out: Path) -> dict:
    return json.loads((out / "loop.json").read_text())


def comparable(out: Path) -> dict:
    """The state without what differs between two runs by design: run id, campaign names and ids,
    timings, and the run folder in paths."""
    text = (out / "loop.json").read_text().replace(str(out), "OUT")
    s = json.loads(text)
    s.pop("run_id")
    for r in s["rounds"]:
        r.pop("seconds", None)
        for c in r["campaigns"].values():
            for k in ("id", "name", "item_ids"):
                c.pop(k, None)
    return s


def ppo_metrics(out: Path, i: int) -> list[dict]:
    rows = [json.loads(x) for x in (out / f"round-{i}" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]


class Run:
    """A service (in this process), its admin, and the environment for the CLI processes."""

    def __init__(self, url: str, db_url: str, tmp: Path, name: str) -> None:
        self.url, self.db_url, self.dir = url, db_url, tmp / name
        self.dir.mkdir()
        token = create_admin(db_url, "loop-admin", token=True).token
        self.admin = FeedbackClient(url, token)
        self.env = os.environ | {"ALIGNLOOP_FEEDBACK_TOKEN": token, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.cfg = self.dir / "loop.yaml"
        self.cfg.write_text(yaml.safe_dump(loop_config(url)))
        self.out = self.dir / "run"

    def simulate(self, *extra: str) -> list[str]:
        return ["feedback", "simulate", "--url", self.url, "--labelers", str(LABELERS), "--held-out-group", "1",
                "--poll", "0.1", *extra]  # fmt: skip

    def campaigns(self) -> list[dict]:
        return self.admin.campaigns()


def _service(db_url: str):
    return live_server(create_app(FeedbackConfig(database_url=db_url)))


@pytest.mark.slow
def test_two_rounds_through_the_service_survive_sigkill_and_match_an_uninterrupted_run(database_url, tmp_path):
    # -- the interrupted run ------------------------------------------------------------------------------
    with _service(database_url) as url:
        a = Run(url, database_url, tmp_path, "interrupted")
        run(*a.simulate("--until-idle"), env=a.env)  # accounts only: no task yet
        assert len([u for u in a.admin.users() if u["role"] == "labeler"]) == LABELERS

        # 1. --no-wait: round 0 pushes its demonstration campaign and exits 0 with the waiting line.
        first = run("loop", str(a.cfg), "--out", str(a.out), "--no-wait", env=a.env)
        m = WAITING.search(first)
        assert m and m.group(1) == "0" and m.group(3) == "demonstrations" and m.group(4) == "0", first
        status = run("loop", "status", str(a.out), env=a.env)
        assert "collect (waiting)" in status and "demonstrations #" in status and WAITING.search(status)

        # 2. SIGKILL while waiting for labels (nothing labels yet), then resume with labelers at work.
        waiting = start("loop", "--resume", str(a.out), env=a.env, log=tmp_path / "wait.log")
        poll_until("the resumed loop waits", lambda: WAITING.search((tmp_path / "wait.log").read_text()), waiting)
        waiting.send_signal(signal.SIGKILL)
        waiting.wait()
        assert len(a.campaigns()) == 1
        labelers = start(*a.simulate(), env=a.env, log=tmp_path / "simulate.log")
        try:
            # 3. SIGKILL inside round 1's PPO, right after its first checkpoint (the process kills itself
            #    there: a poll-then-kill from here would race the trainer on a loaded machine); resume.
            crash = a.env | {CRASH_ENV: "ppo:1"}
            loop = start("loop", "--resume", str(a.out), env=crash, log=tmp_path / "ppo.log")
            ppo_dir = a.out / "round-1" / "ppo"
            assert loop.wait(timeout=900) == -signal.SIGKILL, (tmp_path / "ppo.log").read_text()[-2000:]
            assert [p.name for p in list_checkpoints(ppo_dir)] == ["step-000001"]
            r1 = state(a.out)["rounds"][1]
            assert r1["index"] == 1 and r1["stage"] == "rl", "the kill must land inside PPO"
            done = run("loop", "--resume", str(a.out), env=a.env)
            assert "finished" in done, done
        finally:
            labelers.send_signal(signal.SIGTERM)
            labelers.wait(timeout=30)
        camps = a.campaigns()
        status = run("loop", "status", str(a.out), env=a.env)

    # No campaign pushed twice: round 0's demonstrations, then rankings + evaluation per round.
    assert sorted(c["name"].split("-", 2)[2] for c in camps) == [
        "r0-demonstrations", "r1-evaluation", "r1-rankings", "r2-evaluation", "r2-rankings"]  # fmt: skip
    s = state(a.out)
    for r in s["rounds"]:
        for rec in r["campaigns"].values():
            live = next(c for c in camps if c["id"] == rec["id"])
            assert live["n_items"] == rec["n_items"]  # no item uploaded twice either
    assert [r["stage"] for r in s["rounds"]] == ["decided"] * 3 and s["finished"]
    r2 = s["rounds"][2]
    assert r2["policy"] == s["rounds"][1]["artifacts"]["policy"]  # round 2 started from round 1's policy...
    assert f"round 2: PPO from {r2['policy']}, KL reference {s['sft_policy']}" in done
    # ...with the KL to the SFT policy: what its PPO run logged last, and far from 0 from the first
    # iteration on (round 1 starts at its reference, KL ~0; round 2 starts at round 1's policy)
    ppo_kl = {i: [row["kl"] for row in read_metrics(a.out / f"round-{i}" / "ppo")] for i in (1, 2)}
    assert r2["metrics"]["kl_to_sft"] == ppo_kl[2][-1]
    assert abs(ppo_kl[2][0]) > 100 * abs(ppo_kl[1][0]), ppo_kl
    for r in s["rounds"][1:]:
        w = r["metrics"]["win_rates"]
        assert {"human", "rm"} <= set(w) and "gold" not in w  # no gold judge with people
        assert r["decision"]["judge"] == "human" and r["decision"]["rate"] == w["human"]["rate"]
        assert r["metrics"]["rankings_held_out_group"] > 0 and "rm_accuracy_held_out_group" in r["metrics"]
        assert "human_held_out" in w and "human_training" in w
    assert "finished" in status and "accepted (human)" in status

    # -- the same run without interruptions (on SQLite only: the database does not change the arithmetic) ----
    if not database_url.startswith("sqlite"):
        return
    fresh = f"sqlite:///{tmp_path / 'second.db'}"
    with _service(fresh) as url:
        b = Run(url, fresh, tmp_path, "uninterrupted")
        run(*b.simulate("--until-idle"), env=b.env)
        labelers = start(*b.simulate(), env=b.env, log=tmp_path / "simulate-b.log")
        try:
            run("loop", str(b.cfg), "--out", str(b.out), env=b.env)
        finally:
            labelers.send_signal(signal.SIGTERM)
            labelers.wait(timeout=30)
    assert comparable(a.out) == comparable(b.out)
    for i in (1, 2):
        assert (a.out / f"round-{i}" / "rankings.jsonl").read_text() == (
            b.out / f"round-{i}" / "rankings.jsonl"
        ).read_text()
        assert ppo_metrics(a.out, i) == ppo_metrics(b.out, i)
