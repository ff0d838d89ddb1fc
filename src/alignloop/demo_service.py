"""``alignloop demo --service``: the demo through the real feedback service, labeled over HTTP.

The demo starts ``alignloop serve`` on an embedded SQLite database inside the run folder
(``OUT/feedback.db``), makes an admin, and starts ``alignloop feedback simulate`` in a second
process: the simulated panel's labelers get accounts and label over HTTP as people would. The
demo then screens them (a gold-labeled screening campaign, the researchers' answers standing in
as the gold judge's order; the careless labelers fail it), runs the loop with
``ranking_source: service`` (rankings and the evaluation campaign answered by the qualified
labelers; one panel group held out) and stops both processes at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from alignloop.config import LoopConfig, config_to_dict
from alignloop.errors import AlignloopError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignloop.cli.main", *args]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until(what: str, check: Callable[[], bool], proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise AlignloopError(f"{what}: the process exited with status {proc.returncode}", tail.strip())
        if time.monotonic() > deadline:
            raise AlignloopError(f"{what}: not ready after {timeout:.0f} s", f"see {log_path}")
        time.sleep(0.2)


@contextlib.contextmanager
def demo_service(out: Path, cfg: LoopConfig, log: Callable[[str], None] = print) -> Iterator[tuple[Any, LoopConfig]]:
    """Serve, enrol the simulated labelers, screen them; yield (admin client, the config for the loop)."""
    import httpx

    from alignloop.feedback.accounts import create_admin
    from alignloop.feedback.client import FeedbackClient
    from alignloop.feedback.db import migrate

    out.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{(out / 'feedback.db').resolve()}"
    migrate(db)
    token = create_admin(db, "demo-admin", token=True).token
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"ALIGNLOOP_FEEDBACK_TOKEN": token}
    procs: list[subprocess.Popen] = []
    try:
        server_log = out / "service.log"
        procs.append(
            subprocess.Popen(
                _cli("serve", "--db", db, "--port", str(port)), env=env, stdout=server_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            return False

        _wait_until("alignloop serve", healthy, procs[0], server_log, 120)
        log(f"feedback service on {url} (database {db})")
        admin = FeedbackClient(url, token)

        # The simulated panel as labelers, in their own process.
        panel_file = out / "panel.yaml"
        panel_file.write_text(yaml.safe_dump({"panel": config_to_dict(cfg.panel)}))
        held_out = cfg.panel.n_groups - 1 if cfg.panel.n_groups > 1 else None
        sim_log = out / "simulate.log"
        args = ["feedback", "simulate", "--url", url, "--labelers", str(cfg.panel.n_labelers), "--config",
                str(panel_file), "--poll", "0.2"]  # fmt: skip
        args += ["--held-out-group", str(held_out)] if held_out is not None else []
        procs.append(subprocess.Popen(_cli(*args), env=env, stdout=sim_log.open("w"), stderr=subprocess.STDOUT))
        n = cfg.panel.n_labelers
        _wait_until(
            "feedback simulate", lambda: sum(u["role"] == "labeler" for u in admin.users()) >= n, procs[1], sim_log, 300
        )
        log(f"{n} simulated labelers enrolled" + (f" (group {held_out} held out)" if held_out is not None else ""))
        qualified = screen(admin, cfg, procs[1], sim_log)
        log(f"screening: {qualified} of {n} labelers qualified")
        loop_cfg = replace(cfg, ranking_source="service", feedback_url=url, gold_judge=True, screened_only=True)
        yield admin, loop_cfg
    finally:
        for proc in reversed(procs):
            _stop(proc)


def screen(admin: Any, cfg: LoopConfig, sim: subprocess.Popen, sim_log: Path) -> int:
    """A screening campaign with gold answers (the gold judge's order), labeled by everyone; returns
    how many labelers qualified at ``cfg.feedback.screening_threshold``."""
    from alignloop.labelers import GoldJudge, SimulatedPanel

    panel = SimulatedPanel(cfg.panel, GoldJudge())
    items = []
    for p, comps in panel.screening_items():
        util = panel.judge.score_batch([p.text] * len(comps), comps)
        gold = sorted(range(len(comps)), key=lambda i: -util[i])
        items.append({"prompt_id": p.id, "prompt": p.text, "completions": comps, "gold": {"order": gold}})
    c = admin.create_campaign("demo-screening", "ranking", "Rank the answers from best to worst.", screening=True)
    admin.upload_items(c["id"], items)
    admin.assign(c["id"])
    deadline = time.monotonic() + 300
    while admin.campaign(c["id"])["assignments"].get("pending", 0):
        if sim.poll() is not None or time.monotonic() > deadline:
            raise AlignloopError("the simulated labelers did not finish screening", f"see {sim_log}")
        time.sleep(0.2)
    rows = admin.screen(c["id"], cfg.feedback.screening_threshold)["labelers"]
    return sum(r["qualified"] for r in rows)
