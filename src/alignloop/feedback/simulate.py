"""The simulated panel acting as real labelers over HTTP (``alignloop feedback simulate``).

Each simulated labeler of :class:`~alignloop.labelers.SimulatedPanel` (noise, length bias,
careless ones) gets an account on the service, in a group of its own panel group, and then
labels every task the service offers it through the labeler API, exactly as a person using the
labeling pages would: screening campaigns included, so careless labelers fail screening there.
The answers come from the panel's methods, so they are the same as the in-process panel's for
the same labeler and item, whatever the order the tasks arrive in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from alignloop.config import PanelConfig
from alignloop.errors import AlignloopError

GROUP_PREFIX = "sim-group-"


def answer(panel: Any, labeler: str, task: dict[str, Any]) -> dict[str, Any]:
    """The panel labeler's answer to one task of any feedback form, as the service's payload."""
    form, prompt, comps = task["task_type"], task["prompt"], task["completions"]
    if form == "ranking":
        r = panel.rank(prompt, comps, labeler=labeler)
        return {"order": r.order, "ties": r.ties if task.get("allow_ties") else []}
    if form == "best_pick":
        return {"best": panel.best_pick(prompt, comps, labeler=labeler).order[0]}
    if form == "demonstration":
        return {"text": panel.write_demonstration(prompt).completion}
    if form == "thumbs":
        return {"up": panel.thumbs(prompt, comps[0], labeler=labeler).up}
    if form == "rating":
        r = panel.rate(prompt, comps[0], labeler=labeler)
        return {"likert": r.likert, "flags": r.flags}
    if form == "rule_violations":
        r = panel.rule_violations(prompt, comps, labeler=labeler)
        rules = set(task.get("rules") or [])
        return {"order": r.order, "ties": r.ties if task.get("allow_ties") else [],
                "violations": [[v for v in vs if v in rules] for vs in r.violations]}  # fmt: skip
    raise AlignloopError(f"the simulated panel cannot answer a {form!r} task")


class SimulatedLabelers:
    """``n`` panel labelers with accounts on the service at ``url`` (created with the admin ``token``
    or reused: a reused account gets a fresh API token)."""

    def __init__(
        self,
        url: str,
        token: str,
        n: int,
        panel_cfg: PanelConfig | None = None,
        prefix: str = "sim-",
        held_out_group: int | None = None,
        http: Any = None,
    ) -> None:
        from alignloop.feedback.client import FeedbackClient
        from alignloop.labelers import SimulatedPanel

        self.url, self.http = url, http
        self.admin = FeedbackClient(url, token, http=http)
        cfg = panel_cfg or PanelConfig()
        self.panel = SimulatedPanel(replace(cfg, n_labelers=n, n_groups=min(cfg.n_groups, n)))
        self.prefix = prefix
        groups = {g["name"] for g in self.admin.groups()}
        for g in sorted({lab.group for lab in self.panel.labelers}):
            if f"{GROUP_PREFIX}{g}" not in groups:
                self.admin.create_group(f"{GROUP_PREFIX}{g}", held_out=g == held_out_group)
        users = {u["username"] for u in self.admin.users()}
        self.clients: dict[str, Any] = {}
        for lab in self.panel.labelers:
            name = prefix + lab.id
            if name in users:
                tok = self.admin.create_token(name)
            else:
                tok = self.admin.create_user(name, "labeler", group=f"{GROUP_PREFIX}{lab.group}", token=True)["token"]
            self.clients[lab.id] = FeedbackClient(url, tok, http=http)

    def label_pending(self) -> int:
        """Every labeler answers all the tasks it has now; returns how many were answered."""
        n = 0
        for lab_id, client in self.clients.items():
            for task in client.iter_tasks():
                key = f"sim-{task['assignment_id']}"  # a retried answer lands once
                client.submit(task["assignment_id"], answer(self.panel, lab_id, task), idempotency_key=key)
                n += 1
        return n

    def run(
        self,
        until_idle: bool = False,
        poll: float = 1.0,
        max_seconds: float | None = None,
        log: Callable[[str], None] = print,
    ) -> int:
        """Label as tasks arrive; with ``until_idle``, stop at the first pass that finds none."""
        total, start = 0, time.monotonic()
        while True:
            n = self.label_pending()
            total += n
            if n:
                log(f"simulated labelers answered {n} tasks ({total} in all)")
            elif until_idle:
                return total
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                return total
            if not n:
                time.sleep(poll)
