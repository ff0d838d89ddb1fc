"""README's "A walk through the loop by hand", run literally: every command of its bash blocks,
in order, in one shell, on the tiny model (MODEL=tiny). Between the blocks the people the prose
describes label through the API (tests/readme_people.py). The transcript is kept in the test's
tmp folder (walkthrough.log) to show what a README-only user sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## A walk through the loop by hand"
PASSWORDS = ["alice-password-1", "bob-password-1", "carol-password-1"]  # one line each, in the README's order


def walkthrough_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """The ```bash blocks of the walkthrough section, in order."""
    text = readme.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end > 0 else None]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_the_walkthrough_names_every_step_it_needs():
    blocks = walkthrough_blocks()
    assert len(blocks) == 3
    commands = " ".join(blocks)
    for needed in ("admin create alice", "serve --db sqlite:///feedback.db", "sample --policy runs/sft/final",
                   "rm train", "ppo --policy", "eval --policy", "report runs/"):  # fmt: skip
        assert needed in commands
    assert commands.count("--db sqlite:///feedback.db") == 2  # admin create and serve use one database


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    blocks = walkthrough_blocks()
    people = f"{sys.executable} {ROOT / 'tests' / 'readme_people.py'}"
    script = "\n".join(
        [
            "set -euo pipefail",
            "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",  # the service started with '&'
            "set -x",
            blocks[0],
            people,
            blocks[1],
            people,
            blocks[2],
        ]
    )
    (tmp_path / "walkthrough.sh").write_text(script, encoding="utf-8")
    os.symlink(sys.prefix, tmp_path / ".venv")
    port = free_port()
    env = os.environ | {
        "MODEL": "tiny",
        "ALIGNLOOP_FEEDBACK_PORT": str(port),
        "ALIGNLOOP_FEEDBACK_URL": f"http://127.0.0.1:{port}",
        "ALIGNLOOP_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the tiny model's ops are too small to split: one thread is several times faster
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("ALIGNLOOP_FEEDBACK_TOKEN", None)
    stdin = "".join(f"{p}\n" for p in PASSWORDS)  # not a terminal: each --ask-password reads one line
    proc = subprocess.run(
        ["bash", "walkthrough.sh"], cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True,
        timeout=1800, start_new_session=True,  # no controlling terminal
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    (tmp_path / "walkthrough.log").write_text(log, encoding="utf-8")
    assert proc.returncode == 0, log[-6000:]
    assert (tmp_path / "alice.token").read_text().startswith("alk_")
    assert (tmp_path / "runs" / "sft" / "final").is_dir()
    assert (tmp_path / "runs" / "rm" / "model").is_dir()
    assert (tmp_path / "runs" / "ppo" / "policy").is_dir()
    assert (tmp_path / "runs" / "report" / "index.html").exists()
    assert "headline figures" in proc.stdout and "pairwise agreement" in proc.stdout
    assert re.search(r"Fleiss' kappa -?\d\.\d{3}, Krippendorff's alpha -?\d\.\d{3}\n", proc.stdout)  # rounded
    n_demos = sum(1 for _ in open(tmp_path / "demos.jsonl"))
    n_rankings = sum(1 for _ in open(tmp_path / "rankings.jsonl"))
    n_items = sum(1 for _ in open(tmp_path / "rm_items.jsonl"))
    assert n_demos == sum(1 for _ in open(tmp_path / "data" / "sft_train.jsonl"))
    assert n_rankings == 2 * n_items  # overlap 2: both labelers ranked every item
