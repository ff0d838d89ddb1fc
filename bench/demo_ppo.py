"""Which PPO settings give the demo's policy the best gold win rate, judged on validation prompts?

    .venv/bin/python bench/demo_ppo.py --run runs/demo --out runs/demo-ppo \\
        --variants base,seed=2,total_episodes=384:lr=3e-4 [--threads 1]

Starts from a finished demo run (``alignloop demo --out RUN``): its SFT policy and its round-1 reward
model. Each variant runs PPO with the demo's PPOConfig plus the variant's ``field=value`` overrides
(``:``-separated; ``base`` = none; ``run`` = no training, the run's final policy;
``rm=PATH`` takes another reward model, e.g. one trained by
bench/demo_rm_data.py, ``rm=gold`` the gold utility as an oracle; dotted names reach nested configs,
``distributed.dtype=bf16``) on the demo's PPO prompts, then is judged against the SFT policy by the gold
utility exactly as the demo judges (4 samples per prompt at the evaluation's generation settings and
seed, bootstrap interval over prompts), but on 96 *validation* prompts: RM training-user prompts that
the demo never ranks (the demo ranks the first 64). The demo's test prompts are never used, so a
setting may be chosen by this table. A PPO run's seed is the demo round's unless the variant sets
``seed``; the spread over seeds is the training noise that the demo's printed interval leaves out.

Results are appended to OUT/results.jsonl as each variant ends, and a variant already there is not
run again, so two processes (``--threads 1`` each) can share the machine's two cores on one OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

N_VAL, VAL_START = 96, 128  # validation prompts: RM training prompts [128, 224), never ranked by the demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished demo run folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from alignloop.config import load_config
    from alignloop.data.builtin import builtin_prompts
    from alignloop.data.jsonl import read_jsonl
    from alignloop.data.pipeline import prepare
    from alignloop.data.records import Prompt
    from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates
    from alignloop.labelers import GoldJudge
    from alignloop.loop import sample_completions
    from alignloop.models.reward import load_scorer
    from alignloop.models.scoring import EnsembleScorer
    from alignloop.train.ppo import train_ppo
    from alignloop.train.runlog import read_metrics
    from demo_rm_data import override_value  # this folder is on sys.path when a script of it runs

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run / "config.yaml")
    sft = str(run / "sft" / "best")
    val = prepare(builtin_prompts(), cfg.data).get("rm", "train")[VAL_START : VAL_START + N_VAL]
    ranked = {p.id for p in read_jsonl(run / "prompts" / "rm.jsonl", Prompt)}
    if len(val) < N_VAL or ranked & {p.id for p in val}:
        raise SystemExit("the validation prompts overlap the demo's ranked prompts: is RUN a demo run?")
    ppo_prompts = [p.text for p in read_jsonl(run / "prompts" / "ppo.jsonl", Prompt)][: cfg.n_ppo_prompts]
    texts, gold = [p.text for p in val], GoldJudge()
    k, gen = cfg.eval.samples_per_prompt, cfg.eval.generation

    cache = out / "sft_samples.json"
    if not cache.exists():
        cache.write_text(json.dumps(sample_completions(sft, texts, k, gen, cfg.eval_seed)))
    sft_samples = json.loads(cache.read_text())
    results = out / "results.jsonl"
    done = {json.loads(line)["variant"] for line in results.read_text().splitlines()} if results.exists() else set()

    print(f"{'variant':<40} {'PPO s':>6} {'KL':>5} {'gold (train, last 4)':>20} "
          f"{'val win rate [95% CI]':>24} {'val gold':>8}", flush=True)  # fmt: skip
    for name in args.variants.split(","):
        if name in done:
            continue
        pairs = [] if name in ("base", "run") else [kv.split("=", 1) for kv in name.split(":")]
        if any(len(kv) != 2 for kv in pairs):
            raise SystemExit(f"--variants {name!r}: not base or field=value[:field=value...]")
        overrides = dict(pairs)
        rm = overrides.pop("rm", str(run / "round-1" / "rm" / "model"))
        spread = float(overrides.pop("spread", 0.0))  # an ensemble's (rm=A+B+C) penalty on its members' std
        fields = {"seed": cfg.ppo.seed + cfg.round_seed_stride}  # round 1's, as the demo
        fields.update({f: override_value(v) for f, v in overrides.items()})
        try:
            ppo_cfg = replace_fields(cfg.ppo, fields)
        except TypeError as err:
            raise SystemExit(f"--variants {name!r}: {err}") from None
        folder = out / name.replace(":", "_").replace("/", "_").replace("=", "-")
        t0 = time.perf_counter()
        if name == "run":  # the demo run's own final policy, judged on validation as it is
            policy_dir = Path(json.loads((run / "summary.json").read_text())["final_policy"])
            if not policy_dir.is_absolute():  # written relative to where the demo ran: take it from RUN
                policy_dir = run / policy_dir.relative_to(cfg.out_dir)
            folder = policy_dir.parent
        else:
            members = [] if rm == "gold" else [load_scorer(r) for r in rm.split("+")]
            scorer = GoldScorer(gold) if rm == "gold" else EnsembleScorer(members, spread)
            policy_dir = train_ppo(ppo_cfg, sft, scorer, ppo_prompts, folder, extra_scorers={"gold": gold},
                                   overwrite=True).policy_dir  # fmt: skip
        seconds = time.perf_counter() - t0
        rows = read_metrics(folder)
        samples = {"sft": sft_samples, "ppo": sample_completions(str(policy_dir), texts, k, gen, cfg.eval_seed)}
        (folder / "val_samples.json").write_text(json.dumps(samples["ppo"]))
        wr = evaluate_win_rates(ScoreJudge(gold, "gold"), [p.id for p in val], texts, samples, "sft",
                                n_bootstrap=cfg.eval.bootstrap, seed=cfg.eval_seed)  # fmt: skip
        rate, val_gold = wr["win_rates"]["ppo"], wr["mean_score"]["ppo"]
        row = {"variant": name, "ppo_s": seconds, "kl": rows[-1]["kl"],
               "train_gold_last4": statistics.fmean(r["score_gold"] for r in rows[-4:]),
               "win_rate": rate["rate"], "ci": [rate["ci_low"], rate["ci_high"]], "val_gold": val_gold,
               "components": component_means(gold, texts, samples["ppo"]),
               "sft_components": component_means(gold, texts, sft_samples)}  # fmt: skip
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        ci = f"[{rate['ci_low']:.1%}, {rate['ci_high']:.1%}]"
        print(f"{name:<40} {seconds:6.0f} {row['kl']:5.2f} {row['train_gold_last4']:20.3f} "
              f"{rate['rate']:9.1%} {ci:>14} {val_gold:8.3f}", flush=True)  # fmt: skip


def component_means(gold, texts: list[str], samples: list[list[str]]) -> dict[str, float]:
    """Mean of each gold component over the samples: which part of the utility did PPO move?"""
    flat = [(t, c) for t, cs in zip(texts, samples, strict=True) for c in cs]
    rows = gold.components_batch([t for t, _ in flat], [c for _, c in flat])
    return {key: round(statistics.fmean(r[key] for r in rows), 4) for key in rows[0]}


def replace_fields(obj, fields: dict):
    """``dataclasses.replace`` that also takes dotted names of nested configs (``distributed.dtype``)."""
    nested: dict[str, dict] = {}
    for key, value in fields.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
    plain = {k: v for k, v in fields.items() if "." not in k}
    plain.update({head: replace_fields(getattr(obj, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(obj, **plain)


class GoldScorer:
    """The gold utility as PPO's reward (an oracle reward model: how far can PPO go in this budget?),
    as 10 * (U - 0.7): its spread (~0.1) and mean (SFT's ~0.7) scaled and shifted to a trained reward
    model's (~1 and ~0), since the value model starts at 0 and an offset would skew the advantages."""

    def __init__(self, gold) -> None:
        self.gold = gold

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [10.0 * (u - 0.7) for u in self.gold.score_batch(prompts, completions)]


if __name__ == "__main__":
    main()
