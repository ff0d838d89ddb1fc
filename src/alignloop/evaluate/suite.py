"""``alignloop eval``: run every requested evaluation over named policies and write the results folder.

The order is chosen so that bad input loses nothing and memory stays flat:

1. read and check every input file (prompts, TruthfulQA, RealToxicityPrompts, CrowS-Pairs,
   Winogender, HellaSwag, corpus, red-team prompts) before any model loads;
2. load one policy at a time (baseline first), run everything that needs its weights
   (sampling, likelihoods), keep only texts and numbers, release it;
3. judge across policies (win rates by each judge, metadata and hallucination ratings,
   toxicity scores) and write one ``<kind>.json`` per evaluation (see :mod:`.results`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alignloop.config import DataConfig, GenerationConfig
from alignloop.data.jsonl import DataFileError, read_jsonl, write_jsonl
from alignloop.data.records import Prompt, Rating, stable_id
from alignloop.errors import AlignloopError
from alignloop.evaluate import alignment_tax, bias, metadata, redteam, toxicity, truthfulqa
from alignloop.evaluate.policies import LoadedPolicy, PolicySpec, unique_names
from alignloop.evaluate.results import write_result
from alignloop.evaluate.winrate import ScoreJudge, evaluate_win_rates


@dataclass
class EvalPlan:
    """Everything ``alignloop eval`` was asked to do; ``None`` paths skip that evaluation."""

    policies: list[PolicySpec]
    out_dir: str
    baseline: PolicySpec | None = None
    prompts: str | None = None
    judges: list[str] = field(default_factory=list)  # "gold", "rm:PATH", "human:URL"
    feedback_token: str | None = None  # admin token for human:URL (else $ALIGNLOOP_FEEDBACK_TOKEN)
    n_prompts: int = 64
    samples_per_prompt: int = 4
    bootstrap: int = 1000
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metadata_judge: str = "gold"  # "gold" | "panel" | "none"
    human_ratings: str | None = None  # Rating JSONL exported from the feedback service (Likert + metadata by people)
    truthfulqa: str | None = None
    truthfulqa_mc: str | None = None
    truthfulqa_generate: bool = True
    rtp: str | None = None
    toxicity_samples: int = 4
    toxicity_scorer: str = "profanity-check"
    crows_pairs: str | None = None
    winogender: str | None = None
    hellaswag: str | None = None
    corpus: str | None = None
    redteam: str | None = None
    redteam_builtin: bool = False
    redteam_paraphrase: bool = True
    redteam_samples: int = 2
    ppo_runs: list[str] = field(default_factory=list)
    reference: str | None = None  # the initial policy of the PPO runs (default: the baseline)
    limit: int | None = None  # at most this many items per benchmark
    dtype: str = "float32"
    seed: int = 0

    @property
    def everyone(self) -> list[PolicySpec]:
        """Baseline first, then the policies (a baseline also listed as a policy is not repeated)."""
        out = [self.baseline] if self.baseline else []
        return out + [p for p in self.policies if not self.baseline or p.name != self.baseline.name]


@dataclass
class Inputs:
    """Every benchmark file, read and checked before any model loads."""

    prompts: list[Prompt] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    tqa: list[truthfulqa.TruthfulQAItem] = field(default_factory=list)
    tqa_mc: list[truthfulqa.MCItem] = field(default_factory=list)
    rtp: list[toxicity.ToxicityPrompt] = field(default_factory=list)
    crows: list[bias.SentenceSet] = field(default_factory=list)
    wino: list[bias.SentenceSet] = field(default_factory=list)
    hellaswag: list[alignment_tax.MCQuestion] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)
    redteam: list[redteam.RedTeamPrompt] = field(default_factory=list)


# -- inputs ---------------------------------------------------------------------------------------


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Held-out prompts: JSONL of Prompt records (``id``, ``text``, ``user_id``, ``category``), or plain text lines."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", "give a JSONL file of prompts or a text file with one per line")
    if p.suffix in (".jsonl", ".json"):
        return read_jsonl(p, Prompt)
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    out = [Prompt(stable_id("file", t), t, "file") for t in lines if t and not t.startswith("#")]
    if not out:
        raise DataFileError(f"{p}: no prompts")
    return out


def held_out_builtin_prompts() -> list[Prompt]:
    """The built-in prompts of held-out users (the pipeline's test split), duplicates removed."""
    from alignloop.data.builtin import builtin_prompts
    from alignloop.data.pipeline import user_split

    cfg = DataConfig()
    seen: set[str] = set()
    out = []
    for p in builtin_prompts():
        key = " ".join(p.text.lower().split())
        if user_split(p.user_id, cfg) == "test" and key not in seen:
            seen.add(key)
            out.append(p)
    return out


def select_prompts(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """``n`` prompts taken round-robin over categories, so closed-domain tasks are always represented."""
    by_cat: dict[str, list[Prompt]] = defaultdict(list)
    for p in prompts:
        by_cat[p.category].append(p)
    out: list[Prompt] = []
    queues = [list(v) for v in by_cat.values()]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def read_inputs(plan: EvalPlan) -> Inputs:
    """Read every file the plan names; any malformed file fails here, before models load."""
    lim = plan.limit
    inp = Inputs()
    if plan.judges or plan.prompts:
        source = load_prompts(plan.prompts) if plan.prompts else held_out_builtin_prompts()
        inp.prompts = select_prompts(source, plan.n_prompts)
    if plan.human_ratings:
        inp.ratings = read_jsonl(plan.human_ratings, Rating)
    if plan.truthfulqa:
        inp.tqa = truthfulqa.load_truthfulqa_csv(plan.truthfulqa)[:lim]
        inp.tqa_mc = truthfulqa.mc_items(inp.tqa)
    if plan.truthfulqa_mc:
        inp.tqa_mc = truthfulqa.load_mc_json(plan.truthfulqa_mc)[:lim]
    if plan.rtp:
        inp.rtp = toxicity.load_rtp_jsonl(plan.rtp, lim)
    if plan.crows_pairs:
        inp.crows = bias.load_crows_pairs(plan.crows_pairs)[:lim]
    if plan.winogender:
        inp.wino = bias.load_winogender(plan.winogender)[:lim]
    if plan.hellaswag:
        inp.hellaswag = alignment_tax.load_hellaswag_jsonl(plan.hellaswag, lim)
    if plan.corpus:
        inp.corpus = alignment_tax.read_corpus(plan.corpus, lim)
    # --limit applies to each red-team source on its own: a small limit keeps prompts of both.
    if plan.redteam:
        inp.redteam += redteam.load_redteam_file(plan.redteam)[:lim]
    if plan.redteam_builtin:
        inp.redteam += redteam.builtin_prompts()[:lim]
    return inp


def check_plan(plan: EvalPlan) -> None:
    """Reject contradictory requests before anything runs."""
    if not plan.policies and not plan.baseline and not (plan.ppo_runs and plan.reference):
        raise AlignloopError("nothing to evaluate", "give at least one --policy NAME=PATH")
    unique_names(plan.policies)
    clash = [p for p in plan.policies if plan.baseline and p.name == plan.baseline.name and p != plan.baseline]
    if clash:
        raise AlignloopError(
            f"two policies are named {clash[0].name!r}", "give the baseline and each --policy a distinct NAME="
        )
    benchmarks = (plan.truthfulqa, plan.truthfulqa_mc, plan.rtp, plan.crows_pairs, plan.winogender, plan.hellaswag,
                  plan.corpus, plan.redteam, plan.redteam_builtin, plan.ppo_runs, plan.human_ratings)  # fmt: skip
    if not plan.judges and not plan.prompts and not any(benchmarks):
        raise AlignloopError(
            "nothing to evaluate: no judge, no prompts and no benchmark file",
            "add --judge gold (win rates on the built-in held-out prompts), --prompts FILE, or e.g. --truthfulqa CSV",
        )
    if plan.judges and not plan.baseline:
        raise AlignloopError("win rates need a baseline", "add --baseline PATH (e.g. the SFT policy)")
    for j in plan.judges:
        kind, _, arg = j.partition(":")
        if kind not in ("gold", "rm", "human") or (kind != "gold" and not arg):
            raise AlignloopError(f"unknown judge {j!r}", "use gold, rm:PATH (a reward model) or human:URL")
    if plan.metadata_judge not in ("gold", "panel", "none"):
        raise AlignloopError(f"unknown metadata judge {plan.metadata_judge!r}", "use gold, panel or none")
    if plan.ppo_runs and not (plan.reference or plan.baseline):
        raise AlignloopError(
            "over-optimisation needs the PPO run's initial policy", "add --reference PATH or --baseline"
        )
    if plan.samples_per_prompt < 1 or plan.toxicity_samples < 1 or plan.n_prompts < 1:
        raise AlignloopError("samples per prompt and the number of prompts must be at least 1")


# -- per-policy work ------------------------------------------------------------------------------


def _greedy(cfg: GenerationConfig, max_new_tokens: int | None = None) -> GenerationConfig:
    return replace(cfg, temperature=0.0, max_new_tokens=max_new_tokens or cfg.max_new_tokens)


def run_policy(policy: LoadedPolicy, plan: EvalPlan, inp: Inputs, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything that needs this policy's weights; returns texts and numbers only."""
    out: dict[str, Any] = {}
    cfg = plan.generation
    if inp.prompts:
        log(f"{policy.name}: {plan.samples_per_prompt} samples x {len(inp.prompts)} prompts")
        out["samples"] = policy.sample([p.text for p in inp.prompts], cfg, plan.samples_per_prompt, plan.seed)
    lik = policy.likelihood() if (inp.tqa_mc or inp.crows or inp.wino or inp.hellaswag or inp.corpus) else None
    if inp.tqa_mc or inp.tqa:
        log(f"{policy.name}: TruthfulQA")
        tq: dict[str, Any] = {"mc": {}, "generation": {}}
        for mode in truthfulqa.PROMPT_MODES:
            if inp.tqa_mc and lik is not None:
                tq["mc"][mode] = truthfulqa.evaluate_mc(inp.tqa_mc, lik, mode)  # type: ignore[arg-type]
            if inp.tqa and plan.truthfulqa_generate:
                prompts = [truthfulqa.build_prompt(it.question, mode, answer_cue=False) for it in inp.tqa]  # type: ignore[arg-type]
                raw = [s[0] for s in policy.sample(prompts, _greedy(cfg), 1, plan.seed)]
                answers = [truthfulqa.first_answer(a) for a in raw]
                tq["generation"][mode] = truthfulqa.score_generations(inp.tqa, answers)
                tq["generation"][mode]["examples"] = [
                    {"question": it.question, "answer": a} for it, a in zip(inp.tqa[:3], answers[:3], strict=False)
                ]
        out["truthfulqa"] = tq
    if inp.rtp:
        log(f"{policy.name}: RealToxicityPrompts x {len(toxicity.INSTRUCTIONS)} instructions")
        out["toxicity_texts"] = {
            ins: policy.sample([toxicity.instruct(p.text, ins) for p in inp.rtp], cfg, plan.toxicity_samples, plan.seed)
            for ins in toxicity.INSTRUCTIONS
        }
    if lik is not None and (inp.crows or inp.wino):
        log(f"{policy.name}: bias pairs")
        out["bias"] = {}
        if inp.crows:
            out["bias"]["crows_pairs"] = bias.evaluate_sets(inp.crows, lik)
        if inp.wino:
            out["bias"]["winogender"] = bias.evaluate_sets(inp.wino, lik)
    if lik is not None and (inp.hellaswag or inp.corpus):
        log(f"{policy.name}: alignment tax")
        out["alignment_tax"] = {}
        if inp.corpus:
            out["alignment_tax"]["perplexity"] = alignment_tax.corpus_perplexity(inp.corpus, lik)
        if inp.hellaswag:
            out["alignment_tax"]["hellaswag"] = alignment_tax.multiple_choice_accuracy(inp.hellaswag, lik)
    if inp.redteam:
        log(f"{policy.name}: red teaming")
        prompts = list(inp.redteam) + redteam.template_variants(inp.redteam)
        if plan.redteam_paraphrase:

            def paraphrase(requests: list[str]) -> list[str]:
                return [s[0] for s in policy.sample(requests, _greedy(cfg), 1, plan.seed)]

            prompts += redteam.paraphrase_variants(inp.redteam, paraphrase)
        texts = policy.sample([p.text for p in prompts], cfg, plan.redteam_samples, plan.seed)
        out["redteam"] = (prompts, texts)
    return out


# -- judges ---------------------------------------------------------------------------------------


def make_scoring_judge(spec: str, dtype: str = "float32") -> ScoreJudge:
    """``gold`` (the simulated panel's hidden utility) or ``rm:PATH`` (a reward model folder or an
    ``alignloop rm serve`` URL)."""
    kind, _, arg = spec.partition(":")
    if kind == "gold":
        from alignloop.labelers.gold import GoldJudge

        return ScoreJudge(GoldJudge(), "gold")
    if kind == "rm":
        from alignloop.models.reward import load_scorer

        return ScoreJudge(load_scorer(arg), f"rm:{arg}")
    raise AlignloopError(f"judge {spec!r} is not a scoring judge")


def make_metadata_judge(name: str) -> metadata.MetadataJudge:
    return metadata.PanelMetadataJudge() if name == "panel" else metadata.GoldMetadataJudge()


# -- the whole run --------------------------------------------------------------------------------


def run(plan: EvalPlan, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run the plan; returns the result files written, by kind."""
    # 1. every input checked before any model loads
    check_plan(plan)
    inp = read_inputs(plan)
    tox_scorer = toxicity.make_scorer(plan.toxicity_scorer) if (inp.rtp or inp.redteam) else None
    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {"policies": {p.name: p.path for p in plan.everyone}, "baseline": plan.baseline and plan.baseline.name}

    # 2. one policy at a time: texts and numbers out, weights released
    per_policy: dict[str, dict[str, Any]] = {}
    needs_weights = any(
        (inp.prompts, inp.tqa, inp.tqa_mc, inp.rtp, inp.crows, inp.wino, inp.hellaswag, inp.corpus, inp.redteam)
    )
    for spec in plan.everyone if needs_weights else []:
        log(f"loading {spec.name} from {spec.path}")
        policy = LoadedPolicy.load(spec, plan.dtype)
        try:
            per_policy[spec.name] = run_policy(policy, plan, inp, log)
        finally:
            policy.release()

    # 3. judgments across policies, one result file per evaluation
    written: dict[str, Path] = {}
    samples = {n: r["samples"] for n, r in per_policy.items() if "samples" in r}
    if samples:
        write_samples(out / "samples.jsonl", inp.prompts, samples)
    if samples and plan.judges and plan.baseline:
        judged = judge_win_rates(plan, inp.prompts, samples, out, log)
        n = {"n_prompts": len(inp.prompts), "samples_per_prompt": plan.samples_per_prompt}
        written["winrate"] = write_result(out, "winrate", {**common, **n, "judges": judged})
    if (samples and plan.metadata_judge != "none") or inp.ratings:
        summary, halluc = {}, {}
        if samples and plan.metadata_judge != "none":
            log(f"rating samples with the {plan.metadata_judge} metadata judge")
            summary, halluc = metadata.rate_policies(make_metadata_judge(plan.metadata_judge), inp.prompts, samples)
        human_m: dict[str, Any] = {}
        human_h: dict[str, Any] = {}
        if inp.ratings:
            h_summary, h_halluc = metadata.human_ratings_summary(inp.ratings, inp.prompts)
            human_m = {"human": {"summary": h_summary, "file": plan.human_ratings}}
            human_h = {"human": {"rates": h_halluc, "file": plan.human_ratings}}
        written["metadata"] = write_result(
            out, "metadata", {**common, "judge": plan.metadata_judge, "summary": summary, **human_m}
        )
        closed = {
            "categories": list(metadata.CLOSED_DOMAIN_CATEGORIES),
            "n_prompts": len(metadata.closed_domain(inp.prompts)),
        }
        written["hallucination"] = write_result(
            out, "hallucination", {**common, "judge": plan.metadata_judge, **closed, "rates": halluc, **human_h}
        )
    if inp.tqa:  # the CSV's questions in the multiple-choice JSON layout, for other tools
        truthfulqa.write_mc_json(truthfulqa.mc_items(inp.tqa), out / "truthfulqa_mc_task.json")
    tq = {n: r["truthfulqa"] for n, r in per_policy.items() if "truthfulqa" in r}
    if tq:
        n_q = len(inp.tqa_mc or inp.tqa)
        written["truthfulqa"] = write_result(
            out, "truthfulqa", {**common, "n_questions": n_q, "judge": "reference-overlap", "results": tq}
        )
    if inp.rtp and tox_scorer is not None:
        log(f"scoring toxicity with {tox_scorer.name}")
        results = {
            n: {ins: toxicity.summarize(toxicity.score_matrix(tox_scorer, t)) for ins, t in r["toxicity_texts"].items()}
            for n, r in per_policy.items()
        }
        head = {"scorer": tox_scorer.name, "k": plan.toxicity_samples, "n_prompts": len(inp.rtp)}
        written["toxicity"] = write_result(
            out, "toxicity", {**common, **head, "instructions": toxicity.INSTRUCTIONS, "results": results}
        )
    for kind in ("bias", "alignment_tax"):
        found = {n: r[kind] for n, r in per_policy.items() if kind in r}
        if found:
            written[kind] = write_result(out, kind, {**common, "results": found})
    if inp.redteam and tox_scorer is not None:
        log("judging red-team completions")
        mjudge = make_metadata_judge(plan.metadata_judge if plan.metadata_judge != "none" else "gold")
        rt = {n: judge_redteam(r["redteam"], tox_scorer, mjudge, n) for n, r in per_policy.items()}
        written["redteam"] = write_result(
            out, "redteam", {**common, "scorer": tox_scorer.name, "metadata_judge": mjudge.name, "results": rt}
        )
    if plan.ppo_runs:
        written["overoptimization"] = run_overoptimization(plan, inp, out, log)
    return written


def write_samples(path: Path, prompts: Sequence[Prompt], samples: dict[str, list[list[str]]]) -> None:
    """Every sampled completion, for reading next to the numbers (and for a later human campaign)."""
    write_jsonl(
        path,
        (
            {"policy": n, "prompt_id": p.id, "prompt": p.text, "category": p.category, "sample": j, "completion": c}
            for n, rows in samples.items()
            for p, comps in zip(prompts, rows, strict=True)
            for j, c in enumerate(comps)
        ),
    )


def judge_win_rates(
    plan: EvalPlan,
    prompts: Sequence[Prompt],
    samples: dict[str, list[list[str]]],
    out: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Win rates and leaderboards by every judge of the plan (human judging may be pending)."""
    assert plan.baseline is not None
    judged: dict[str, Any] = {}
    ids, texts = [p.id for p in prompts], [p.text for p in prompts]
    for spec in plan.judges:
        kind, _, arg = spec.partition(":")
        if kind == "human":
            from alignloop.evaluate.human import human_win_rates

            judged["human"] = human_win_rates(
                arg, out, prompts, samples, plan.baseline.name, plan.bootstrap, plan.seed, token=plan.feedback_token
            )
            log(f"human judges ({arg}): {judged['human']['status']}")
            continue
        judge = make_scoring_judge(spec, plan.dtype)
        log(f"judging with {judge.name}")
        judged[kind] = evaluate_win_rates(judge, ids, texts, samples, plan.baseline.name, plan.bootstrap, plan.seed)
    return judged


def judge_redteam(
    prompts_and_texts: tuple[list[redteam.RedTeamPrompt], list[list[str]]],
    scorer: toxicity.ToxicityScorer,
    judge: metadata.MetadataJudge,
    policy: str,
) -> dict[str, Any]:
    """Harmful-completion rates of one policy's red-team completions (toxicity scorer and metadata judge)."""
    prompts, texts = prompts_and_texts
    flat_p = [p for p, comps in zip(prompts, texts, strict=True) for _ in comps]
    flat_c = [c for comps in texts for c in comps]
    flags = [r.flags for r in judge.rate([p.as_prompt() for p in flat_p], flat_c, source=policy)]
    result = redteam.summarize(flat_p, redteam.harmful_flags(scorer.toxicity(flat_c), flags))
    return result | {"n_prompts": len(prompts)}


def run_overoptimization(plan: EvalPlan, inp: Inputs, out: Path, log: Callable[[str], None]) -> Path:
    """Points from each PPO run's metrics, plus gold/RM/KL measured on its checkpoints when there are any."""
    from alignloop.evaluate import overoptimization as oo
    from alignloop.train.checkpoint import list_checkpoints

    reference = plan.reference or (plan.baseline.path if plan.baseline else "")
    prompts = [p.text for p in (inp.prompts or held_out_builtin_prompts()[: plan.n_prompts])]
    gold = make_scoring_judge("gold").scorer
    rm_specs = [j for j in plan.judges if j.startswith("rm:")]
    rm = make_scoring_judge(rm_specs[0], plan.dtype).scorer if rm_specs else None
    runs = []
    for run_dir in plan.ppo_runs:
        if not Path(run_dir).is_dir():
            raise AlignloopError(f"PPO run folder {run_dir} does not exist", "give the --ppo-run of a finished PPO run")
        entry: dict[str, Any] = {"run": str(run_dir), "metrics": [vars(p) for p in oo.points_from_metrics(run_dir)]}
        if list_checkpoints(run_dir):
            log(f"over-optimisation: measuring checkpoints of {run_dir}")
            pts = oo.evaluate_checkpoints(run_dir, reference, prompts, plan.generation, gold, rm, plan.seed, plan.dtype)
            entry["checkpoints"] = [vars(p) for p in pts]
            entry["fit"] = oo.fit_gao(pts)
        else:
            entry["fit"] = oo.fit_gao(oo.points_from_metrics(run_dir))
        runs.append(entry)
    return write_result(out, "overoptimization", {"reference": reference, "runs": runs})
