"""A round's evaluation and decision: the new policy against the previous one, by judges that exist.

With people (``ranking_source: service``) the deciding judge is the labelers: a pairwise
campaign (the service's best-pick form with two completions) of new vs previous samples on
held-out prompts, assigned to every labeler, held-out groups included; their win rate is
reported apart from the training labelers' (paper section 4.1). The round's reward model judges
the same samples alongside (cheap, but it is the proxy PPO optimised, so it flatters the new
policy). The hidden gold utility judges only where it exists: with the simulated panel.

The accept rule (``LoopConfig.accept_rule``) reads the deciding judge's win rate and its 95 %
bootstrap interval; the default accepts only when the whole interval is above 0.5, so a round
whose interval straddles 0.5 (no evidence the new policy is better) is rejected.
"""

from __future__ import annotations

import json
import os
from typing import Any

from alignloop.errors import AlignloopError

EVAL_PURPOSE = "evaluation"


def accepts(rule: str, win: dict[str, Any], threshold: float = 0.5) -> bool:
    """Whether a win rate (``rate``, ``ci_low``) passes the accept rule: the rule's statistic above
    ``threshold`` (``LoopConfig.accept_threshold``), or ``always``."""
    if rule == "always":
        return True
    stat = rule.split(" > ")[0]  # "ci_low > 0.5" is the older spelling of "ci_low" (threshold 0.5)
    if stat not in ("rate", "ci_low"):
        raise AlignloopError(f"accept_rule: unknown rule {rule!r}", "use 'ci_low', 'rate' or 'always'")
    return win[stat] > threshold


def deciding_judge(cfg: Any, has_service: bool, has_gold: bool) -> str:
    """The judge whose win rate decides: ``cfg.judge``, or labelers with people and gold with the panel."""
    judge = cfg.judge if cfg.judge != "auto" else ("human" if has_service else "gold")
    if judge == "human" and not has_service:
        raise AlignloopError("judge 'human' needs ranking_source: service", "set judge: gold or rm with the panel")
    if judge == "gold" and not has_gold:
        raise AlignloopError("judge 'gold' needs the simulated panel's gold utility", "set judge: human or rm")
    return judge


def _load_or_sample(run: Any, rnd: dict[str, Any], prompts: list, policies: dict[str, str]) -> dict[str, list]:
    """Both policies' samples of the eval prompts, sampled once (a resumed round reuses them)."""
    from alignloop.loop import sample_completions

    path = run.rdir(rnd) / "eval" / "samples.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    cfg = run.cfg
    texts = [p.text for p in prompts]
    samples = {
        name: sample_completions(
            policy,
            texts,
            cfg.eval.samples_per_prompt,
            cfg.eval.generation,
            cfg.eval_seed,
            cfg.sample_weights_dtype,
            progress=f"evaluating {name}",
        )  # fmt: skip
        for name, policy in policies.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(samples), encoding="utf-8")
    os.replace(tmp, path)
    return samples


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    w = result["win_rates"]["new"]
    return {k: w[k] for k in ("rate", "ci_low", "ci_high", "n", "n_prompts")}


def human_result(client: Any, rec: dict[str, Any], meta: list[dict[str, Any]], n_bootstrap: int, seed: int) -> dict:
    """Labelers' win rate of new vs previous, overall and for training vs held-out labeler groups."""
    from alignloop.evaluate.human import battles_from_labels
    from alignloop.evaluate.winrate import summarize_battles
    from alignloop.loop_service import labeler_groups

    meta_by_item = {int(i): m for i, m in zip(rec["item_ids"], meta, strict=True)}

    # Labels arrive in whatever order people work; Elo depends on battle order, so sort them.
    def order(lb: dict[str, Any]) -> tuple:
        m = meta_by_item.get(int(lb["item_id"]), {})
        return (m.get("prompt_id", ""), m.get("sample", 0), lb["labeler"])

    labels = sorted(client.labels(rec["id"]), key=order)
    battles = battles_from_labels(labels, meta_by_item)
    if not battles:
        raise AlignloopError(f"evaluation campaign {rec['id']}: every task was skipped", "push more evaluation items")
    out = summarize_battles(battles, ["new", "previous"], "previous", n_bootstrap, seed)
    groups, held = labeler_groups(client)
    out["by_labelers"] = {}
    for kind, keep in (("training", lambda g: g not in held), ("held_out", lambda g: g in held)):
        part = battles_from_labels([lb for lb in labels if keep(groups.get(lb["labeler"], ""))], meta_by_item)
        if part:
            out["by_labelers"][kind] = summarize_battles(part, ["new", "previous"], "previous", n_bootstrap, seed)[
                "win_rates"
            ]["new"]
    return out


def evaluate_round(run: Any, rnd: dict[str, Any]) -> None:
    """Judge the round's new policy against its previous one, write ``eval/winrate.json``, decide."""
    from alignloop.evaluate.human import GUIDELINES, campaign_items
    from alignloop.evaluate.results import write_result
    from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates
    from alignloop.loop_service import push_campaign, wait_for

    cfg, state = run.cfg, run.state
    prompts = run.prompts("eval")[: cfg.eval.n_prompts]
    policies = {"previous": rnd["policy"], "new": rnd["artifacts"]["policy"]}
    decide = deciding_judge(cfg, run.client is not None, run.use_gold)
    samples = _load_or_sample(run, rnd, prompts, policies)
    ids, texts = [p.id for p in prompts], [p.text for p in prompts]
    judges = rnd["metrics"].setdefault("judges", {})
    wins = rnd["metrics"].setdefault("win_rates", {})

    # 1. People first, so labelers can start while the machines judge.
    if run.client is not None:
        items, meta = campaign_items(prompts, samples, "previous")
        push_campaign(run.client, state, rnd, EVAL_PURPOSE, "best_pick", GUIDELINES, items, cfg.eval_overlap,
                      cfg.screened_only)  # fmt: skip
    # 2. The round's reward model alongside, and the gold utility where it exists.
    machine = {"rm": None, "gold": run.judge if run.use_gold else None}
    for name, scorer in machine.items():
        if name in judges or (name == "gold" and scorer is None):
            continue
        if name == "rm":
            from alignloop.models.reward import load_scorer

            scorer = load_scorer(rnd["artifacts"]["reward_model"])
        judges[name] = evaluate_win_rates(
            ScoreJudge(scorer, name), ids, texts, samples, "previous", cfg.eval.bootstrap, cfg.eval_seed
        )
        wins[name] = _summary(judges[name])
        state.save()
    # 3. The labelers' verdicts (waits, or exits with the waiting line).
    if run.client is not None and "human" not in judges:
        wait_for(run.client, state, rnd, EVAL_PURPOSE, cfg, run.no_wait, run.log)
        rec = rnd["campaigns"][EVAL_PURPOSE]
        judges["human"] = human_result(run.client, rec, meta, cfg.eval.bootstrap, cfg.eval_seed) | {
            "judge": "human",
            "n_prompts": len(prompts),
            "samples_per_prompt": cfg.eval.samples_per_prompt,
        }
        wins["human"] = _summary(judges["human"])
        for kind, w in judges["human"]["by_labelers"].items():
            wins[f"human_{kind}"] = {k: w[k] for k in ("rate", "ci_low", "ci_high", "n", "n_prompts")}
    write_result(
        run.rdir(rnd) / "eval",
        "winrate",
        {"baseline": "previous", "policies": policies, "n_prompts": len(prompts),
         "samples_per_prompt": cfg.eval.samples_per_prompt, "judges": judges},
    )  # fmt: skip
    # 4. The decision, with its numbers.
    w = wins[decide]
    accepted = accepts(cfg.accept_rule, w, cfg.accept_threshold)
    stat = cfg.accept_rule.split(" > ")[0]
    rule = stat if stat == "always" else f"{stat} > {cfg.accept_threshold}"
    rnd["decision"] = {"judge": decide, "rule": rule, "accepted": accepted} | w
    if accepted:
        state.data["best_policy"] = rnd["artifacts"]["policy"]
    run.log(
        f"round {rnd['index']}: new vs previous, {decide} win rate {w['rate']:.3f} [{w['ci_low']:.3f}, "
        f"{w['ci_high']:.3f}] -> {'accepted' if accepted else 'rejected'} ({rule})"
    )
