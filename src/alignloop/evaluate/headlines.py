"""The headline figures of an ``alignloop eval`` run, as rows for the table the command prints.

One row per (evaluation, policy, figure), read back from the result files the run wrote, so the
printed table and ``alignloop report`` show the same numbers. Win rates report ties as ties
(wins / ties / losses), never folded into the rate silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _winrate(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for judge, res in doc.get("judges", {}).items():
        if res.get("status") in ("pending", "unavailable"):
            rows.append([f"win rate ({judge})", "", res["status"], res.get("note") or res.get("reason") or ""])
            continue
        for name, r in res.get("win_rates", {}).items():
            detail = f"95 % CI {_pct(r['ci_low'])} .. {_pct(r['ci_high'])}; {r['wins']} wins, {r['ties']} ties, "
            detail += f"{r['losses']} losses of {r['n']}"
            rows.append([f"win rate vs {doc.get('baseline')} ({judge})", name, _pct(r["rate"]), detail])
    return rows


def _per_policy(doc: dict[str, Any], kind: str) -> list[list[str]]:
    res = doc.get("results", {})
    rows: list[list[str]] = []
    if kind == "metadata":
        for name, s in doc.get("summary", {}).items():
            rows.append([f"mean Likert 1-7 ({doc.get('judge')})", name, _num(s.get("likert")), f"n = {s.get('n')}"])
    elif kind == "hallucination":
        for name, r in doc.get("rates", {}).items():
            rows.append(["hallucination rate", name, _pct(r.get("rate")), f"n = {r.get('n')}"])
    elif kind == "truthfulqa":
        for name, r in res.items():
            mc = r.get("mc", {}).get("qa", {})
            gen = r.get("generation", {}).get("qa", {})
            if mc:
                rows.append(["TruthfulQA MC1", name, _num(mc.get("mc1")), f"MC2 {_num(mc.get('mc2'))}"])
            if gen:
                detail = f"truthful {_pct(gen.get('truthful'))}"
                rows.append(["TruthfulQA truthful & informative", name, _pct(gen.get("truthful_informative")), detail])
    elif kind == "toxicity":
        for name, per in res.items():
            for instruction, r in per.items():
                if isinstance(r, dict) and "expected_max_toxicity" in r:
                    label = f"expected max toxicity ({instruction})"
                    rows.append([label, name, _num(r["expected_max_toxicity"]), ""])
    elif kind == "bias":
        for name, per in res.items():
            for dataset, r in per.items():
                if isinstance(r, dict) and "entropy" in r:
                    rows.append([f"{dataset} entropy (max = unbiased)", name, _num(r["entropy"]), f"n = {r.get('n')}"])
    elif kind == "alignment_tax":
        for name, r in res.items():
            if r.get("perplexity"):
                rows.append(["perplexity", name, _num(r["perplexity"].get("perplexity")), ""])
            if r.get("hellaswag"):
                rows.append(
                    ["HellaSwag accuracy", name, _pct(r["hellaswag"].get("acc")), f"n = {r['hellaswag'].get('n')}"]
                )
    elif kind == "redteam":
        for name, r in res.items():
            rows.append(["red-team harmful rate", name, _pct(r["harmful"]["rate"]), f"n = {r['harmful']['n']}"])
    elif kind == "overoptimization":
        for run in doc.get("runs", []) if isinstance(doc.get("runs"), list) else []:
            fit = run.get("fit") if isinstance(run, dict) else None
            if fit:
                rows.append(["gold score peaks at sqrt(KL)", str(run.get("run", "")), _num(fit.get("d_peak")), ""])
    return rows


def headline_rows(written: dict[str, Path]) -> list[list[str]]:
    """[evaluation, policy, value, detail] rows from the result files of one eval run."""
    rows: list[list[str]] = []
    for kind, path in written.items():
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        try:
            rows += _winrate(doc) if kind == "winrate" else _per_policy(doc, kind)
        except (KeyError, TypeError, AttributeError):  # a result shape this table does not know: the report shows it
            rows.append([kind, "", "see the report", str(path)])
    return rows
