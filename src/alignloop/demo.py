"""The end-to-end demo: prompts -> demonstrations -> SFT -> rankings -> RM -> PPO -> evaluation -> report.

Everything runs offline on the packaged default policy (or ``tiny``) with the simulated labeler
panel standing in for people, so the result can be checked against the panel's hidden gold
utility: the demo prints the final policy's gold-judge win rate against the SFT policy on
held-out prompts from held-out users, with its 95 % confidence interval.

The defaults are sized for 2 CPU cores: about 5 minutes where the CPU multiplies bf16 natively, 8-11 in
fp32 elsewhere (see :func:`demo_config` and the README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alignloop.config import LoopConfig, ModelConfig, dump_config
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Demonstration, Prompt
from alignloop.errors import AlignloopError


def demo_config(tiny: bool = False) -> LoopConfig:
    """The demo's defaults: SmolLM2-135M policy with LoRA PPO, MiniLM reward model, one round."""
    from alignloop.train.distributed import native_bf16  # imports torch: not at the CLI's start

    cfg = LoopConfig(out_dir="runs/demo-tiny" if tiny else "runs/demo")
    name = "tiny" if tiny else "smollm2-135m-instruct"
    cfg.policy = ModelConfig(name=name)
    cfg.sft = replace(
        cfg.sft,
        model=ModelConfig(name=name),
        epochs=1 if not tiny else 3,
        lr=5e-5 if not tiny else 3e-3,
        batch_size=8,
        max_length=160,
        eval_at_start=False,
        eval_prompts=0,
        system_prompt="",  # SmolLM2's default system message is 16 of a query's ~30 tokens: every pass pays for it
    )
    cfg.rm = replace(
        cfg.rm,
        model=ModelConfig(name="tiny" if tiny else "minilm-l6"),  # the encoder RM is the cheap option of SPEC 5
        epochs=3,
        lr=5e-5 if not tiny else 1e-3,
        prompts_per_step=4,
        max_length=128,
        val_fraction=0.15,
        # Relevance (alignloop.models.relevance): the head alone learns tone, hardly topic, from 64 prompts;
        # with the frozen encoder's prompt-answer cosine the RM ordered validation pairs as gold does on
        # 0.752 of SFT answers (0.694 without) and 0.693 of a PPO policy's (0.628): docs/NOTES.md, session 9
        relevance="minilm-l6",
    )
    cfg.ppo = replace(
        cfg.ppo,
        # The clipped PPO objective with RLOO's baseline (4 answers per prompt, each judged against the mean
        # reward of the other three) instead of a learned value model, which on this budget is a 4-layer copy
        # of the policy starting at V = 0: validation win rate 73.8 vs 70.7 % over six paired seeds (4 higher) on
        # one host, 73.4 vs 72.5 % over three (1 higher) on another, and 15-20 % less PPO time (docs/NOTES.md,
        # sessions 11-12). `alignloop loop` and `alignloop ppo` keep PPO.
        algorithm="ppo" if tiny else "rloo",
        group_size=4,
        total_episodes=64 if tiny else 256,
        batch_size=16,
        minibatch_size=8,
        ppo_epochs=2,
        # 4e-4: with the relevance RM it beat 2e-4 in all three paired validation runs (71.8 vs 69.5 % on
        # average; docs/NOTES.md, session 9); with head-only RMs the larger step was exploited
        lr=4e-4 if not tiny else 1e-3,
        # KL coefficient: 0.02 beat 0.05 in every paired validation run so far (same RM and seed: 69.4 vs
        # 68.2 % and 66.4 vs 60.4 % in session 8, 65.8 vs 58.7 % in session 6; docs/NOTES.md)
        beta=0.02,
        lora_r=16 if not tiny else 0,
        value_layers=4 if not tiny else 0,  # with algorithm ppo: a 4-layer value trunk, at 1/7 of the policy's cost
        micro_batch_size=8,
        no_eos_penalty=None,  # a cut-off answer is scored as it is: a penalty here teaches short answers
        generation=replace(cfg.ppo.generation, max_new_tokens=32 if not tiny else 16, temperature=0.7, batch_size=16),
    )
    cfg.eval = replace(
        cfg.eval,
        n_prompts=128 if not tiny else 16,  # every held-out prompt (the built-in test split has 55)
        samples_per_prompt=4 if not tiny else 2,
        generation=replace(cfg.eval.generation, max_new_tokens=32 if not tiny else 16, temperature=0.7, batch_size=64),
    )
    cfg.ranking_generation = replace(cfg.ranking_generation, max_new_tokens=32 if not tiny else 16, batch_size=64)
    if not tiny and native_bf16():
        # Where the hardware multiplies bf16 natively (AVX512-BF16/AMX CPUs, GPUs), training runs under bf16
        # autocast over fp32 weights and sampling-only loads hold bf16 weights: ~1.6x faster PPO, ~3x faster
        # sampling (docs/NOTES.md, session 7). Elsewhere bf16 is emulated and slower, so fp32 stays.
        for stage in (cfg.sft, cfg.rm, cfg.ppo):
            stage.distributed = replace(stage.distributed, dtype="bf16")
        cfg.sampling_dtype = "bfloat16"
    cfg.k = 4
    # Three labelers rank each item: the reward model then agrees with the gold utility on 0.72 of unseen
    # pairs instead of 0.60-0.62 with one (docs/NOTES.md, session 7), for ~3x the RM's training time and
    # no extra sampling. The simulated panel's labels cost nothing; with people it triples labeling work.
    cfg.overlap = 3 if not tiny else 1
    # Labelers are screened first, as the paper's were: only those who order a researcher-labeled sample as
    # the gold judge does (>= feedback.screening_threshold) rank; the careless labeler of the default panel
    # fails. The RM's gold agreement rose 0.709 -> 0.724 with it (docs/NOTES.md, session 8).
    cfg.screened_only = True
    cfg.n_sft_prompts = 64 if not tiny else 32
    cfg.n_rm_prompts = 64 if not tiny else 24
    cfg.n_ppo_prompts = 256 if not tiny else 64
    return cfg


def precision_line(cfg: LoopConfig) -> str:
    """The arithmetic the demo trains in, said once at the start, because it decides how long the user
    waits: on a 2-core CPU without native bf16 the packaged demo ran 20 min in fp32 against 4-8 min on
    CPUs that multiply bf16 natively (docs/NOTES.md, sessions 11-13), and bf16 emulated there is slower still
    (0.8 against 90 GFLOP/s for a 1024-square product on that host)."""
    from alignloop.train.distributed import native_bf16

    dtype = cfg.ppo.distributed.dtype
    if dtype != "fp32":
        return f"precision: {dtype} autocast over fp32 weights"
    if cfg.policy.name == "tiny" or native_bf16():
        return "precision: fp32"
    return (
        "precision: fp32, as this CPU has no native bf16 (AVX512-BF16 or AMX) and emulated bf16 is slower: "
        "on 2 such cores the demo takes about 20 min, against 4-8 min where bf16 is native"
    )


@dataclass
class DemoResult:
    out_dir: Path
    sft_dir: Path
    final_policy: Path
    win_rate: dict[str, Any]
    report: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


def select_prompts(cfg: LoopConfig) -> dict[str, list[Prompt]]:
    """The demo's prompt sets from the built-in prompts through the SPEC section 2 pipeline.

    SFT, RM and PPO prompts come from the training users; evaluation prompts from the test
    users (held-out users: none of their prompts were trained on)."""
    from alignloop.data.builtin import builtin_prompts
    from alignloop.data.pipeline import prepare

    prepared = prepare(builtin_prompts(), cfg.data)
    sets = {
        "sft": prepared.get("sft", "train")[: cfg.n_sft_prompts],
        "sft_val": prepared.get("sft", "val")[: cfg.n_sft_val_prompts],
        "rm": prepared.get("rm", "train")[: cfg.n_rm_prompts * cfg.rounds],
        "ppo": prepared.get("ppo", "train")[: cfg.n_ppo_prompts],
        "eval": [p for d in ("ppo", "rm", "sft") for p in prepared.get(d, "test")][: cfg.eval.n_prompts],
    }
    for name, prompts in sets.items():
        if not prompts:
            raise AlignloopError(f"the built-in prompt set left no {name} prompts", "lower the data split fractions")
    return sets


def demonstrations(cfg: LoopConfig, panel: Any, prompts: list[Prompt]) -> list[Demonstration]:
    """The panel's demonstrations: written answers, or its pick among base-model samples."""
    if cfg.demonstrations == "template":
        return [panel.write_demonstration(p) for p in prompts]
    from alignloop.loop import sample_completions

    texts, k = [p.text for p in prompts], cfg.demonstration_candidates
    gen, dtype = cfg.ranking_generation, cfg.sample_weights_dtype
    cands = sample_completions(cfg.policy.name, texts, k, gen, cfg.ppo.seed, dtype)
    return [panel.demonstrate(p, c) for p, c in zip(prompts, cands, strict=True)]


def run_demo(cfg: LoopConfig, log=print, client: Any = None) -> DemoResult:
    """Run the whole loop once with the simulated panel and write the report; see the module docstring.

    ``client``: an admin client of a feedback service whose labelers rank instead of the in-process
    panel (``alignloop demo --service``); the gold judge still evaluates (the labelers are simulated)."""
    from alignloop.config import PanelConfig
    from alignloop.evaluate.results import write_result
    from alignloop.labelers import GoldJudge, SimulatedPanel
    from alignloop.loop import LoopInputs, gold_win_rate, run_loop, start_loop
    from alignloop.train.sft import best_policy_dir, train_sft

    out = Path(cfg.out_dir)
    if (out / "sft").exists():
        raise AlignloopError(f"{out} already holds a demo run", "pass --out to a new folder, or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    t_all = time.perf_counter()
    secs: dict[str, float] = {}

    # 1. Prompts through the pipeline (dedupe, per-user cap, user splits, disjoint datasets).
    sets = select_prompts(cfg)
    for name, prompts in sets.items():
        write_jsonl(out / "prompts" / f"{name}.jsonl", prompts)
    log("prompts: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    log(precision_line(cfg))

    # 2. Demonstrations from the simulated panel.
    judge = GoldJudge()
    panel = SimulatedPanel(cfg.panel if isinstance(cfg.panel, PanelConfig) else PanelConfig(), judge)
    t0 = time.perf_counter()
    demos = demonstrations(cfg, panel, sets["sft"])
    val_demos = demonstrations(cfg, panel, sets["sft_val"])
    write_jsonl(out / "demonstrations.jsonl", demos)
    secs["demonstrations"] = time.perf_counter() - t0

    # 3. SFT.
    t0 = time.perf_counter()
    sft_cfg = replace(cfg.sft, model=cfg.policy)
    train_sft(sft_cfg, demos, val_demos, out / "sft")
    sft_dir = best_policy_dir(out / "sft")
    secs["sft"] = time.perf_counter() - t0
    log(f"SFT done in {secs['sft']:.0f} s: {sft_dir}")

    # 4-6. Rounds of rankings -> RM -> PPO -> evaluation against the previous policy (OUT/loop.json).
    t0 = time.perf_counter()
    start_loop(cfg, out, LoopInputs(str(sft_dir), sets["rm"], sets["ppo"], sets["eval"], demos))
    outcome = run_loop(out, panel=panel, client=client, log=log)
    if outcome.status != "finished":
        raise AlignloopError(f"the demo's loop stopped: {outcome.line}", f"continue with alignloop loop --resume {out}")
    rounds = outcome.rounds
    secs["rounds"] = time.perf_counter() - t0
    final = next((r.policy_dir for r in reversed(rounds) if r.accepted), rounds[-1].policy_dir)

    # 7. The final policy against SFT on held-out prompts (round 1's evaluation already is that when
    #    there is one round).
    t0 = time.perf_counter()
    if len(rounds) == 1:
        wr = rounds[0].judges["gold"]
        names = {"sft": str(sft_dir), "ppo": str(final)}
        wr = _rename(wr, {"previous": "sft", "new": "ppo"})
    else:
        names = {"sft": str(sft_dir), "ppo": str(final)}
        wr = gold_win_rate(
            names,
            "sft",
            sets["eval"],
            judge,
            cfg.eval.samples_per_prompt,
            cfg.eval.generation,
            cfg.eval_seed,
            cfg.eval.bootstrap,
            cfg.sample_weights_dtype,
        )
    write_result(
        out / "eval",
        "winrate",
        {
            "baseline": "sft",
            "policies": names,
            "n_prompts": wr["n_prompts"],
            "samples_per_prompt": wr["samples_per_prompt"],
            "judges": {"gold": wr},
        },
    )
    secs["final_eval"] = time.perf_counter() - t0

    # 8. The report.
    report = None
    try:
        from alignloop.evaluate.report import build_report

        report = build_report(out)
    except AlignloopError as err:  # the run's results stay; only the page is missing
        log(f"report not written: {err}")
    secs["total"] = time.perf_counter() - t_all
    rate = wr["win_rates"]["ppo"]
    summary = {
        "gold_win_rate": rate["rate"],
        "ci_low": rate["ci_low"],
        "ci_high": rate["ci_high"],
        "n": rate["n"],
        "n_prompts": rate["n_prompts"],
        "seconds": secs,
        "final_policy": str(final),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return DemoResult(out, sft_dir, Path(final), wr, report, secs)


def _rename(result: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The same win-rate result with policy names replaced (``previous`` -> ``sft``, ...)."""
    text = json.dumps(result)
    for old, new in names.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return json.loads(text)
