"""Iterated rounds of the InstructGPT loop, and the end-to-end demo.

One round (paper section 1 steps 4-7)::

    1. sample K completions from the current best policy on fresh RM prompts
    2. collect rankings of them (simulated panel, or people through the feedback service)
    3. train a new reward model on the rankings; normalise it on SFT demonstrations
    4. run PPO from the current policy against that reward model
    5. evaluate the new policy against the previous one on held-out prompts (gold judge)
    6. keep the better policy; stop at the metric threshold or the round limit

Each round's artifacts sit in ``OUT/round-N/`` (``samples.jsonl``, ``rankings.jsonl``,
``rm/``, ``ppo/``, ``eval/``). The demo adds the steps before the first round (prompts ->
demonstrations -> SFT) and the report after the last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from alignloop.config import GenerationConfig, LoopConfig, dump_config
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Demonstration, Prompt, Ranking
from alignloop.errors import AlignloopError


class RankingSource(Protocol):
    """Where rankings come from: the simulated panel or the feedback service, one call shape."""

    def collect_rankings(
        self,
        prompts: Sequence[Prompt | str],
        completions_per_prompt: Sequence[Sequence[str]],
        *,
        sources: Sequence[Sequence[str]] | None = None,
    ) -> list[Ranking]: ...


class PanelRankingSource:
    """The simulated labeler panel behind the :class:`RankingSource` interface."""

    def __init__(self, panel: Any, overlap: int = 1) -> None:
        self.panel, self.overlap = panel, overlap

    def collect_rankings(
        self,
        prompts: Sequence[Prompt | str],
        completions_per_prompt: Sequence[Sequence[str]],
        *,
        sources: Sequence[Sequence[str]] | None = None,
    ) -> list[Ranking]:
        items = [(p, list(c)) for p, c in zip(prompts, completions_per_prompt, strict=True)]
        rankings = self.panel.rank_items(items, overlap=self.overlap)
        if sources is not None:  # rank_items returns `overlap` rankings per item, item by item
            for i, r in enumerate(rankings):
                r.sources = list(sources[i // self.overlap])
        return rankings


def ranking_source(cfg: LoopConfig, panel: Any) -> RankingSource:
    """The source named by ``cfg.ranking_source``: the panel, or the feedback service at ``cfg.feedback_url``."""
    if cfg.ranking_source == "panel":
        return PanelRankingSource(panel, cfg.overlap)
    import os

    from alignloop.feedback.client import FeedbackClient

    password = os.environ.get(cfg.feedback_password_env, "")
    if not cfg.feedback_url or not cfg.feedback_user:
        raise AlignloopError(
            "ranking_source 'service' needs feedback_url and feedback_user",
            f"set them in the config and the admin password in ${cfg.feedback_password_env}",
        )
    client = FeedbackClient.login(cfg.feedback_url, cfg.feedback_user, password)
    return _ServiceSource(client, cfg.overlap)


class _ServiceSource:
    def __init__(self, client: Any, overlap: int) -> None:
        self.client, self.overlap = client, overlap

    def collect_rankings(self, prompts, completions_per_prompt, *, sources=None) -> list[Ranking]:
        return self.client.collect_rankings(prompts, completions_per_prompt, sources=sources, overlap=self.overlap)


# ---------------------------------------------------------------------------------------------- sampling


def sample_completions(
    policy: str | tuple[Any, Any],
    prompts: Sequence[str],
    k: int,
    gen: GenerationConfig,
    seed: int,
    dtype: str = "float32",
    progress: str | None = None,
) -> list[list[str]]:
    """K sampled completions per prompt from a policy folder (or a loaded (model, tokenizer));
    ``progress`` names a progress bar."""
    from alignloop.models import load_policy
    from alignloop.models.generation import generate

    model, tok = load_policy(policy, dtype) if isinstance(policy, str) else policy
    flat = [p for p in prompts for _ in range(k)]
    texts = generate(model, tok, flat, gen, seed=seed, progress=progress).texts
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def gold_win_rate(
    policies: dict[str, str],
    baseline: str,
    prompts: Sequence[Prompt],
    judge: Any,
    samples_per_prompt: int,
    gen: GenerationConfig,
    seed: int,
    n_bootstrap: int = 1000,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Win rate of each policy folder against ``baseline`` by the gold judge (bootstrap CI over prompts).

    Every policy samples ``samples_per_prompt`` completions of every prompt with the same seed;
    sample j of a policy meets sample j of the baseline.
    """
    from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates

    texts = [p.text for p in prompts]
    samples = {
        name: sample_completions(path, texts, samples_per_prompt, gen, seed, dtype, progress=f"evaluating {name}")
        for name, path in policies.items()
    }
    result = evaluate_win_rates(
        ScoreJudge(judge, "gold"), [p.id for p in prompts], texts, samples, baseline, n_bootstrap=n_bootstrap, seed=seed
    )
    result["samples"] = {name: s[:8] for name, s in samples.items()}
    return result


# ---------------------------------------------------------------------------------------------- rounds


@dataclass
class RoundResult:
    """What one round produced, and whether its policy beat the previous one."""

    index: int
    dir: Path
    rm_dir: Path
    ppo_dir: Path
    policy_dir: Path
    previous_policy: str
    win_rate: dict[str, Any] = field(default_factory=dict)
    rm_val_accuracy: float | None = None
    accepted: bool = True
    seconds: dict[str, float] = field(default_factory=dict)


def run_round(
    cfg: LoopConfig,
    index: int,
    policy: str,
    rm_prompts: Sequence[Prompt],
    ppo_prompts: Sequence[Prompt],
    eval_prompts: Sequence[Prompt],
    source: RankingSource,
    judge: Any,
    demos: Sequence[Demonstration],
    out: Path,
    log: Callable[[str], None] = print,
) -> RoundResult:
    """One round of rankings -> reward model -> PPO -> evaluation against ``policy``."""
    from alignloop.models.reward import load_scorer
    from alignloop.train.ppo import train_ppo
    from alignloop.train.reward import train_reward_model

    rdir = out / f"round-{index}"
    rdir.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    seed = cfg.ppo.seed + 1000 * index

    # 1. K completions per fresh RM prompt from the current policy.
    t0 = time.perf_counter()
    log(f"round {index}: sampling {cfg.k} completions for {len(rm_prompts)} prompts from {policy}")
    comps = sample_completions(
        policy, [p.text for p in rm_prompts], cfg.k, cfg.ranking_generation, seed, cfg.policy.dtype, "sampling"
    )
    write_jsonl(
        rdir / "samples.jsonl",
        [{"prompt_id": p.id, "prompt": p.text, "completions": c} for p, c in zip(rm_prompts, comps, strict=True)],
    )
    secs["sample"] = time.perf_counter() - t0

    # 2. Rankings from the panel or the feedback service (same interface).
    t0 = time.perf_counter()
    rankings = source.collect_rankings(list(rm_prompts), comps)
    write_jsonl(rdir / "rankings.jsonl", rankings)
    secs["rank"] = time.perf_counter() - t0
    log(f"round {index}: {len(rankings)} rankings collected")

    # 3. A new reward model, normalised so the SFT demonstrations score mean 0.
    t0 = time.perf_counter()
    rm = train_reward_model(cfg.rm, rankings, rdir / "rm", demos=list(demos), progress=True)
    secs["rm"] = time.perf_counter() - t0
    acc = rm.val.get("val/accuracy")
    log(f"round {index}: reward model held-out accuracy {acc if acc is None else f'{acc:.3f}'}")

    # 4. PPO from the current policy against the new reward model.
    t0 = time.perf_counter()
    scorer = load_scorer(str(rm.model_dir))
    ppo_cfg = replace(cfg.ppo, seed=seed)
    result = train_ppo(
        ppo_cfg, policy, scorer, [p.text for p in ppo_prompts], rdir / "ppo", extra_scorers={"gold": judge}
    )
    secs["ppo"] = time.perf_counter() - t0
    if result.policy_dir is None:
        raise AlignloopError(f"round {index}: PPO saved no policy", "see the PPO log in the round folder")

    # 5. The new policy against the previous one, by the gold judge, on held-out prompts.
    t0 = time.perf_counter()
    wr = gold_win_rate(
        {"previous": policy, "new": str(result.policy_dir)},
        "previous",
        eval_prompts,
        judge,
        cfg.eval.samples_per_prompt,
        cfg.eval.generation,
        seed=cfg.eval_seed,
        n_bootstrap=cfg.eval.bootstrap,
        dtype=cfg.policy.dtype,
    )
    secs["eval"] = time.perf_counter() - t0
    from alignloop.evaluate.results import write_result

    write_result(
        rdir / "eval",
        "winrate",
        {
            "baseline": "previous",
            "policies": {"previous": policy, "new": str(result.policy_dir)},
            "n_prompts": wr["n_prompts"],
            "samples_per_prompt": wr["samples_per_prompt"],
            "judges": {"gold": wr},
        },
    )
    rate = wr["win_rates"]["new"]
    log(
        f"round {index}: new policy vs previous, gold win rate {rate['rate']:.3f} "
        f"[{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"
    )
    return RoundResult(
        index,
        rdir,
        rm.model_dir,
        rdir / "ppo",
        Path(result.policy_dir),
        policy,
        wr,
        acc,
        accepted=rate["rate"] > 0.5,
        seconds=secs,
    )


def run_loop(
    cfg: LoopConfig,
    policy: str,
    rm_prompts: Sequence[Prompt],
    ppo_prompts: Sequence[Prompt],
    eval_prompts: Sequence[Prompt],
    source: RankingSource,
    judge: Any,
    demos: Sequence[Demonstration],
    out: str | Path,
    log: Callable[[str], None] = print,
) -> list[RoundResult]:
    """Rounds until ``cfg.rounds`` or until the new policy's gold win rate against the previous
    one reaches ``cfg.stop_threshold``. RM prompts are split into fresh, disjoint chunks per round."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    per_round = max(1, len(rm_prompts) // cfg.rounds)
    results: list[RoundResult] = []
    best = policy
    for i in range(1, cfg.rounds + 1):
        chunk = rm_prompts[(i - 1) * per_round : i * per_round] or rm_prompts[-per_round:]
        r = run_round(cfg, i, best, chunk, ppo_prompts, eval_prompts, source, judge, demos, out, log)
        results.append(r)
        if r.accepted:
            best = str(r.policy_dir)
        (out / "rounds.json").write_text(json.dumps([_round_summary(x) for x in results], indent=1))
        rate = r.win_rate["win_rates"]["new"]["rate"]
        if cfg.stop_threshold is not None and rate >= cfg.stop_threshold:
            log(f"stopping after round {i}: gold win rate {rate:.3f} >= threshold {cfg.stop_threshold}")
            break
    return results


def _round_summary(r: RoundResult) -> dict[str, Any]:
    rate = r.win_rate.get("win_rates", {}).get("new", {})
    return {
        "round": r.index,
        "policy": str(r.policy_dir),
        "previous": r.previous_policy,
        "accepted": r.accepted,
        "rm_val_accuracy": r.rm_val_accuracy,
        "gold_win_rate": rate.get("rate"),
        "ci_low": rate.get("ci_low"),
        "ci_high": rate.get("ci_high"),
        "seconds": r.seconds,
    }
