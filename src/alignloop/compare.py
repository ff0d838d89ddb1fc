"""``alignloop compare``: every method on the same feedback, judged by the hidden gold utility (SPEC section 12).

From one SFT policy and one set of rankings, in the order the code runs it:

1. the reward model, trained once on the rankings (PPO, PPO-ptx, RLOO, GRPO, best-of-N and
   rejection-sampling FT optimise it; it is also the second judge);
2. each method: ``ppo`` / ``ppo_ptx`` / ``rloo`` / ``grpo`` (the PPO trainer with that
   ``algorithm``, and ``gamma_ptx = ptx_gamma`` for PPO-ptx), ``dpo`` (directly on the rankings),
   ``rejection_ft`` (best-of-``rejection_ft.n`` on RL prompts, SFT on the RM's favourites:
   :mod:`alignloop.train.rejection`), ``bonN`` (best-of-N at inference: N SFT samples per answer,
   the RM's favourite kept). The matched budget (``budget``, :class:`~alignloop.config.CompareBudget`):
   ``samples``: every sampling method draws ``ppo.total_episodes`` policy samples (DPO draws none
   and trains ``dpo.epochs``); ``wall_time``: every trained method gets ``budget.seconds`` and
   stops at its first step boundary after them, writing its policy
   (:func:`~alignloop.train.checkpoint.wall_time_budget`). Best-of-N trains nothing: its cost is
   paid at inference and reported as such;
3. every policy and SFT answer the held-out prompts (``eval.samples_per_prompt`` each, the same
   seed); win rates against SFT by the gold judge and by the RM, with 95 % bootstrap intervals
   over prompts; KL to SFT: mean over a policy's own answers of log pi(y|x) - log pi_SFT(y|x)
   (temperature 1; best-of-N: the analytic log N - (N-1)/N); perplexity on ``ptx_corpus``
   (the alignment tax, on the corpus's held-out last ``ptx_heldout_fraction`` of documents, which
   PPO-ptx never trains on; best-of-N keeps SFT's weights);
4. ``OUT/compare.json``, ``OUT/compare.md`` (one table, with what each method spent: policy
   samples, optimizer steps, wall time, and whether the budget stopped it) and ``OUT/compare.png``
   (gold win rate against KL and against wall time); ``alignloop report`` shows them.
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
from alignloop.train.checkpoint import wall_time_budget


def run_compare(
    cfg: CompareConfig, out: str | Path, log: Callable[[str], None] = print, *, resume: bool = False
) -> list[dict[str, Any]]:
    """Train and evaluate every method of ``cfg``; write the table and the plot into ``out``.

    ``resume``: continue a comparison in ``out`` that was interrupted (the same config, or an error
    naming the changed fields). What finished is kept: the reward model, every method whose policy
    was written, every answer set, KL and perplexity already computed (``OUT/eval/``). A method
    that was interrupted starts again from scratch: under a wall-time budget its spent time could
    not be counted honestly, and its folder is compare's own (``OUT/<method>``)."""
    from alignloop.labelers.gold import GoldJudge
    from alignloop.models.reward import load_scorer

    try:
        cfg.validate()
        cfg.check_inputs()
    except ValueError as err:
        raise AlignloopError(f"compare config: {err}") from None
    # every input is read before OUT is touched: a bad file leaves no half-begun comparison behind
    rankings = read_jsonl(cfg.rankings, Ranking)
    eval_prompts = read_jsonl(cfg.eval_prompts, Prompt)
    prompts = read_jsonl(cfg.prompts, Prompt) if cfg.prompts else []
    ptx_train, ptx_heldout = _corpus(cfg)
    if not rankings or not eval_prompts:
        raise AlignloopError("compare needs rankings and held-out prompts", "check the rankings and eval_prompts files")
    out = Path(out)
    _open(cfg, out, resume)
    if resume and (out / "compare.json").exists():
        log(f"compare: {out} already finished; its table is kept")
        return json.loads((out / "compare.json").read_text())["rows"]

    # 1. the reward model (kept when a resumed run had finished it)
    rm = _stage(out, "rm", lambda: _reward_model(cfg, rankings, out / "rm"), log)
    scorer = load_scorer(rm["model_dir"])
    log(f"compare: reward model trained in {rm['seconds']:.0f} s")

    # 2. each method -> a policy folder (best-of-N: none)
    info: dict[str, dict[str, Any]] = {}
    for method in cfg.methods:
        if method.startswith("bon"):
            info[method] = {"samples": None, "seconds": 0.0}
            continue
        info[method] = _stage(
            out, method, lambda m=method: _timed_train(cfg, m, rankings, prompts, ptx_train, scorer, out), log
        )
        spent = info[method]
        log(
            f"compare: {method} trained in {spent['seconds']:.0f} s, {spent['steps']} steps, "
            f"{spent['samples']} policy samples ({spent['stopped']})"
        )
    policies = {m: spent.pop("policy") for m, spent in info.items() if "policy" in spent}

    # 3. answers to the held-out prompts (each set kept in OUT/eval as it is drawn); judges; KL; perplexity
    texts, ids = [p.text for p in eval_prompts], [p.id for p in eval_prompts]
    samples = {"sft": _answers(cfg, out, "sft", cfg.policy, texts)}
    samples |= {m: _answers(cfg, out, m, p, texts) for m, p in policies.items()}
    for method in cfg.methods:
        if method.startswith("bon"):
            bon = _cached(
                out / "eval" / f"{method}.answers.json", lambda m=method: _timed_best_of_n(cfg, texts, m, scorer)
            )
            samples[method] = bon["answers"]
            info[method] |= {"seconds": bon["seconds"], "samples": bon["samples"]}  # best-of-N pays at inference
    rows = _evaluate(cfg, out, ids, texts, samples, policies, GoldJudge(), scorer, ptx_heldout)
    for row in rows:
        row.update(info.get(row["method"], {}))
    _write(out, rows, rm["seconds"], dataclasses.asdict(cfg.budget))
    return rows


def _open(cfg: CompareConfig, out: Path, resume: bool) -> None:
    """A new comparison needs an empty or absent ``out``; a resumed one, the same config as it began with."""
    from alignloop.train.run_folder import check_same_config

    if resume:
        if not (out / "config.yaml").exists():
            raise AlignloopError(f"nothing to resume: {out} holds no comparison", "drop --resume to start one")
        check_same_config(out, cfg)
        return
    if out.exists() and any(out.iterdir()):
        what = "a finished comparison" if (out / "compare.json").exists() else "an unfinished comparison or other files"
        raise AlignloopError(
            f"{out} already holds {what}", "pass --resume to continue it, or choose a new --out folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")


def _stage(out: Path, name: str, run: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """Run one stage whose files live in ``out/name`` and whose outcome is ``out/name/compare_stage.json``.

    A stage that finished (its outcome file exists) is not run again. A folder without one is what
    an interrupted stage left; it is deleted and the stage starts over."""
    import shutil

    folder, done = out / name, out / name / "compare_stage.json"
    if done.exists():
        log(f"compare: {name} already done; kept")
        return json.loads(done.read_text())
    if folder.exists():
        log(f"compare: {name} was interrupted; starting it again")
        shutil.rmtree(folder)
    result = run()
    _write_json(done, result)
    return result


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, stored at ``path`` the first time (written whole, then renamed)."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    _write_json(path, value)
    return value


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _reward_model(cfg: CompareConfig, rankings: Sequence[Ranking], run: Path) -> dict[str, Any]:
    from alignloop.train.reward import train_reward_model

    t0 = time.perf_counter()
    rm = train_reward_model(cfg.rm, rankings, run, progress=False)
    return {"model_dir": str(rm.model_dir), "seconds": time.perf_counter() - t0}


def _timed_train(cfg, method, rankings, prompts, corpus, scorer, out: Path) -> dict[str, Any]:
    """``_train`` under the budget: the policy folder, what it spent, and its wall time."""
    seconds = cfg.budget.seconds if cfg.budget.kind == "wall_time" else None
    t0 = time.perf_counter()
    with wall_time_budget(seconds):
        folder, spent = _train(cfg, method, rankings, prompts, corpus, scorer, out / method)
    return spent | {"policy": folder, "seconds": time.perf_counter() - t0}


def _answers(cfg: CompareConfig, out: Path, name: str, policy: str, texts: list[str]) -> list[list[str]]:
    """``eval.samples_per_prompt`` answers of ``policy`` to each held-out prompt (the same seed for every policy)."""
    return _cached(out / "eval" / f"{name}.answers.json", lambda: sample_completions_for_eval(cfg, policy, texts))


def sample_completions_for_eval(cfg: CompareConfig, policy: str, texts: list[str]) -> list[list[str]]:
    """``eval.samples_per_prompt`` answers per held-out prompt, with the evaluation seed (the same for every policy)."""
    from alignloop.loop import sample_completions

    spp, gen = cfg.eval.samples_per_prompt, cfg.eval.generation
    return sample_completions(policy, texts, spp, gen, cfg.eval_seed, cfg.dpo.model.dtype)


def _timed_best_of_n(cfg: CompareConfig, texts: list[str], method: str, scorer) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = int(method[3:])
    answers = _best_of_n(cfg, texts, n, scorer)
    return {
        "answers": answers,
        "seconds": time.perf_counter() - t0,
        "samples": n * len(texts) * cfg.eval.samples_per_prompt,
    }


def _corpus(cfg: CompareConfig) -> tuple[list[str], list[str]]:
    """``ptx_corpus`` split into PPO-ptx's training documents and the held-out last
    ``ptx_heldout_fraction`` of them, on which perplexity is measured (both empty without a corpus)."""
    if not cfg.ptx_corpus:
        return [], []
    from alignloop.evaluate.alignment_tax import read_corpus

    docs = read_corpus(cfg.ptx_corpus, cfg.max_ptx_documents)
    held = math.ceil(len(docs) * cfg.ptx_heldout_fraction)
    if len(docs) - held < 1:
        raise AlignloopError(
            f"ptx_corpus: {cfg.ptx_corpus} has {len(docs)} document(s); at least 2 are needed "
            "(some to train PPO-ptx on, the held-out rest for perplexity)",
            "separate documents by a blank line",
        )
    return docs[: len(docs) - held], docs[len(docs) - held :]


def _train(
    cfg: CompareConfig,
    method: str,
    rankings: Sequence[Ranking],
    prompts: list[Prompt],
    corpus: list[str],
    scorer,
    run: Path,
) -> tuple[str, dict[str, Any]]:
    """One method's policy folder and what it spent: policy samples, optimizer steps, and ``stopped``
    (``budget`` when the wall-time budget ended it, ``complete`` when it ran its whole schedule)."""
    if method == "dpo":
        return _dpo(cfg, rankings, run)
    if method == "rejection_ft":
        return _rejection_ft(cfg, prompts, scorer, run)
    from alignloop.train.ppo import train_ppo

    algorithm = "ppo" if method in ("ppo", "ppo_ptx") else method
    gamma = cfg.ptx_gamma if method == "ppo_ptx" else 0.0
    ppo_cfg = dataclasses.replace(cfg.ppo, algorithm=algorithm, gamma_ptx=gamma)
    texts = [p.text for p in prompts]
    res = train_ppo(ppo_cfg, cfg.policy, scorer, texts, run, ptx_texts=corpus or None, progress=False)
    complete = res.iterations == ppo_cfg.total_episodes // ppo_cfg.batch_size
    spent = {"samples": res.iterations * ppo_cfg.batch_size, "steps": res.iterations}
    return str(res.policy_dir), spent | {"stopped": "complete" if complete else "budget"}


def _dpo(cfg: CompareConfig, rankings: Sequence[Ranking], run: Path) -> tuple[str, dict[str, Any]]:
    """DPO from the SFT policy; under a wall-time budget ``train_dpo`` stops at its first step
    boundary after it and writes that step's policy, as PPO and rejection FT do."""
    from alignloop.train.dpo import train_dpo

    dpo_cfg = dataclasses.replace(cfg.dpo, model=dataclasses.replace(cfg.dpo.model, name=cfg.policy))
    res = train_dpo(dpo_cfg, rankings, run, progress=False)
    stopped = "budget" if res.stopped_by_budget else "complete"
    return str(res.policy_dir), {"samples": 0, "steps": res.steps, "stopped": stopped}


def _rejection_ft(cfg: CompareConfig, prompts: list[Prompt], scorer, run: Path) -> tuple[str, dict[str, Any]]:
    """Rejection-sampling fine-tuning: best-of-n on the first ``ppo.total_episodes // n`` RL prompts
    (the same policy samples as the RL methods), then SFT of the SFT policy on the RM's favourites
    (:func:`~alignloop.train.rejection.rejection_sampling_finetune`). Under a wall-time budget the
    sampling goes in chunks and stops after ``budget.rejection_sample_share`` of the time; the
    fine-tuning stops at the budget."""
    from alignloop.models.loading import load_policy
    from alignloop.train.checkpoint import budget_active
    from alignloop.train.rejection import BestOfN, _split, best_of_n, rejection_sampling_finetune
    from alignloop.train.sft import quiet_hf

    t0 = time.monotonic()
    rs = dataclasses.replace(cfg.rejection_ft, policy=dataclasses.replace(cfg.rejection_ft.policy, name=cfg.policy))
    chosen = prompts[: max(1, cfg.ppo.total_episodes // rs.n)]
    sample_until = t0 + cfg.budget.seconds * cfg.budget.rejection_sample_share if budget_active() else math.inf
    with quiet_hf():
        model, tokenizer = load_policy(rs.policy.name, rs.policy.dtype)
    chunk = max(1, rs.generation.batch_size // rs.n)
    parts: list[BestOfN] = []
    for i in range(0, len(chosen), chunk):
        if parts and time.monotonic() >= sample_until:
            break
        part = chosen[i : i + chunk]
        ids = [p.id for p in part]
        parts.append(best_of_n(model, tokenizer, [p.text for p in part], scorer, rs.n, rs.generation, seed=rs.seed + i,
                               prompt_ids=ids))  # fmt: skip
    del model
    drawn = BestOfN(
        prompts=[x for p in parts for x in p.prompts],
        completions=[x for p in parts for x in p.completions],
        scores=[x for p in parts for x in p.scores],
        has_eos=[x for p in parts for x in p.has_eos],
        prompt_ids=[x for p in parts for x in p.ids()],
    )
    sampled = chosen[: len(drawn.prompts)]
    _, sft = rejection_sampling_finetune(rs, sampled, scorer, run, samples=drawn)
    n_train = len(_split(sampled, rs.val_fraction, rs.seed)[0])
    total = math.ceil(n_train / (rs.sft.batch_size * rs.sft.grad_accum)) * rs.sft.epochs  # the run's schedule
    stopped = "budget" if len(sampled) < len(chosen) or sft.steps < total else "complete"
    spent = {"samples": rs.n * len(sampled), "steps": sft.steps, "stopped": stopped}
    return str(sft.best_dir or sft.final_dir), spent


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


def _evaluate(cfg, out, ids, texts, samples, policies, gold, scorer, corpus) -> list[dict[str, Any]]:
    from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates

    judged = {
        name: evaluate_win_rates(ScoreJudge(j, name), ids, texts, samples, "sft", cfg.eval.bootstrap, cfg.eval_seed)
        for name, j in (("gold", gold), ("rm", scorer))
    }

    def measured(method: str, what: str, compute: Callable[[], Any]) -> Any:
        return _cached(out / "eval" / f"{method}.{what}.json", compute)

    sft_ppl = measured("sft", "perplexity", lambda: _perplexity(cfg.policy, corpus))
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
            policy, answers = policies[method], samples[method]
            row["kl"] = measured(
                method, "kl", lambda p=policy, a=answers: _kl_to_sft(p, cfg.policy, texts, a, cfg.dpo.max_length)
            )
            row["perplexity"] = measured(method, "perplexity", lambda p=policy: _perplexity(p, corpus))
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
        "perplexity | policy samples | steps | wall s | stopped by |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        stopped = {"budget": "budget", "complete": "schedule end"}.get(r.get("stopped"), "-")
        lines.append(
            f"| {r['method']} | {pct(r, 'gold')} | {pct(r, 'rm')} | {num(r.get('gold_mean_score'), '.3f')} | "
            f"{num(r.get('kl'), '.3f')} | {num(r.get('perplexity'), '.2f')} | {num(r.get('samples'), 'd')} | "
            f"{num(r.get('steps'), 'd')} | {num(r.get('seconds'), '.0f')} | {stopped} |"
        )
    return "\n".join(lines)


def budget_note(budget: dict[str, Any], rm_seconds: float) -> str:
    """What the table's methods were matched on, and the shared reward model's cost (beside the table)."""
    if budget.get("kind") == "wall_time":
        head = (
            f"Budget: the same wall time, {budget['seconds']:.0f} s per trained method, each stopped at its "
            "first step boundary after it (wall s includes that last step and saving the policy)."
        )
    else:
        head = "Budget: the same number of policy samples for every sampling method (DPO samples none)."
    tail = (
        " Best-of-N trains nothing: its samples and wall s are paid at inference, on the held-out prompts."
        f" The reward model (used by every method but DPO) took {rm_seconds:.0f} s, counted in no row."
    )
    return head + tail


def _write(out: Path, rows: list[dict[str, Any]], rm_seconds: float, budget: dict[str, Any]) -> None:
    (out / "compare.json").write_text(json.dumps({"rows": rows, "rm_seconds": rm_seconds, "budget": budget}, indent=1))
    note = "\n\n" + budget_note(budget, rm_seconds) + "\n"
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
