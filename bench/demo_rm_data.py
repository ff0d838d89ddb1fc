"""Which ranking data gives the demo's reward model the best agreement with the gold utility?

    .venv/bin/python bench/demo_rm_data.py --sft runs/demo/sft/best --out runs/rm-data \
        [--variants p64_k4,p64_k6,p128_k4,p128_k4_e2,p64_k4:epochs=1:lr=2e-5:seed=1]

Samples 8 completions per prompt from the demo's SFT policy for the first 128 RM training prompts and
for 48 more unseen RM training-user prompts (validation: the RM validation split has only 4 prompts),
lets the simulated panel rank a variant's share (first n prompts, first K completions), trains the
demo's reward model on it, and prints its agreement with the gold utility on every pair of the
validation completions whose gold utilities differ. The demo's test prompts are never used, so a
variant may be chosen by this figure. Variants: ``p{n}_k{K}`` (the demo's RM config), ``p{n}_k{K}_e2``
(2 epochs), each optionally followed by ``:field=value`` overrides of the demo's RMConfig (numbers
and strings, e.g. ``:lr=2e-5:seed=1``; ``:overlap=2``: each ranking
by 2 labelers; ``:model=PATH``: another RM base, e.g. the SFT policy), so one run can show the spread over RM seeds too.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import time
from pathlib import Path

N_SAMPLES = 8  # completions drawn per prompt; a variant ranks its first K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", required=True, help="the demo's SFT policy (a run's sft/best)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="p64_k4,p64_k6,p128_k4,p128_k4_e2")
    args = ap.parse_args()

    from alignloop.config import ModelConfig
    from alignloop.data.builtin import builtin_prompts
    from alignloop.data.pipeline import prepare
    from alignloop.demo import demo_config, demonstrations, select_prompts
    from alignloop.labelers import GoldJudge, SimulatedPanel
    from alignloop.loop import sample_completions
    from alignloop.models.reward import load_scorer
    from alignloop.models.scoring import score_all
    from alignloop.train.reward import train_reward_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config()
    rm_train = prepare(builtin_prompts(), cfg.data).get("rm", "train")
    train, val = rm_train[:128], rm_train[128:176]
    gold = GoldJudge()
    panel = SimulatedPanel(cfg.panel, gold)
    demos = demonstrations(cfg, panel, select_prompts(cfg)["sft"])
    cache = out / "samples.json"
    if not cache.exists():
        t0 = time.perf_counter()
        drawn = sample_completions(args.sft, [p.text for p in train + val], N_SAMPLES, cfg.ranking_generation, 7)
        cache.write_text(json.dumps(drawn))
        print(f"sampled {len(drawn)} x {N_SAMPLES} completions in {time.perf_counter() - t0:.0f} s", flush=True)
    comps = json.loads(cache.read_text())
    train_comps, val_comps = comps[: len(train)], comps[len(train) :]
    val_gold = [gold.score_batch([p.text] * N_SAMPLES, c) for p, c in zip(val, val_comps, strict=True)]

    def gold_agreement(scorer) -> tuple[float, int]:
        agree = pairs = 0
        for p, c, g in zip(val, val_comps, val_gold, strict=True):
            s = score_all(scorer, [p.text] * N_SAMPLES, c)
            for i, j in itertools.combinations(range(N_SAMPLES), 2):
                if g[i] != g[j]:
                    pairs += 1
                    agree += (s[i] - s[j]) * (g[i] - g[j]) > 0
        return agree / pairs, pairs

    print(f"{'variant':<34} {'RM s':>6} {'own val acc':>12} {'gold agreement':>15}", flush=True)
    for name in args.variants.split(","):
        m = re.fullmatch(r"p(\d+)_k(\d)(_e2)?((?::\w+=[^:]+)*)", name)
        if m is None:
            raise SystemExit(f"--variants: {name!r} is not p<n>_k<K>[_e2][:field=value...]")
        n, k = int(m[1]), int(m[2])
        rm_cfg = dataclasses.replace(cfg.rm, epochs=2) if m[3] else cfg.rm
        overrides = dict(kv.split("=", 1) for kv in m[4].split(":")[1:])
        overlap = int(overrides.pop("overlap", 1))  # labelers per ranking (the panel's, not the RM's)
        screen = float(overrides.pop("screen", 0.0))  # only labelers whose screening agreement reaches this
        try:
            fields = {f: override_value(v) for f, v in overrides.items()}
            if "model" in overrides:  # a model name or folder, e.g. the SFT policy for a causal RM
                fields["model"] = ModelConfig(name=overrides["model"])
            rm_cfg = dataclasses.replace(rm_cfg, **fields)
        except TypeError as err:
            raise SystemExit(f"--variants {name!r}: {err}") from None
        items = [(p, c[:k]) for p, c in zip(train[:n], train_comps[:n], strict=True)]
        passed = panel.qualified(screen) if screen else None  # the loop's screening (screened_only)
        if passed is not None:
            print(f"screening: {len(passed)} of {len(panel.labelers)} labelers pass {screen}", flush=True)
        rankings = panel.rank_items(items, overlap, passed)
        t0 = time.perf_counter()
        folder = out / name.replace(":", "_").replace("/", "_")
        rm = train_reward_model(rm_cfg, rankings, folder, demos=demos, overwrite=True, progress=False)
        seconds = time.perf_counter() - t0
        acc, pairs = gold_agreement(load_scorer(str(rm.model_dir)))
        own = rm.val.get("val/accuracy")
        print(f"{name:<34} {seconds:6.0f} {own:12.3f} {acc:15.3f}   ({pairs} validation pairs)", flush=True)


def override_value(text: str) -> bool | int | float | str:
    """A ``field=value`` override's value: a bool, an int, a float, or the text itself."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
