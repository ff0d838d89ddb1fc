"""How well does each reward model still order the answers of a policy optimised against it?

    .venv/bin/python bench/rm_on_policy_agreement.py \\
        --samples sft=runs/ppo-val/sft_samples.json,ppo=runs/ppo-val/base/val_samples.json \\
        --rms demo=runs/demo/round-1/rm/model,other=runs/rm-data/p64_k4_overlap=3/model

Reads the validation samples that ``bench/demo_ppo.py`` saves (``sft_samples.json`` and each variant's
``val_samples.json``: 4 answers for each of its 96 validation prompts) and prints, per reward model and
sample set, the share of answer pairs of one prompt (gold utilities differing) that the RM orders as the
gold utility does. On SFT samples the demo's RMs reach 0.70-0.73; on one PPO policy's answers 0.54-0.66,
the lower the further PPO went (session 8, docs/NOTES.md).
"""

from __future__ import annotations

import argparse
import itertools
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", required=True, help="NAME=PATH,... of bench/demo_ppo.py sample files")
    ap.add_argument("--rms", required=True, help="NAME=PATH,... of reward model folders")
    args = ap.parse_args()

    from alignloop.data.builtin import builtin_prompts
    from alignloop.data.pipeline import prepare
    from alignloop.demo import demo_config
    from alignloop.labelers import GoldJudge
    from alignloop.models.reward import load_scorer
    from alignloop.models.scoring import score_all
    from demo_ppo import N_VAL, VAL_START  # this folder is on sys.path when a script of it runs

    val = prepare(builtin_prompts(), demo_config().data).get("rm", "train")[VAL_START : VAL_START + N_VAL]
    sets = {name: json.loads(open(path).read()) for name, path in (kv.split("=", 1) for kv in args.samples.split(","))}
    gold = GoldJudge()
    print(f"{'reward model':<16}" + "".join(f"{name:>16}" for name in sets), flush=True)
    for rm_name, path in (kv.split("=", 1) for kv in args.rms.split(",")):
        scorer, row = load_scorer(path), []
        for samples in sets.values():
            agree = pairs = 0
            for prompt, answers in zip(val, samples, strict=True):
                g = gold.score_batch([prompt.text] * len(answers), answers)
                s = score_all(scorer, [prompt.text] * len(answers), answers)
                for i, j in itertools.combinations(range(len(answers)), 2):
                    if g[i] != g[j]:
                        pairs += 1
                        agree += (s[i] - s[j]) * (g[i] - g[j]) > 0
            row.append(f"{agree / pairs:.3f} ({pairs})")
        print(f"{rm_name:<16}" + "".join(f"{cell:>16}" for cell in row), flush=True)


if __name__ == "__main__":
    main()
