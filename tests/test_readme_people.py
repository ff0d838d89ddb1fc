"""The README's "loop with people" commands, run as written (on the tiny model): the service,
its admin, groups, a labeler, simulated labelers, screening, the loop with --no-wait and
--resume until it finishes, `loop status` and the report.

What the test changes, and only that: the database file and the run folder live in a temporary
folder, the service listens on a free port (``$ALIGNLOOP_FEEDBACK_URL`` says which), and
`examples/configs/people.yaml` is loaded and shrunk (tiny model, a few prompts, one round)
into a temporary copy.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from feedback_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The loop with people", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.split("  #", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def tiny_people_config(path: Path, url: str) -> Path:
    cfg = yaml.safe_load((ROOT / "examples/configs/people.yaml").read_text())
    gen = {"max_new_tokens": 6, "temperature": 1.0}
    cfg.update(
        feedback_url=url, rounds=1, n_sft_prompts=4, n_rm_prompts=3, n_ppo_prompts=8, poll_seconds=0.1,
        policy={"name": "tiny"}, ranking_generation=gen,
        sft={"epochs": 1, "batch_size": 4, "max_length": 64, "eval_at_start": False, "eval_prompts": 0},
        rm={"model": {"name": "tiny"}, "epochs": 1, "lr": 1e-3, "max_length": 64, "val_fraction": 0.34},
        ppo={"total_episodes": 8, "batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "no_eos_penalty": None,
             "generation": gen},
        eval={"n_prompts": 3, "samples_per_prompt": 1, "bootstrap": 20, "generation": gen},
    )  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_readme_people_path_runs_as_written(tmp_path):
    commands = readme_commands()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    subs = {
        "sqlite:///feedback.db": f"sqlite:///{tmp_path / 'feedback.db'}",
        "http://127.0.0.1:8000": url,
        "examples/configs/people.yaml": str(tiny_people_config(tmp_path / "people.yaml", url)),
        "examples/screening.jsonl": str(ROOT / "examples/screening.jsonl"),
        "runs/people": str(tmp_path / "people"),
    }
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "ALIGNLOOP_FEEDBACK_URL": url}  # --server's default
    server = None
    ran: list[str] = []

    def run(cmd: str) -> str:
        for old, new in subs.items():
            cmd = cmd.replace(old, new)
        args = shlex.split(cmd)
        assert args[0] == "alignloop"
        p = subprocess.run([sys.executable, "-m", "alignloop.cli.main", *args[1:]], env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    try:
        for cmd in commands:
            ran.append(cmd)
            if cmd.startswith("export ALIGNLOOP_FEEDBACK_TOKEN="):
                continue  # done below, from what `admin create` printed
            if cmd.startswith("alignloop serve"):
                args = shlex.split(cmd.replace("sqlite:///feedback.db", subs["sqlite:///feedback.db"]))
                server = subprocess.Popen([sys.executable, "-m", "alignloop.cli.main", *args[1:], "--port", str(port)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline and server.poll() is None, "alignloop serve did not start"
                    time.sleep(0.2)
                continue
            out = run(cmd)
            if cmd.startswith("alignloop feedback admin create"):
                env["ALIGNLOOP_FEEDBACK_TOKEN"] = re.search(r"API token \(shown once\): (\S+)", out).group(1)
            if cmd.startswith("alignloop loop examples"):
                assert re.search(r"round 0: waiting for campaign \d+ \(demonstrations\): 0 of \d+ items done", out)
            if cmd.startswith("alignloop feedback screen"):
                assert re.search(r"sim-labeler-\d+ .* no", out), out  # the careless labeler failed
        # Labels come in, the loop continues: the same two commands until it is finished.
        resume = next(c for c in commands if c.startswith("alignloop loop --resume"))
        simulate = next(c for c in commands if c.startswith("alignloop feedback simulate") and "held-out" not in c)
        for _ in range(8):
            if "finished" in run(resume):
                break
            run(simulate)
        status = run("alignloop loop status runs/people")
        assert "finished" in status and "decided" in status
        run("alignloop report runs/people")  # again, now with the finished round
        page = (tmp_path / "people" / "report" / "index.html").read_text()
        assert "Rounds of the loop" in page
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    assert len(ran) == len(commands)
