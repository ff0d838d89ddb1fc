"""Iterated rounds of the InstructGPT loop as a resumable state machine (SPEC sections 1 and 10).

One round (paper section 1 steps 4-7), each step a stage recorded in ``OUT/loop.json``
(:mod:`alignloop.loop_state`)::

    1. sample        K completions from the current best policy on fresh RM prompts
    2. collect       rankings of them: the simulated panel at once, or a campaign on the feedback
                     service that people label over hours or days (the process may exit meanwhile)
    3. reward_model  a new reward model on the rankings, normalised on SFT demonstrations; its
                     accuracy on the held-out labeler group's rankings too
    4. rl            PPO from the current policy against it, KL penalty to the SFT policy
    5. evaluate      new vs previous policy on held-out prompts (:mod:`alignloop.loop_eval`)
    6. decided       the accept rule's verdict; the next round starts from the best policy

Round 0 (``demonstration_round``) collects demonstrations and trains SFT first. Each round's
artifacts sit in ``OUT/round-N/`` (``samples.jsonl``, ``rankings.jsonl``, ``rm/``, ``ppo/``,
``eval/``); SFT, RM and PPO resume from their checkpoints, so a killed process loses at most
the work since the last checkpoint and never pushes a campaign twice.
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
from alignloop.loop_state import LoopState


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

    def __init__(self, panel: Any, overlap: int = 1, labelers: Sequence[Any] | None = None) -> None:
        self.panel, self.overlap, self.labelers = panel, overlap, labelers  # labelers: None = the whole panel

    def collect_rankings(
        self,
        prompts: Sequence[Prompt | str],
        completions_per_prompt: Sequence[Sequence[str]],
        *,
        sources: Sequence[Sequence[str]] | None = None,
    ) -> list[Ranking]:
        items = [(p, list(c)) for p, c in zip(prompts, completions_per_prompt, strict=True)]
        rankings = self.panel.rank_items(items, overlap=self.overlap, labelers=self.labelers)
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
    """What one finished round produced, and whether its policy beat the previous one."""

    index: int
    dir: Path
    rm_dir: Path
    ppo_dir: Path
    policy_dir: Path
    previous_policy: str
    win_rate: dict[str, Any] = field(default_factory=dict)  # the deciding judge's result
    rm_val_accuracy: float | None = None
    accepted: bool = True
    seconds: dict[str, float] = field(default_factory=dict)
    judges: dict[str, Any] = field(default_factory=dict)  # every judge's result, by judge name


@dataclass
class LoopOutcome:
    """Where a ``run_loop`` call left the run: ``waiting`` for labels (``--no-wait``; the line says for
    what), ``timed_out`` (waited ``wait_timeout`` seconds) or ``finished``."""

    status: str
    line: str
    rounds: list[RoundResult]
    state: LoopState


@dataclass
class LoopInputs:
    """What a new run starts from; saved in the run folder so ``--resume OUT`` needs nothing else."""

    sft_policy: str | None  # None: round 0 (demonstrations -> SFT) makes it
    rm_prompts: list[Prompt]
    ppo_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    demos: list[Demonstration] = field(default_factory=list)
    sft_prompts: list[Prompt] = field(default_factory=list)
    sft_val_prompts: list[Prompt] = field(default_factory=list)


PROMPT_SETS = ("rm", "ppo", "eval", "sft", "sft_val")


def start_loop(cfg: LoopConfig, out: str | Path, inputs: LoopInputs) -> LoopState:
    """Create a run folder: the resolved config, the prompt sets, the demonstrations and ``loop.json``."""
    out = Path(out)
    if LoopState.exists(out):
        raise AlignloopError(f"{out} already holds a loop run", "continue it with `alignloop loop --resume OUT`")
    if inputs.sft_policy is None and not cfg.demonstration_round:
        raise AlignloopError("no starting policy", "pass --policy SFT_FOLDER, or set demonstration_round: true")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    sets = dict(zip(PROMPT_SETS, (inputs.rm_prompts, inputs.ppo_prompts, inputs.eval_prompts,
                                  inputs.sft_prompts, inputs.sft_val_prompts), strict=True))  # fmt: skip
    for name, prompts in sets.items():
        write_jsonl(out / "prompts" / f"{name}.jsonl", prompts)
    write_jsonl(out / "demonstrations.jsonl", inputs.demos)
    return LoopState.create(out, sft_policy=inputs.sft_policy, best_policy=inputs.sft_policy, source=cfg.ranking_source)


def reaches_stop_threshold(cfg: LoopConfig, rate: float) -> bool:
    """Whether a round's win rate (of ``cfg.stop_metric``) ends the loop early: at or above
    ``cfg.stop_threshold`` (never when that is None)."""
    return cfg.stop_threshold is not None and rate >= cfg.stop_threshold


def run_loop(
    out: str | Path,
    *,
    no_wait: bool = False,
    panel: Any = None,
    client: Any = None,
    log: Callable[[str], None] = print,
) -> LoopOutcome:
    """Continue the run in ``out`` from its state until it must wait for people or is finished.

    Safe to call again at any time (after Ctrl-C, SIGKILL or a reboot): every stage either finds
    its result in the state or redoes / resumes its work without side effects on the service.
    ``panel``: the simulated panel (default: from the config); ``client``: a feedback service
    client (default: from the config, when ``ranking_source`` is ``service``)."""
    from alignloop.config import load_config
    from alignloop.labelers import GoldJudge, SimulatedPanel
    from alignloop.loop_service import Waiting, service_client

    out = Path(out)
    state = LoopState.load(out)
    cfg = load_config(out / "config.yaml", LoopConfig)
    judge = panel.judge if panel is not None else GoldJudge()
    panel = panel or SimulatedPanel(cfg.panel, judge)
    if cfg.ranking_source == "service" and client is None:
        client = service_client(cfg)
    run = _Run(cfg, out, state, panel, judge, client, no_wait, log)
    from alignloop.loop_eval import deciding_judge

    deciding_judge(cfg, client is not None, run.use_gold)  # a judge that does not exist here fails now, not in round 1
    try:
        if cfg.demonstration_round:
            run.round_zero()
        for i in range(1, cfg.rounds + 1):
            if state.data["finished"]:
                break
            rnd = state.start_round(i, state.data["best_policy"])
            run.round(rnd)
            rate = rnd["decision"]["rate"]
            if reaches_stop_threshold(cfg, rate) or i == cfg.rounds:
                if reaches_stop_threshold(cfg, rate) and i < cfg.rounds:
                    log(f"stopping after round {i}: win rate {rate:.3f} >= threshold {cfg.stop_threshold}")
                state.data["finished"] = True
                state.save()
    except Waiting as w:
        status = "timed_out" if w.timed_out else "waiting"
        return LoopOutcome(status, w.line, run.results(), state)
    results = run.results()
    (out / "rounds.json").write_text(json.dumps([_round_summary(x) for x in results], indent=1))
    return LoopOutcome("finished", f"finished: best policy {state.data['best_policy']}", results, state)


def _round_summary(r: RoundResult) -> dict[str, Any]:
    rate = r.win_rate.get("win_rates", {}).get("new", {})
    return {
        "round": r.index,
        "policy": str(r.policy_dir),
        "previous": r.previous_policy,
        "accepted": r.accepted,
        "rm_val_accuracy": r.rm_val_accuracy,
        "judge": r.win_rate.get("judge"),
        "win_rate": rate.get("rate"),
        "gold_win_rate": rate.get("rate") if r.win_rate.get("judge") == "gold" else None,
        "ci_low": rate.get("ci_low"),
        "ci_high": rate.get("ci_high"),
        "seconds": r.seconds,
    }


class _Run:
    """One process's pass over the run's state; each method is one stage and may be re-entered."""

    def __init__(self, cfg, out, state, panel, judge, client, no_wait, log) -> None:
        self.cfg, self.out, self.state, self.panel, self.judge = cfg, out, state, panel, judge
        self.client, self.no_wait, self.log = client, no_wait, log
        self.use_gold = cfg.gold_judge if cfg.gold_judge is not None else cfg.ranking_source == "panel"

    def prompts(self, name: str) -> list[Prompt]:
        from alignloop.data.jsonl import read_jsonl

        return read_jsonl(self.out / "prompts" / f"{name}.jsonl", Prompt)

    def demos(self) -> list[Demonstration]:
        from alignloop.data.jsonl import read_jsonl

        path = self.out / "demonstrations.jsonl"
        return read_jsonl(path, Demonstration) if path.exists() and path.stat().st_size else []

    def results(self) -> list[RoundResult]:
        out = []
        for r in self.state.rounds:
            if r["index"] == 0 or r["stage"] != "decided":
                continue
            rdir = self.out / f"round-{r['index']}"
            d = r["decision"]
            out.append(
                RoundResult(
                    r["index"],
                    rdir,
                    rdir / "rm" / "model",
                    rdir / "ppo",
                    Path(r["artifacts"]["policy"]),
                    r["policy"],
                    r["metrics"]["judges"][d["judge"]],
                    r["metrics"].get("rm_accuracy"),
                    d["accepted"],
                    r.get("seconds", {}),
                    r["metrics"]["judges"],
                )  # fmt: skip
            )
        return out

    def _timed(self, rnd: dict[str, Any], name: str, t0: float) -> None:
        rnd.setdefault("seconds", {})[name] = round(rnd.get("seconds", {}).get(name, 0.0) + time.perf_counter() - t0, 1)

    # -- round 0: demonstrations -> SFT ------------------------------------------------------------------
    def round_zero(self) -> None:
        from alignloop.train.sft import best_policy_dir, train_sft

        state, cfg = self.state, self.cfg
        rnd = state.start_round(0, cfg.policy.name)
        if rnd["stage"] == "collect":
            sft_p, val_p = self.prompts("sft"), self.prompts("sft_val")
            if self.client is None:
                demos = [self.panel.write_demonstration(p) for p in sft_p + val_p]
            else:
                from alignloop.loop_service import DEMONSTRATION_GUIDELINES, push_campaign, wait_for

                items = [{"prompt_id": p.id, "prompt": p.text, "category": p.category, "user_id": p.user_id}
                         for p in sft_p + val_p]  # fmt: skip
                push_campaign(self.client, state, rnd, "demonstrations", "demonstration", DEMONSTRATION_GUIDELINES,
                              items, cfg.overlap, cfg.screened_only)  # fmt: skip
                wait_for(self.client, state, rnd, "demonstrations", cfg, self.no_wait, self.log)
                cid = rnd["campaigns"]["demonstrations"]["id"]
                demos = sorted(self.client.export_records("sft", [cid]), key=lambda d: (d.prompt_id, d.labeler_id))
            val_ids = {p.id for p in val_p}
            write_jsonl(self.out / "round-0" / "demonstrations.jsonl", [d for d in demos if d.prompt_id not in val_ids])
            write_jsonl(self.out / "round-0" / "val_demonstrations.jsonl", [d for d in demos if d.prompt_id in val_ids])
            rnd["metrics"]["demonstrations"] = len(demos)
            state.advance(rnd, "sft")
        if rnd["stage"] == "sft":
            from alignloop.data.jsonl import read_jsonl
            from alignloop.train.run_folder import can_resume
            from alignloop.train.sft import FINISHED

            t0 = time.perf_counter()
            rdir = self.out / "round-0"
            demos = read_jsonl(rdir / "demonstrations.jsonl", Demonstration)
            val = read_jsonl(rdir / "val_demonstrations.jsonl", Demonstration)
            run_dir = self.out / "sft"
            resume = can_resume(run_dir, FINISHED)  # else killed before its first checkpoint: start it over
            self.log(f"round 0: SFT on {len(demos)} demonstrations" + (" (resumed)" if resume else ""))
            train_sft(
                replace(cfg.sft, model=cfg.policy), demos, val or None, run_dir, resume=resume, overwrite=not resume
            )
            sft_dir = str(best_policy_dir(run_dir))
            write_jsonl(self.out / "demonstrations.jsonl", demos)  # the RM's normalisation set from now on
            rnd["artifacts"]["policy"] = sft_dir
            state.data["sft_policy"] = state.data["best_policy"] = sft_dir
            self._timed(rnd, "sft", t0)
            state.advance(rnd, "decided")

    # -- rounds 1..N -------------------------------------------------------------------------------------
    def round(self, rnd: dict[str, Any]) -> None:
        steps = {"sample": self.sample, "collect": self.collect, "reward_model": self.reward_model,
                 "rl": self.rl, "evaluate": self.evaluate}  # fmt: skip
        while rnd["stage"] != "decided":
            t0 = time.perf_counter()
            stage = rnd["stage"]
            nxt = steps[stage](rnd)
            self._timed(rnd, stage, t0)
            self.state.advance(rnd, nxt)

    def rdir(self, rnd: dict[str, Any]) -> Path:
        return self.out / f"round-{rnd['index']}"

    def seed(self, rnd: dict[str, Any]) -> int:
        """Round i's seed (its ranking samples and its PPO run): ``LoopConfig.round_seed_stride``."""
        return self.cfg.ppo.seed + self.cfg.round_seed_stride * rnd["index"]

    def rm_prompts(self, rnd: dict[str, Any]) -> list[Prompt]:
        """Round i's fresh, disjoint chunk of the RM prompts."""
        rm = self.prompts("rm")
        per_round = max(1, len(rm) // self.cfg.rounds)
        i = rnd["index"]
        return rm[(i - 1) * per_round : i * per_round] or rm[-per_round:]

    def sample(self, rnd: dict[str, Any]) -> str:
        prompts, cfg = self.rm_prompts(rnd), self.cfg
        self.log(f"round {rnd['index']}: sampling {cfg.k} completions for {len(prompts)} prompts from {rnd['policy']}")
        comps = sample_completions(rnd["policy"], [p.text for p in prompts], cfg.k, cfg.ranking_generation,
                                   self.seed(rnd), cfg.sample_weights_dtype, "sampling")  # fmt: skip
        rows = [{"prompt_id": p.id, "prompt": p.text, "completions": c} for p, c in zip(prompts, comps, strict=True)]
        write_jsonl(self.rdir(rnd) / "samples.jsonl", rows)
        return "collect"

    def collect(self, rnd: dict[str, Any]) -> str:
        from alignloop.data.jsonl import iter_json_lines

        rdir, cfg = self.rdir(rnd), self.cfg
        rows = [row for _, row in iter_json_lines(rdir / "samples.jsonl")]
        by_id = {p.id: p for p in self.rm_prompts(rnd)}
        prompts = [by_id[row["prompt_id"]] for row in rows]
        comps = [row["completions"] for row in rows]
        held: list[Ranking] = []
        if self.client is None:
            labelers = None
            if cfg.screened_only:  # as a campaign on the service: only labelers who passed screening rank
                labelers = self.panel.qualified(cfg.feedback.screening_threshold)
                self.log(f"screening: {len(labelers)} of {len(self.panel.labelers)} labelers qualified")
            rankings = PanelRankingSource(self.panel, cfg.overlap, labelers).collect_rankings(prompts, comps)
        else:
            from alignloop.loop_service import RANKING_GUIDELINES, push_campaign, wait_for

            items = [{"prompt_id": p.id, "prompt": p.text, "completions": c, "category": p.category,
                      "user_id": p.user_id} for p, c in zip(prompts, comps, strict=True)]  # fmt: skip
            push_campaign(self.client, self.state, rnd, "rankings", "ranking", RANKING_GUIDELINES, items,
                          cfg.overlap, cfg.screened_only)  # fmt: skip
            wait_for(self.client, self.state, rnd, "rankings", cfg, self.no_wait, self.log)
            cid = rnd["campaigns"]["rankings"]["id"]
            order = lambda r: (r.prompt_id, r.labeler_id)  # noqa: E731 - labels arrive in any order; training must not
            rankings = sorted(self.client.export_records("rm", [cid]), key=order)
            held = sorted(self.client.export_records("rm", [cid], held_out="only"), key=order)
        if not rankings:
            raise AlignloopError(f"round {rnd['index']}: no training rankings", "are all labelers in held-out groups?")
        write_jsonl(rdir / "rankings.jsonl", rankings)
        write_jsonl(rdir / "rankings_held_out_group.jsonl", held)
        rnd["metrics"]["rankings"] = len(rankings)
        rnd["metrics"]["rankings_held_out_group"] = len(held)
        self.log(f"round {rnd['index']}: {len(rankings)} rankings collected (+{len(held)} from held-out labelers)")
        return "reward_model"

    def reward_model(self, rnd: dict[str, Any]) -> str:

        from alignloop.data.jsonl import read_jsonl
        from alignloop.train.reward import evaluate_reward_model, train_reward_model
        from alignloop.train.run_folder import can_resume

        rdir = self.rdir(rnd)
        rm_dir = rdir / "rm"
        resume = can_resume(rm_dir)  # else killed before its first checkpoint: start it over
        first = 1 if self.cfg.rm_rankings == "all" else rnd["index"]
        rankings = [
            r
            for i in range(first, rnd["index"] + 1)
            for r in read_jsonl(self.out / f"round-{i}" / "rankings.jsonl", Ranking)
        ]
        rm_cfg = self.cfg.rm
        if self.cfg.rm_init == "sft":  # the paper's RM: the SFT policy minus its unembedding layer
            rm_cfg = replace(rm_cfg, model=replace(rm_cfg.model, name=self.state.data["sft_policy"]))
        rm = train_reward_model(rm_cfg, rankings, rm_dir, demos=self.demos() or None, resume=resume,
                                overwrite=not resume)  # fmt: skip
        rnd["metrics"]["rm_accuracy"] = rm.val.get("val/accuracy")
        rnd["metrics"]["rm_rankings"] = len(rankings)  # this round's, or every round's so far (rm_rankings: all)
        held = read_jsonl(rdir / "rankings_held_out_group.jsonl", Ranking)
        if held:
            rnd["metrics"]["rm_accuracy_held_out_group"] = evaluate_reward_model(rm.model_dir, held)["eval/accuracy"]
        rnd["artifacts"]["reward_model"] = str(rm.model_dir)
        acc = rnd["metrics"]["rm_accuracy"]
        self.log(f"round {rnd['index']}: reward model held-out accuracy {acc if acc is None else f'{acc:.3f}'}")
        return "rl"

    def reference(self, rnd: dict[str, Any]) -> str | None:
        """The KL reference of this round's PPO, when it is not the starting policy itself."""
        sft = self.state.data["sft_policy"]
        return sft if self.cfg.reference == "sft" and rnd["policy"] != sft else None

    def rl(self, rnd: dict[str, Any]) -> str:
        from alignloop.models.reward import load_scorer
        from alignloop.train.ppo import train_ppo
        from alignloop.train.run_folder import can_resume
        from alignloop.train.runlog import read_metrics

        ppo_dir = self.rdir(rnd) / "ppo"
        scorer = load_scorer(rnd["artifacts"]["reward_model"])
        extra = {"gold": self.judge} if self.use_gold else {}
        texts = [p.text for p in self.prompts("ppo")][: self.cfg.n_ppo_prompts]
        self.log(f"round {rnd['index']}: PPO from {rnd['policy']}, KL reference {self.reference(rnd) or rnd['policy']}")
        resume = can_resume(ppo_dir)  # the loop owns the folder: continue its PPO run, or start it afresh
        result = train_ppo(replace(self.cfg.ppo, seed=self.seed(rnd)), rnd["policy"], scorer, texts, ppo_dir,
                           extra_scorers=extra, resume=resume, overwrite=not resume,
                           reference=self.reference(rnd))  # fmt: skip
        if result.policy_dir is None:
            raise AlignloopError(f"round {rnd['index']}: PPO saved no policy", "see the PPO log in the round folder")
        rows = read_metrics(ppo_dir)
        last = rows[-1] if rows else {}
        key = "kl_to_sft" if self.cfg.reference == "sft" or rnd["policy"] == self.state.data["sft_policy"] else "kl"
        rnd["metrics"][key] = last.get("kl")
        rnd["artifacts"]["policy"] = str(result.policy_dir)
        return "evaluate"

    def evaluate(self, rnd: dict[str, Any]) -> str:
        from alignloop.loop_eval import evaluate_round

        evaluate_round(self, rnd)
        return "decided"
