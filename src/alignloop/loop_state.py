"""The loop's persisted state: ``OUT/loop.json``, one record per round, written atomically.

People label over hours or days and a training job can be killed at any time, so a round is a
state machine rather than one long process (SPEC section 10)::

    sample -> collect -> reward_model -> rl -> evaluate -> decided

Each round records its stage, the campaigns it created on the feedback service (the name is
written *before* the push, so a process killed between push and save finds the campaign by
name instead of pushing a second one), its artifacts, metrics and the decision with its
numbers. Round 0, when the config asks for it, collects demonstrations and trains SFT
(stages ``collect -> sft -> decided``). Every write goes to a temporary file first and
replaces ``loop.json`` with ``os.replace``, so a reader (``alignloop loop status``) or a
resumed process never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from alignloop.errors import AlignloopError

STATE_FILE = "loop.json"
STAGES = ("sample", "collect", "reward_model", "rl", "evaluate", "decided")
ROUND0_STAGES = ("collect", "sft", "decided")


class LoopState:
    """The state of one loop run folder; ``data`` is the JSON document, ``save()`` persists it."""

    def __init__(self, out: str | os.PathLike[str], data: dict[str, Any]) -> None:
        self.out = Path(out)
        self.data = data

    # -- files -----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | os.PathLike[str], **fields: Any) -> LoopState:
        """A fresh state; ``run_id`` makes this run's campaign names unique on a shared service."""
        state = cls(out, {"version": 1, "run_id": uuid.uuid4().hex[:8], "rounds": [], "finished": False} | fields)
        state.save()
        return state

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> LoopState:
        path = Path(out) / STATE_FILE
        if not path.exists():
            raise AlignloopError(f"{path} does not exist: not a loop run folder", "start one: alignloop loop CONFIG")
        try:
            return cls(out, json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise AlignloopError(f"{path}: invalid JSON ({err.msg})") from None

    @staticmethod
    def exists(out: str | os.PathLike[str]) -> bool:
        return (Path(out) / STATE_FILE).exists()

    def save(self) -> None:
        """Write ``loop.json`` atomically: a temporary file in the same folder, then ``os.replace``."""
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{STATE_FILE}.{os.getpid()}.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.out / STATE_FILE)

    # -- rounds ----------------------------------------------------------------------------------------
    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.data["rounds"]

    def round(self, index: int) -> dict[str, Any] | None:
        return next((r for r in self.rounds if r["index"] == index), None)

    def start_round(self, index: int, policy: str) -> dict[str, Any]:
        """The record of round ``index`` (created at its first stage when new)."""
        r = self.round(index)
        if r is None:
            first = ROUND0_STAGES[0] if index == 0 else STAGES[0]
            r = {"index": index, "stage": first, "policy": policy, "campaigns": {}, "artifacts": {}, "metrics": {}}
            self.rounds.append(r)
            self.rounds.sort(key=lambda x: x["index"])
            self.save()
        return r

    def advance(self, r: dict[str, Any], stage: str) -> None:
        """Move round ``r`` to ``stage`` and persist (the previous stage's results are already in ``r``)."""
        r["stage"] = stage
        r.pop("waiting", None)
        self.save()

    def campaign_name(self, index: int, purpose: str) -> str:
        """A campaign name unique to this run, round and purpose: the key of an idempotent push."""
        return f"loop-{self.data['run_id']}-r{index}-{purpose}"


def status_rows(state: LoopState) -> list[dict[str, str]]:
    """One row per round for ``alignloop loop status``: stage, campaigns, RM accuracy, win rates, decision."""
    rows = []
    for r in state.rounds:
        camps = []
        for purpose, c in sorted(r.get("campaigns", {}).items()):
            progress = c.get("progress")
            done = f" {progress['items_done']}/{progress['items']}" if progress else ""
            camps.append(f"{purpose} #{c.get('id', '?')}{done}")
        m = r.get("metrics", {})
        acc = m.get("rm_accuracy")
        acc_h = m.get("rm_accuracy_held_out_group")
        rates = []
        for judge, w in sorted(m.get("win_rates", {}).items()):
            rates.append(f"{judge} {_pct(w['rate'])} [{_pct(w['ci_low'])}, {_pct(w['ci_high'])}]")
        d = r.get("decision")
        decision = "-" if d is None else ("accepted" if d["accepted"] else "rejected") + f" ({d['judge']})"
        stage = r["stage"] + (" (waiting)" if r.get("waiting") else "")
        rows.append(
            {
                "round": str(r["index"]),
                "stage": stage,
                "campaigns": ", ".join(camps) or "-",
                "rm_accuracy": "-" if acc is None else _pct(acc) + ("" if acc_h is None else f" / {_pct(acc_h)}"),
                "kl_to_sft": "-" if m.get("kl_to_sft") is None else f"{m['kl_to_sft']:.3f}",
                "win_rates": "; ".join(rates) or "-",
                "decision": decision,
            }
        )
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"
