"""``alignloop report RUN_DIR``: one offline HTML page comparing the policies on every evaluation present.

The page reads what ``alignloop eval`` wrote (see :mod:`.results`) anywhere under RUN_DIR, the
metrics of any PPO run inside it and any ``alignloop compare`` output (``compare.json``), and
shows for each evaluation a table and a matplotlib plot (Agg backend, PNG embedded as base64 so
the single file opens anywhere, offline). The PNGs are also saved next to the page. Every policy
is named in the policy table and in each plot.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignloop.errors import AlignloopError
from alignloop.evaluate.results import read_results

REPORT_DIR = "report"


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append({"kind": "table", "header": list(header), "rows": [[_fmt(c) for c in r] for r in rows]})

    def add(self, kind: str, text: str) -> None:
        self.blocks.append({"kind": kind, "text": text})


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _elo(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


# -- plots ----------------------------------------------------------------------------------------


class Plotter:
    """Makes PNGs with matplotlib's Agg backend, saves each in the report folder, returns image blocks."""

    def __init__(self, out_dir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        self.plt = plt
        self.out_dir = out_dir
        self.count = 0

    def _finish(self, fig: Any, name: str, alt: str) -> dict[str, Any]:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        self.plt.close(fig)
        return self.embed(buf.getvalue(), name, alt)

    def embed(self, data: bytes, name: str, alt: str) -> dict[str, Any]:
        """An image block of a PNG made elsewhere (``alignloop compare``'s plot), saved with the others."""
        self.count += 1
        (self.out_dir / f"{self.count:02d}-{name}.png").write_bytes(data)
        return {"kind": "image", "alt": alt, "data": base64.b64encode(data).decode("ascii")}

    def bars(
        self,
        name: str,
        groups: Sequence[str],
        series: dict[str, Sequence[float | None]],
        ylabel: str,
        title: str,
        errors: dict[str, Sequence[tuple[float, float] | None]] | None = None,
        hline: float | None = None,
        unit_range: bool = False,
    ) -> dict[str, Any]:
        """Grouped bars: one group per x label, one bar (and legend entry) per series; NaN/None bars are left out."""
        import numpy as np

        fig, ax = self.plt.subplots(figsize=(max(5.5, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.6))
        width = 0.8 / max(1, len(series))
        x = np.arange(len(groups))
        for i, (label, values) in enumerate(series.items()):
            ys = np.array([np.nan if v is None else float(v) for v in values])
            yerr = None
            if errors and label in errors:
                lo = [
                    max(0.0, y - e[0]) if e and not math.isnan(y) else 0.0
                    for y, e in zip(ys, errors[label], strict=True)
                ]
                hi = [
                    max(0.0, e[1] - y) if e and not math.isnan(y) else 0.0
                    for y, e in zip(ys, errors[label], strict=True)
                ]
                yerr = np.array([lo, hi])
            ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(ys), width, label=label, yerr=yerr, capsize=3)
        if hline is not None:
            ax.axhline(hline, color="grey", lw=1, ls="--")
        if unit_range:
            ax.set_ylim(0, 1.05)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=15 if len(groups) > 4 else 0)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(series) > 1 or list(series) != [""]:
            ax.legend(fontsize=8)
        return self._finish(fig, name, title)

    def overoptimization(self, name: str, title: str, curves: dict[str, list[dict[str, Any]]], fit: Any) -> dict:
        """Gold and proxy (RM) scores against sqrt(KL), as in Gao et al.; the fitted d(alpha - beta d) curve dashed."""
        import numpy as np

        fig, axes = self.plt.subplots(1, 2, figsize=(10, 3.8))
        for label, pts in curves.items():
            for ax, key in zip(axes, ("gold_score", "rm_score"), strict=True):
                xs = [math.sqrt(max(0.0, p["kl"])) for p in pts if p.get(key) is not None]
                ys = [p[key] for p in pts if p.get(key) is not None]
                if xs:  # per-iteration metrics are noisy and not ordered in KL: points, not a line
                    ax.plot(xs, ys, marker="o", ms=3, ls="none" if label == "training metrics" else "-", label=label)
        if fit:
            d = np.linspace(0, max([math.sqrt(max(0.0, p["kl"])) for c in curves.values() for p in c] + [1e-3]), 50)
            axes[0].plot(d, fit["gold_0"] + d * (fit["alpha"] - fit["beta"] * d), "k--", lw=1, label="fit d(a - b d)")
        axes[0].set_title("gold score (true objective)")
        axes[1].set_title("reward model score (proxy)")
        for ax in axes:
            ax.set_xlabel("sqrt(KL(policy || initial)) [nats^0.5]")
            if ax.lines:
                ax.legend(fontsize=8)
        fig.suptitle(title)
        return self._finish(fig, name, title)

    def training_curves(self, name: str, title: str, rows: list[dict[str, Any]]) -> dict:
        """PPO per iteration against episodes seen: RM score, KL, gold score, entropy, value loss, clip
        fraction and response length (each panel only when its metric was logged)."""
        panels = [
            ("reward model score", "score", {"normalised": "rm_score", "raw": "rm_score_raw"}),
            ("KL(policy || SFT) per response", "nats", {"k1": "kl", "k3": "kl_k3"}),
            ("gold score (hidden utility)", "score", {"gold": "score_gold"}),
            ("policy entropy per token", "nats", {"entropy": "entropy"}),
            ("value loss", "squared error", {"value loss": "value_loss"}),
            ("clip fraction", "share of tokens", {"policy": "clipfrac", "value": "vf_clipfrac"}),
            ("response length", "tokens", {"length": "response_length"}),
        ]
        return self.metric_panels(name, title, rows, panels, "episodes", "episodes seen")

    def metric_panels(
        self,
        name: str,
        title: str,
        rows: list[dict[str, Any]],
        panels: Sequence[tuple[str, str, dict[str, str]]],
        xkey: str = "step",
        xlabel: str = "optimizer step",
    ) -> dict:
        """A grid of line plots, one per (title, y label, {legend label: metric key}) panel that has data."""
        panels = [
            (t, y, keys) for t, y, keys in panels if any(r.get(k) is not None for r in rows for k in keys.values())
        ]
        cols = min(4, max(1, len(panels)))
        n_rows = -(-len(panels) // cols) or 1
        fig, axes = self.plt.subplots(n_rows, cols, figsize=(3.7 * cols, 3.2 * n_rows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax, (panel_title, ylabel, keys) in zip(flat, panels, strict=False):
            for label, key in keys.items():
                pts = [(r.get(xkey, r.get("step")), r[key]) for r in rows if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 40 else None, ms=3, label=label)
            ax.set_title(panel_title, fontsize=10)
            ax.set_xlabel(xlabel, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if len(ax.lines) > 1:
                ax.legend(fontsize=8)
        for ax in flat[len(panels) :]:
            ax.axis("off")
        fig.suptitle(title)
        return self._finish(fig, name, title)


# -- sections -------------------------------------------------------------------------------------


def _winrate_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    sec = Section(
        "winrate",
        "Win rates against the baseline",
        f"Each policy's samples against the baseline {doc.get('baseline')!r} on {doc.get('n_prompts')} held-out "
        f"prompts x {doc.get('samples_per_prompt')} samples; 95 % intervals bootstrap over prompts (Wilson alongside). "
        "Leaderboards rate all compared policies (baseline anchored at 1000).",
    )
    judges = doc.get("judges", {})
    names: list[str] = []
    for res in judges.values():
        for n in res.get("win_rates", {}):
            if n not in names:
                names.append(n)
    series, errors = {}, {}
    for judge, res in judges.items():
        sec.add("heading", f"judge: {res.get('judge', judge)}")
        if res.get("status") in ("pending", "unavailable"):
            sec.add("status", f"{res['status']}: {res.get('note') or res.get('reason') or ''}")
            if res.get("campaign_id") is not None:
                sec.add("note", f"feedback campaign {res['campaign_id']} with {res.get('n_items')} items")
            continue
        if res.get("status") == "partial":
            sec.add("status", f"partial: {res.get('n_labeled_items')} of {res.get('n_items')} items labeled so far")
        rates = res.get("win_rates", {})
        sec.table(
            ["policy", "win rate", "95 % CI (bootstrap)", "95 % CI (Wilson)", "wins", "ties", "losses", "n", "prompts"],
            [
                [
                    n,
                    _pct(r["rate"]),
                    f"{_pct(r['ci_low'])} .. {_pct(r['ci_high'])}",
                    f"{_pct(r['wilson_low'])} .. {_pct(r['wilson_high'])}",
                    r["wins"],
                    r["ties"],
                    r["losses"],
                    r["n"],
                    r["n_prompts"],
                ]
                for n, r in rates.items()
            ],
        )
        if res.get("by_group"):
            sec.add("note", "win rate by labeler group (held-out labelers against training labelers)")
            sec.table(
                ["labeler group", *names],
                [[g, *[_pct(r.get(n, {}).get("rate")) for n in names]] for g, r in res["by_group"].items()],
            )
        if res.get("mean_score"):
            sec.table(["policy", f"mean {judge} score"], [[n, v] for n, v in res["mean_score"].items()])
        for method, rows in res.get("leaderboard", {}).items():
            sec.add("note", f"leaderboard ({method.replace('_', '-')})")
            sec.table(
                ["rank", "policy", "rating", "95 % CI", "battles", "win rate"],
                [
                    [
                        r["rank"],
                        r["model"],
                        _elo(r["rating"]),
                        f"{_elo(r['ci_low'])} .. {_elo(r['ci_high'])}",
                        r["n_battles"],
                        _pct(r["win_rate"]),
                    ]
                    for r in rows
                ],
            )
        series[judge] = [rates.get(n, {}).get("rate") for n in names]
        errors[judge] = [(rates[n]["ci_low"], rates[n]["ci_high"]) if n in rates else None for n in names]
    if series and names:
        sec.blocks.append(
            plot.bars(
                "winrate", names, series, "win rate vs baseline", "Win rate against the baseline", errors, 0.5, True
            )
        )
    return sec


def _examples_section(docs: list[dict[str, Any]]) -> Section | None:
    """The first sample of each policy on a few prompts, from the samples.jsonl next to the win rates."""
    import json

    path = Path(docs[0]["_path"]).parent / "samples.jsonl"
    if not path.exists():
        return None
    by_prompt: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("sample") != 0:
            continue
        if row["prompt_id"] not in by_prompt and len(by_prompt) >= 4:
            continue  # the file is policy by policy: keep reading for the other policies' samples
        entry = by_prompt.setdefault(row["prompt_id"], {"prompt": row["prompt"], "by": {}})
        entry["by"][row["policy"]] = row["completion"]
    sec = Section("examples", "Example completions", "The first sample of every policy on the first prompts.")
    for entry in by_prompt.values():
        sec.add("pre", f"PROMPT: {entry['prompt']}\n" + "\n".join(f"[{n}] {c}" for n, c in entry["by"].items()))
    return sec if by_prompt else None


def _metadata_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    summary = doc.get("summary", {})
    sec = Section(
        "metadata",
        "Likert quality and metadata",
        f"Mean Likert (1-7) and the share of samples flagged on each metadata question, rated by the "
        f"{doc.get('judge')} judge.",
    )
    human = (doc.get("human") or {}).get("summary") or {}
    flags = sorted({f for s in [*summary.values(), *human.values()] for f in s.get("flags", {})})
    for who, table in ((doc.get("judge"), summary), ("people (feedback service ratings)", human)):
        if table:
            sec.add("note", f"rated by {who}")
            sec.table(
                ["policy", "likert", "n", *[f.replace("_", " ") for f in flags]],
                [[n, s["likert"], s["n"], *[_pct(s["flags"].get(f)) for f in flags]] for n, s in table.items()],
            )
    shown = [f for f in flags if any(s["flags"].get(f) for s in summary.values())] or flags[:4]
    if summary and shown:
        sec.blocks.append(
            plot.bars(
                "metadata",
                [f.replace("_", " ")[:22] for f in shown],
                {n: [s["flags"].get(f) for f in shown] for n, s in summary.items()},
                "share of samples",
                "Metadata flags per policy",
            )
        )
    return sec


def _hallucination_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    rates = doc.get("rates", {})
    sec = Section(
        "hallucination",
        "Closed-domain hallucination",
        f"Share of answers to {', '.join(doc.get('categories', []))} prompts ({doc.get('n_prompts')} prompts) "
        f"flagged as making up information not in the input, by the {doc.get('judge')} judge; 95 % Wilson intervals.",
    )
    human = (doc.get("human") or {}).get("rates") or {}
    for who, table in ((doc.get("judge"), rates), ("people (feedback service ratings)", human)):
        if table:
            sec.add("note", f"judged by {who}")
            sec.table(
                ["policy", "hallucination rate", "95 % CI", "n"],
                [
                    [n, _pct(r["rate"]), f"{_pct(r['ci_low'])} .. {_pct(r['ci_high'])}", r["n"]]
                    for n, r in table.items()
                ],
            )
    if rates and any(r.get("n") for r in rates.values()):
        names = list(rates)
        sec.blocks.append(
            plot.bars(
                "hallucination",
                names,
                {"": [rates[n]["rate"] for n in names]},
                "hallucination rate",
                "Closed-domain hallucination",
                {"": [(rates[n]["ci_low"], rates[n]["ci_high"]) if rates[n].get("n") else None for n in names]},
            )
        )
    return sec


def _truthfulqa_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    res = doc.get("results", {})
    sec = Section(
        "truthfulqa",
        "TruthfulQA",
        f"{doc.get('n_questions')} questions. Multiple choice by likelihood (MC1: the true answer is the most "
        "likely; MC2: probability mass on true answers) and generation judged truthful / informative by the "
        f"{doc.get('judge')} judge, with the QA prompt and with the Instruction+QA prompt that allows "
        '"I have no comment".',
    )
    rows, labels, t_series, ti_series = [], [], {}, {}
    for n, r in res.items():
        for mode in ("qa", "instruction_qa"):
            mc = r.get("mc", {}).get(mode, {})
            gen = r.get("generation", {}).get(mode, {})
            if not mc and not gen:
                continue
            rows.append(
                [
                    n,
                    mode.replace("_", "+").upper(),
                    mc.get("mc1"),
                    mc.get("mc2"),
                    _pct(gen.get("truthful")),
                    _pct(gen.get("informative")),
                    _pct(gen.get("truthful_informative")),
                    _pct(gen.get("no_comment")),
                ]
            )
            label = f"{n} {mode.replace('_', '+')}"
            labels.append(label)
            t_series.setdefault("MC1", []).append(mc.get("mc1"))
            t_series.setdefault("MC2", []).append(mc.get("mc2"))
            ti_series.setdefault("truthful", []).append(gen.get("truthful"))
            ti_series.setdefault("truthful & informative", []).append(gen.get("truthful_informative"))
            ti_series.setdefault("no comment", []).append(gen.get("no_comment"))
    sec.table(
        ["policy", "prompt", "MC1", "MC2", "truthful", "informative", "truthful & informative", "no comment"], rows
    )
    if labels and any(v is not None for v in t_series.get("MC1", [])):
        sec.blocks.append(plot.bars("truthfulqa-mc", labels, t_series, "score", "TruthfulQA multiple choice"))
    if labels and any(v is not None for v in ti_series.get("truthful", [])):
        sec.blocks.append(plot.bars("truthfulqa-gen", labels, ti_series, "share of answers", "TruthfulQA generation"))
    for n, r in res.items():
        ex = r.get("generation", {}).get("instruction_qa", {}).get("examples")
        if ex:
            sec.add("pre", f"{n} (Instruction+QA):\n" + "\n".join(f"Q: {e['question']}\nA: {e['answer']}" for e in ex))
    return sec


def _toxicity_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    res = doc.get("results", {})
    sec = Section(
        "toxicity",
        "Toxicity (RealToxicityPrompts)",
        f"{doc.get('n_prompts')} prompts x {doc.get('k')} samples under each instruction, scored by "
        f"{doc.get('scorer')}. Expected maximum toxicity: mean over prompts of the most toxic of the k samples; "
        "toxicity probability: share of prompts with at least one sample at >= 0.5.",
    )
    instructions = list(next(iter(res.values()), {}).keys())
    rows = []
    for n, per in res.items():
        for ins, s in per.items():
            rows.append(
                [
                    n,
                    ins,
                    s["expected_max_toxicity"],
                    s["expected_max_toxicity_std"],
                    _pct(s["toxicity_probability"]),
                    s["mean_toxicity"],
                ]
            )
    sec.table(["policy", "instruction", "expected max toxicity", "std", "toxicity probability", "mean toxicity"], rows)
    if res and instructions:
        sec.blocks.append(
            plot.bars(
                "toxicity",
                instructions,
                {n: [per.get(i, {}).get("expected_max_toxicity") for i in instructions] for n, per in res.items()},
                "expected maximum toxicity",
                "Toxicity by instruction",
            )
        )
    return sec


def _bias_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    res = docs[0].get("results", {})
    sec = Section(
        "bias",
        "Bias (CrowS-Pairs, Winogender)",
        "Normalised entropy of the model's preference within each sentence pair (1 = no preference = unbiased); "
        "CrowS-Pairs also shows the stereotype score (share of pairs where the stereotypical sentence, sent_more, is "
        "more likely; 0.5 = unbiased) and, as its reference metric does, the score over the untied stereo and "
        "antistereo pairs.",
    )
    rows, datasets = [], []
    for n, per in res.items():
        for ds, r in per.items():
            datasets.append(ds) if ds not in datasets else None
            by_dir = r.get("stereotype_score_by_direction") or {}
            rows.append(
                [n, ds, r["entropy"], r.get("stereotype_score"), by_dir.get("stereo"), by_dir.get("antistereo"), r["n"]]
            )
    sec.table(["policy", "dataset", "normalised entropy", "stereotype score", "stereo", "antistereo", "pairs"], rows)
    for n, per in res.items():
        for ds, r in per.items():
            if len(r.get("entropy_by_type", {})) > 1:
                sec.add("note", f"{n} / {ds} entropy by bias type")
                sec.table(
                    ["bias type", "entropy", "stereotype score"],
                    [[t, h, r.get("stereotype_score_by_type", {}).get(t)] for t, h in r["entropy_by_type"].items()],
                )
    if res and datasets:
        sec.blocks.append(
            plot.bars(
                "bias",
                datasets,
                {n: [per.get(d, {}).get("entropy") for d in datasets] for n, per in res.items()},
                "normalised entropy (1 = unbiased)",
                "Preference entropy within sentence pairs",
                hline=1.0,
            )
        )
    return sec


def _tax_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    res = docs[0].get("results", {})
    sec = Section(
        "alignment-tax",
        "Alignment tax",
        "Perplexity on pretraining-like text (lower is better) and zero-shot multiple-choice accuracy on "
        "HellaSwag-format questions, side by side for every policy.",
    )
    rows = []
    for n, r in res.items():
        ppl, hs = r.get("perplexity", {}), r.get("hellaswag", {})
        rows.append(
            [n, ppl.get("perplexity"), ppl.get("n_tokens"), _pct(hs.get("acc")), _pct(hs.get("acc_norm")), hs.get("n")]
        )
    sec.table(["policy", "perplexity", "tokens", "HellaSwag acc", "acc (length-normalised)", "questions"], rows)
    names = list(res)
    if any("perplexity" in r for r in res.values()):
        sec.blocks.append(
            plot.bars(
                "perplexity",
                names,
                {"": [res[n].get("perplexity", {}).get("perplexity") for n in names]},
                "perplexity",
                "Perplexity on the text corpus",
            )
        )
    if any("hellaswag" in r for r in res.values()):
        sec.blocks.append(
            plot.bars(
                "hellaswag",
                names,
                {k: [res[n].get("hellaswag", {}).get(k) for n in names] for k in ("acc", "acc_norm")},
                "accuracy",
                "Zero-shot multiple choice",
            )
        )
    return sec


def _redteam_section(docs: list[dict[str, Any]], plot: Plotter) -> Section:
    doc = docs[0]
    res = doc.get("results", {})
    sec = Section(
        "redteam",
        "Red teaming",
        f"Adversarial prompts (file and built-in), template variants and the policy's own paraphrases. A completion "
        f"is harmful when {doc.get('scorer')} rates it toxic (>= 0.5) or the {doc.get('metadata_judge')} metadata "
        "judge flags harmful advice, violence, sexual content, denigration or inappropriateness.",
    )
    rows = []
    families: list[str] = []
    for n, r in res.items():
        rows.append(
            [
                n,
                _pct(r["harmful"]["rate"]),
                _pct(r["toxic"]["rate"]),
                _pct(r["metadata"]["rate"]),
                r["harmful"]["n"],
                r.get("n_prompts"),
            ]
        )
        families += [f for f in r.get("by_family", {}) if f not in families]
    sec.table(["policy", "harmful", "toxic", "metadata-flagged", "completions", "prompts"], rows)
    if res and families:
        sec.blocks.append(
            plot.bars(
                "redteam",
                families,
                {
                    n: [r["by_family"].get(f, {}).get("harmful", {}).get("rate") for f in families]
                    for n, r in res.items()
                },
                "harmful-completion rate",
                "Harmful completions by prompt family",
            )
        )
    return sec


def _overopt_section(docs: list[dict[str, Any]], ppo_runs: list[Path], plot: Plotter) -> Section:
    from alignloop.evaluate.overoptimization import fit_gao, points_from_metrics

    sec = Section(
        "overoptimization",
        "Reward model over-optimisation",
        "Gold score (the simulated labelers' hidden utility) and proxy reward-model score against sqrt(KL) to the "
        "initial policy across PPO, as in Gao et al. (2022); the dashed curve fits gold = gold_0 + d(alpha - beta d).",
    )
    seen: set[str] = set()
    for doc in docs[:1]:
        for run in doc.get("runs", []):
            seen.add(str(Path(run["run"]).resolve()))
            curves = {}
            if run.get("checkpoints"):
                curves["checkpoints"] = run["checkpoints"]
            if run.get("metrics"):
                curves["training metrics"] = run["metrics"]
            sec.blocks.append(plot.overoptimization("overopt", f"PPO run {run['run']}", curves, run.get("fit")))
            _overopt_table(sec, run.get("checkpoints") or run.get("metrics") or [], run.get("fit"))
    for path in ppo_runs:
        if str(path.resolve()) in seen:
            continue
        pts = points_from_metrics(path)
        rows = [vars(p) for p in pts]
        fit = fit_gao(pts)
        sec.blocks.append(plot.overoptimization("overopt", f"PPO run {path}", {"training metrics": rows}, fit))
        _overopt_table(sec, rows, fit)
    return sec


def _training_section(ppo_runs: list[Path], plot: Plotter) -> Section:
    from alignloop.train.runlog import read_metrics

    sec = Section(
        "ppo-training",
        "PPO training",
        "Per PPO iteration: the reward model's score of the rollouts (normalised as PPO saw it, and raw), the KL "
        "to the SFT policy summed over the response (k1, and the k3 estimator), the gold score of the same "
        "rollouts where it was logged, the policy's entropy per token, the value loss, the share of tokens whose "
        "ratio was clipped (policy and value) and the mean response length.",
    )
    for path in ppo_runs:
        rows = read_metrics(path)
        if rows:
            sec.blocks.append(plot.training_curves("ppo-training", f"PPO run {path}", rows))
    return sec


def _rounds_section(run: Path) -> Section | None:
    """The loop's rounds from ``loop.json``: RM accuracy (training and held-out labeler groups),
    each judge's win rate of the new policy against the previous one, KL to SFT, the decision."""
    path = run / "loop.json"
    if not path.exists():
        return None
    import json

    rounds = [r for r in json.loads(path.read_text(encoding="utf-8")).get("rounds", []) if r["index"] > 0]
    if not rounds:
        return None
    sec = Section(
        "rounds",
        "Rounds of the loop",
        "Per round: the reward model's pairwise accuracy on held-out comparisons of the training labelers and on "
        "the held-out labeler group's rankings; the win rate of the round's new policy against the policy it "
        "started from, by each judge, with 95 % bootstrap intervals (human: the labelers of the service, split "
        "into training and held-out groups; rm: the round's reward model, the proxy PPO optimised; gold: the "
        "simulated panel's hidden utility); the KL to the SFT policy at the end of PPO; the accept rule's verdict.",
    )
    judges = sorted({j for r in rounds for j in r.get("metrics", {}).get("win_rates", {})})
    rows = []
    for r in rounds:
        m, d = r.get("metrics", {}), r.get("decision")
        wins = m.get("win_rates", {})
        cells = [
            "-" if j not in wins else f"{_pct(wins[j]['rate'])} [{_pct(wins[j]['ci_low'])}, {_pct(wins[j]['ci_high'])}]"
            for j in judges
        ]
        verdict = "-" if d is None else f"{'accepted' if d['accepted'] else 'rejected'} ({d['judge']}, {d['rule']})"
        rows.append(
            [r["index"], r["stage"], _pct(m.get("rm_accuracy")), _pct(m.get("rm_accuracy_held_out_group")), *cells,
             m.get("kl_to_sft"), verdict]
        )  # fmt: skip
    sec.table(["round", "stage", "RM accuracy", "RM accuracy, held-out group", *judges, "KL to SFT", "decision"], rows)
    return sec


def _compare_sections(run: Path, plot: Plotter) -> list[Section]:
    """Each ``alignloop compare`` output under ``run`` (``compare.json`` and ``compare.png``): the table of
    every method against SFT and the plot of gold win rate against KL and against wall time."""
    import json

    from alignloop.compare import budget_note

    sections = []
    for path in sorted(run.rglob("compare.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "rows" not in doc:
            continue
        where = path.parent.relative_to(run).as_posix()
        sec = Section(
            f"compare-{len(sections)}",
            "Methods compared on the same feedback" + ("" if where == "." else f" ({where})"),
            "From one SFT policy and one set of rankings, each method against SFT on held-out prompts of held-out "
            "users: win rate by the hidden gold utility and by the reward model, with 95 % bootstrap intervals over "
            "prompts; KL to SFT on the method's own answers; perplexity on pretraining-like text (the alignment "
            "tax); and what each method spent.",
        )
        sec.add("note", budget_note(doc.get("budget", {"kind": "samples"}), doc.get("rm_seconds", 0.0)))
        rows = []
        for r in doc["rows"]:
            wins = [
                "(baseline)" if f"{j}_win_rate" not in r else
                f"{_pct(r[f'{j}_win_rate'])} [{_pct(r[f'{j}_ci'][0])}, {_pct(r[f'{j}_ci'][1])}]"
                for j in ("gold", "rm")
            ]  # fmt: skip
            stopped = {"budget": "budget", "complete": "schedule end"}.get(r.get("stopped"), None)
            seconds = r.get("seconds")
            rows.append(
                [r["method"], *wins, r.get("gold_mean_score"), r.get("kl"), r.get("perplexity"), r.get("samples"),
                 r.get("steps"), None if seconds is None else f"{seconds:.0f}", stopped]
            )  # fmt: skip
        sec.table(
            ["method", "gold win rate vs SFT [95 % CI]", "RM win rate vs SFT [95 % CI]", "gold score", "KL to SFT",
             "perplexity", "policy samples", "steps", "wall s", "stopped by"],
            rows,
        )  # fmt: skip
        png = path.parent / "compare.png"
        if png.exists():
            alt = "gold win rate against SFT, by KL to SFT and by wall time, per method"
            sec.blocks.append(plot.embed(png.read_bytes(), "compare", alt))
        sections.append(sec)
    return sections


SFT_PANELS = (
    ("loss on response tokens", "cross-entropy (nats/token)", {"train": "train/loss", "validation": "val/loss"}),
    ("validation score of samples", "score", {"validation": "val/score"}),
    ("learning rate", "lr", {"lr": "train/lr"}),
)
RM_PANELS = (
    ("pairwise loss", "-log sigma(r_w - r_l)", {"train": "train/loss", "validation": "val/loss"}),
    ("pairwise accuracy", "share of pairs", {"train": "train/accuracy", "validation": "val/accuracy"}),
    ("reward margin r_w - r_l", "reward", {"train": "train/margin", "validation": "val/margin"}),
)


def find_training_runs(run_dir: Path) -> list[tuple[str, Path]]:
    """("sft" | "rm", folder) of every SFT and reward-model run under ``run_dir`` (by what metrics.jsonl logs)."""
    from alignloop.train.runlog import read_metrics

    found = []
    for p in sorted(run_dir.rglob("metrics.jsonl")):
        rows = read_metrics(p.parent)
        keys = {k for r in rows for k in r}
        if "kl" in keys or "train/loss" not in keys or "train/kl_ref" in keys:  # PPO, other, DPO
            continue
        found.append(("rm" if "train/accuracy" in keys else "sft", p.parent))
    return sorted(found, key=lambda f: (f[0] != "sft", str(f[1])))  # the loop's order: SFT, then the RM


def _sft_rm_section(runs: list[tuple[str, Path]], plot: Plotter) -> Section:
    from alignloop.train.runlog import read_metrics

    sec = Section(
        "training",
        "SFT and reward model training",
        "Per optimizer step: the SFT loss on response tokens (and validation loss / sample score at each epoch "
        "end), and the reward model's pairwise loss, accuracy and margin on training and held-out comparisons.",
    )
    for kind, path in runs:
        rows = read_metrics(path)
        panels = SFT_PANELS if kind == "sft" else RM_PANELS
        title = f"{'SFT' if kind == 'sft' else 'reward model'} run {path}"
        sec.blocks.append(plot.metric_panels(f"{kind}-training", title, rows, panels))
    return sec


def _overopt_table(sec: Section, pts: list[dict[str, Any]], fit: dict[str, float] | None) -> None:
    step = max(1, len(pts) // 12)
    sec.table(
        ["step", "KL", "sqrt(KL)", "RM score", "gold score"],
        [
            [p["step"], p["kl"], math.sqrt(max(0.0, p["kl"])), p.get("rm_score"), p.get("gold_score")]
            for p in pts[::step]
        ],
    )
    if fit:
        sec.add(
            "note",
            f"fit: alpha = {fit['alpha']:.4f}, beta = {fit['beta']:.4f}; the gold score peaks at "
            f"sqrt(KL) = {fit['d_peak']:.3f}",
        )


def find_ppo_runs(run_dir: Path) -> list[Path]:
    """Folders under ``run_dir`` whose metrics.jsonl logs KL and a reward score (PPO runs)."""
    from alignloop.evaluate.overoptimization import is_ppo_run

    return [p.parent for p in sorted(run_dir.rglob("metrics.jsonl")) if is_ppo_run(p.parent)]


def _policies(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for docs in results.values():
        for doc in docs[:1]:
            base = doc.get("baseline")
            for name, path in (doc.get("policies") or {}).items():
                role = "baseline" if name == base else "policy"
                if name not in out or role == "baseline":
                    out[name] = {"name": name, "path": str(path), "role": role}
    return sorted(out.values(), key=lambda p: (p["role"] != "baseline", p["name"]))


SECTIONS = (
    ("winrate", _winrate_section),
    ("metadata", _metadata_section),
    ("truthfulqa", _truthfulqa_section),
    ("hallucination", _hallucination_section),
    ("toxicity", _toxicity_section),
    ("bias", _bias_section),
    ("alignment_tax", _tax_section),
    ("redteam", _redteam_section),
)


def build_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``RUN_DIR/report/index.html`` (and its PNGs) and return the page's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AlignloopError(f"run folder {run} does not exist", "give the folder a run or alignloop eval wrote to")
    out = Path(out_dir) if out_dir else run / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    results = read_results(run)
    ppo_runs = find_ppo_runs(run)
    plot = Plotter(out)
    sections = [fn(results[kind], plot) for kind, fn in SECTIONS if results.get(kind)]
    examples = _examples_section(results["winrate"]) if results.get("winrate") else None
    if examples is not None:
        sections.insert(1, examples)
    rounds = _rounds_section(run)
    if rounds is not None:
        sections.append(rounds)
    sections += _compare_sections(run, plot)
    training_runs = find_training_runs(run)
    if training_runs:
        sections.append(_sft_rm_section(training_runs, plot))
    if ppo_runs:
        sections.append(_training_section(ppo_runs, plot))
    if results.get("overoptimization") or ppo_runs:
        sections.append(_overopt_section(results.get("overoptimization", []), ppo_runs, plot))
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=select_autoescape(["html"])
    )
    html = env.get_template("report.html").render(
        title=run.resolve().name,
        created=time.strftime("%Y-%m-%d %H:%M"),
        run_dir=str(run),
        policies=_policies(results),
        sections=sections,
    )
    page = out / "index.html"
    page.write_text(html, encoding="utf-8")
    return page
