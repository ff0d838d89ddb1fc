"""``alignloop compare`` on the demo task: the inputs the demo builds, then every method against SFT.

Run: ``.venv/bin/python examples/compare_demo.py --out runs/compare-demo [--tiny] [--episodes 32] [--seconds S]``

1. the demo's prompt sets (built-in prompts through the data pipeline: training users for SFT,
   RM and RL prompts, held-out users for evaluation) and the panel's demonstrations;
2. SFT of SmolLM2-135M (the demo's settings) -> the SFT policy;
3. K = 4 samples per RM prompt from the SFT policy, ranked by the simulated panel -> rankings;
4. ``alignloop compare`` with ``examples/configs/compare.yaml`` (MiniLM reward model; PPO,
   PPO-ptx, RLOO, DPO and rejection-sampling FT with LoRA; best-of-4 and best-of-16), the budget
   ``--episodes`` policy samples per method, or ``--seconds`` of wall time per method (then
   ``--episodes`` is the cap that lays out the schedules),
   a pretraining-like corpus made of the SFT demonstrations' prompts for PPO-ptx and perplexity.
Prints the table; ``OUT/compare/compare.{md,json,png}`` hold it. Run it again with the same
arguments after an interruption: it continues (``alignloop compare --resume``), keeping what finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from alignloop.config import CompareConfig, load_config
from alignloop.data.jsonl import write_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/compare-demo")
    ap.add_argument("--tiny", action="store_true", help="the random tiny model (plumbing check, minutes)")
    ap.add_argument("--episodes", type=int, default=32, help="policy samples of each RL method")
    ap.add_argument("--seconds", type=float, default=0, help="a wall-time budget per method (0: the sample budget)")
    ap.add_argument("--rm-prompts", type=int, default=32, help="prompts ranked (K = 4)")
    ap.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts evaluated")
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "compare.yaml"))
    ap.add_argument("--methods", default="", help="comma-separated; default: the config's")
    args = ap.parse_args()

    from alignloop.compare import budget_note, format_table, run_compare
    from alignloop.demo import demo_config, demonstrations, select_prompts
    from alignloop.labelers import GoldJudge, SimulatedPanel
    from alignloop.loop import sample_completions
    from alignloop.train.sft import best_policy_dir, train_sft

    out = Path(args.out)
    demo = demo_config(tiny=args.tiny)
    demo.n_rm_prompts = args.rm_prompts
    demo.eval = dataclasses.replace(demo.eval, n_prompts=args.eval_prompts)
    sets = select_prompts(demo)
    panel = SimulatedPanel(demo.panel, GoldJudge())
    demos = demonstrations(demo, panel, sets["sft"])
    if not (out / "sft" / "final").exists():
        train_sft(dataclasses.replace(demo.sft, model=demo.policy), demos, demonstrations(demo, panel, sets["sft_val"]),
                  out / "sft", resume=(out / "sft").exists())  # fmt: skip
    sft = str(best_policy_dir(out / "sft"))
    rm_prompts = sets["rm"][: args.rm_prompts]
    if not (out / "rankings.jsonl").exists():
        comps = sample_completions(sft, [p.text for p in rm_prompts], demo.k, demo.ranking_generation, seed=0)
        write_jsonl(out / "rankings.jsonl", panel.rank_items(list(zip(rm_prompts, comps, strict=True))))
    write_jsonl(out / "prompts.jsonl", sets["ppo"])
    write_jsonl(out / "eval.jsonl", sets["eval"][: args.eval_prompts])
    (out / "ptx.txt").write_text("\n\n".join(d.prompt + "\n" + d.completion for d in demos), encoding="utf-8")

    cfg = load_config(args.config, CompareConfig)
    if args.methods:
        cfg = dataclasses.replace(cfg, methods=args.methods.split(","))
    paths = {k: str(out / f) for k, f in (("rankings", "rankings.jsonl"), ("prompts", "prompts.jsonl"))}
    cfg = dataclasses.replace(cfg, policy=sft, eval_prompts=str(out / "eval.jsonl"), ptx_corpus=str(out / "ptx.txt"))
    cfg = dataclasses.replace(cfg, **paths, ppo=dataclasses.replace(cfg.ppo, total_episodes=args.episodes))
    if args.seconds:
        cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, kind="wall_time", seconds=args.seconds))
    if args.tiny:  # the tiny model has 2 layers and no pretrained encoder beside it
        rm = dataclasses.replace(cfg.rm, model=dataclasses.replace(cfg.rm.model, name="tiny"), lr=1e-3)
        cfg = dataclasses.replace(cfg, rm=rm, ppo=dataclasses.replace(cfg.ppo, value_layers=0, lr=1e-3))
    resume = (out / "compare" / "config.yaml").exists()  # run again after an interruption: continue it
    rows = run_compare(cfg, out / "compare", resume=resume)
    print(format_table(rows))
    print(
        budget_note(
            dataclasses.asdict(cfg.budget), json.loads((out / "compare" / "compare.json").read_text())["rm_seconds"]
        )
    )


if __name__ == "__main__":
    main()
