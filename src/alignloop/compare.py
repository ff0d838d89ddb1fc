"""``alignloop compare``: every method on the same feedback, judged by the hidden gold utility (SPEC section 12).

From one SFT policy and one set of rankings, in the order the code runs it:

1. the reward model, trained once on the rankings (PPO, PPO-ptx, RLOO, GRPO and best-of-N
   optimise it; it is also the second judge);
2. each method: ``ppo`` / ``ppo_ptx`` / ``rloo`` / ``grpo`` (the PPO trainer with that
   ``algorithm``, and ``gamma_ptx = ptx_gamma`` for PPO-ptx), ``dpo`` (directly on the rankings),
   ``bonN`` (best-of-N at inference: N SFT samples per answer, the RM's favourite kept);
   the matched budget is the number of policy samples: every RL method draws
   ``ppo.total_episodes`` (DPO draws none, best-of-N draws N per evaluation answer);
3. every policy and SFT answer the held-out prompts (``eval.samples_per_prompt`` each, the same
   seed); win rates against SFT by the gold judge and by the RM, with 95 % bootstrap intervals
   over prompts; KL to SFT: mean over a policy's own answers of log pi(y|x) - log pi_SFT(y|x)
   (temperature 1; best-of-N: the analytic log N - (N-1)/N); perplexity on ``ptx_corpus``
   (the alignment tax; best-of-N keeps SFT's weights);
4. ``OUT/compare.json``, ``OUT/compare.md`` (one table) and ``OUT/compare.png`` (gold win rate
   against KL and against wall time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignloop.config import CompareConfig, dump_config
from alignloop.data.jsonl import read_jsonl
from alignloop.data.records import Prompt, Ranking
from alignloop.errors import AlignloopError


def run_compare(cfg: CompareConfig, out: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate every method of ``cfg``; write the table and the plot into ``out``."""
    from alignloop.labelers.gold import GoldJudge
    from alignloop.loop import sample_completions
    from alignloop.models.reward import load_scorer
    from alignloop.train.reward import train_reward_model

    try:
        cfg.validate()
        cfg.check_inputs()
    except ValueError as err:
        raise AlignloopError(f"compare config: {err}") from None
    out = Path(out)
    if (out / "compare.json").exists():
        raise AlignloopError(f"{out} already holds a comparison", "choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    rankings = read_jsonl(cfg.rankings, Ranking)
    eval_prompts = read_jsonl(cfg.eval_prompts, Prompt)
    prompts = [p.text for p in read_jsonl(cfg.prompts, Prompt)] if cfg.prompts else []
    corpus = _corpus(cfg)
    if not rankings or not eval_prompts:
        raise AlignloopError("compare needs rankings and held-out prompts", "check the rankings and eval_prompts files")

    # 1. the reward model
    t0 = time.perf_counter()
    rm = train_reward_model(cfg.rm, rankings, out / "rm", progress=False)
    rm_seconds = time.perf_counter() - t0
    scorer = load_scorer(str(rm.model_dir))
    log(f"compare: reward model trained in {rm_seconds:.0f} s")

    # 2. each method -> a policy folder (best-of-N: none)
    policies: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for method in cfg.methods:
        t0 = time.perf_counter()
        if method.startswith("bon"):
            info[method] = {"samples": None, "seconds": 0.0}
            continue
        folder, samples = _train(cfg, method, rankings, prompts, corpus, scorer, out / method)
        policies[method] = folder
        info[method] = {"samples": samples, "seconds": time.perf_counter() - t0}
        log(f"compare: {method} trained in {info[method]['seconds']:.0f} s")

    # 3. answers to the held-out prompts; judges; KL; perplexity
    texts, ids = [p.text for p in eval_prompts], [p.id for p in eval_prompts]
    spp, gen = cfg.eval.samples_per_prompt, cfg.eval.generation

    def answers(policy: str) -> list[list[str]]:
        return sample_completions(policy, texts, spp, gen, cfg.eval_seed, cfg.dpo.model.dtype)

    samples = {"sft": answers(cfg.policy), **{m: answers(p) for m, p in policies.items()}}
    for method in cfg.methods:
        if method.startswith("bon"):
            t0 = time.perf_counter()
            n = int(method[3:])
            samples[method] = _best_of_n(cfg, texts, n, scorer)
            info[method]["seconds"] = time.perf_counter() - t0  # best-of-N pays at inference
            info[method]["samples"] = n * len(texts) * spp
    rows = _evaluate(cfg, ids, texts, samples, policies, GoldJudge(), scorer, corpus)
    for row in rows:
        row.update(info.get(row["method"], {}))
    _write(out, rows, rm_seconds)
    return rows


def _corpus(cfg: CompareConfig) -> list[str]:
    if not cfg.ptx_corpus:
        return []
    from alignloop.evaluate.alignment_tax import read_corpus

    return read_corpus(cfg.ptx_corpus, cfg.max_ptx_documents)


def _train(
    cfg: CompareConfig,
    method: str,
    rankings: Sequence[Ranking],
    prompts: list[str],
    corpus: list[str],
    scorer,
    run: Path,
) -> tuple[str, int]:
    """One method's policy folder and the policy samples it drew."""
    if method == "dpo":
        from alignloop.train.dpo import train_dpo

        dpo_cfg = dataclasses.replace(cfg.dpo, model=dataclasses.replace(cfg.dpo.model, name=cfg.policy))
        return str(train_dpo(dpo_cfg, rankings, run, progress=False).policy_dir), 0
    from alignloop.train.ppo import train_ppo

    algorithm = "ppo" if method in ("ppo", "ppo_ptx") else method
    gamma = cfg.ptx_gamma if method == "ppo_ptx" else 0.0
    ppo_cfg = dataclasses.replace(cfg.ppo, algorithm=algorithm, gamma_ptx=gamma)
    res = train_ppo(ppo_cfg, cfg.policy, scorer, prompts, run, ptx_texts=corpus or None, progress=False)
    return str(res.policy_dir), ppo_cfg.total_episodes


def _best_of_n(cfg: CompareConfig, texts: list[str], n: int, scorer) -> list[list[str]]:
    """For each answer slot, N SFT samples and the one the RM scores highest."""
    from alignloop.loop import sample_completions
    from alignloop.models.scoring import score_all

    spp = cfg.eval.samples_per_prompt
    drawn = sample_completions(cfg.policy, texts, n * spp, cfg.eval.generation, cfg.eval_seed + n, cfg.dpo.model.dtype)
    out = []
    for prompt, comps in zip(texts, drawn, strict=True):
        scores = score_all(scorer, [prompt] * len(comps), comps)
        best = [max(range(j * n, (j + 1) * n), key=scores.__getitem__) for j in range(spp)]
        out.append([comps[i] for i in best])
    return out


@torch.no_grad()
def _kl_to_sft(policy: str, sft: str, texts: list[str], samples: list[list[str]], max_length: int) -> float:
    """Mean over the policy's own answers of log pi(y|x) - log pi_SFT(y|x) (temperature 1)."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward import pad_id
    from alignloop.train.dpo import sequence_logprobs
    from alignloop.train.sft import build_example

    tok = load_tokenizer(policy)
    rows = [build_example(tok, p, c, max_length) for p, comps in zip(texts, samples, strict=True) for c in comps]
    totals = []
    for folder in (policy, sft):
        model = load_causal_lm(folder).eval()
        parts = [
            sequence_logprobs(model, rows[i : i + 8], pad_id(tok), torch.device("cpu")) for i in range(0, len(rows), 8)
        ]
        totals.append(torch.cat(parts))
    return float((totals[0] - totals[1]).mean())


def _perplexity(policy: str, corpus: list[str]) -> float | None:
    if not corpus:
        return None
    from alignloop.evaluate.alignment_tax import corpus_perplexity
    from alignloop.evaluate.likelihood import CausalLMLikelihood

    return corpus_perplexity(corpus, CausalLMLikelihood.from_name(policy))["perplexity"]


def _evaluate(cfg, ids, texts, samples, policies, gold, scorer, corpus) -> list[dict[str, Any]]:
    from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates

    judged = {
        name: evaluate_win_rates(ScoreJudge(j, name), ids, texts, samples, "sft", cfg.eval.bootstrap, cfg.eval_seed)
        for name, j in (("gold", gold), ("rm", scorer))
    }
    sft_ppl = _perplexity(cfg.policy, corpus)
    rows = []
    for method in cfg.methods:
        row: dict[str, Any] = {"method": method}
        for judge, res in judged.items():
            r = res["win_rates"][method]
            row[f"{judge}_win_rate"], row[f"{judge}_ci"] = r["rate"], [r["ci_low"], r["ci_high"]]
            row[f"{judge}_mean_score"] = res["mean_score"][method]
        if method.startswith("bon"):
            n = int(method[3:])
            row["kl"], row["perplexity"] = math.log(n) - (n - 1) / n, sft_ppl
        else:
            row["kl"] = _kl_to_sft(policies[method], cfg.policy, texts, samples[method], cfg.dpo.max_length)
            row["perplexity"] = _perplexity(policies[method], corpus)
        rows.append(row)
    rows.append({"method": "sft", "gold_mean_score": judged["gold"]["mean_score"]["sft"], "perplexity": sft_ppl})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as one Markdown table."""

    def pct(row: dict[str, Any], judge: str) -> str:
        if f"{judge}_win_rate" not in row:
            return "(baseline)"
        lo, hi = row[f"{judge}_ci"]
        return f"{100 * row[f'{judge}_win_rate']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"

    def num(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [
        "| method | gold win rate vs SFT [95 % CI] | RM win rate vs SFT [95 % CI] | gold score | KL to SFT | "
        "perplexity | policy samples | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {pct(r, 'gold')} | {pct(r, 'rm')} | {num(r.get('gold_mean_score'), '.3f')} | "
            f"{num(r.get('kl'), '.3f')} | {num(r.get('perplexity'), '.2f')} | {num(r.get('samples'), 'd')} | "
            f"{num(r.get('seconds'), '.0f')} |"
        )
    return "\n".join(lines)


def _write(out: Path, rows: list[dict[str, Any]], rm_seconds: float) -> None:
    (out / "compare.json").write_text(json.dumps({"rows": rows, "rm_seconds": rm_seconds}, indent=1))
    note = f"\n\nThe reward model (shared by PPO, PPO-ptx, RLOO, GRPO, best-of-N) took {rm_seconds:.0f} s.\n"
    (out / "compare.md").write_text(format_table(rows) + note)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r for r in rows if "gold_win_rate" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "kl", "KL to SFT (nats)"), (axes[1], "seconds", "wall time (s)")):
        for r in methods:
            lo, hi = r["gold_ci"]
            x = r.get(key) or 0.0
            y = r["gold_win_rate"]
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=3)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4))
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("gold win rate vs SFT")
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
