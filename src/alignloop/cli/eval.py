"""``alignloop eval``: compare policies with a baseline on everything SPEC section 7 lists.

A thin entry point: it parses options into an :class:`~alignloop.evaluate.suite.EvalPlan` and
runs it. Each benchmark runs when its file is given; win rates run when a judge is given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from alignloop.config import EvalConfig, LoopConfig, load_config, load_yaml
from alignloop.evaluate.policies import parse_policy


def load_eval_config(path: Path | None) -> EvalConfig:
    """An EvalConfig from a YAML holding the eval stage alone or a whole loop config."""
    if path is None:
        return EvalConfig()
    keys = set(load_yaml(path))
    if keys <= {f.name for f in dataclasses.fields(EvalConfig)}:
        return load_config(path, EvalConfig)
    return load_config(path, LoopConfig).eval


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        policy: list[str] = typer.Option([], "--policy", help="NAME=PATH of a policy to evaluate (repeatable)."),
        baseline: str = typer.Option(None, "--baseline", help="[NAME=]PATH of the baseline policy (e.g. the SFT)."),
        prompts: Path = typer.Option(
            None,
            "--prompts",
            help="Held-out prompts (JSONL Prompt records or one per line); default: built-in test split.",
        ),
        judge: list[str] = typer.Option([], "--judge", help="gold | rm:PATH | human:URL (repeatable): win rates."),
        feedback_token: str = typer.Option(
            None, "--feedback-token", envvar="ALIGNLOOP_FEEDBACK_TOKEN", help="Admin token for --judge human:URL."
        ),
        out: Path = typer.Option(Path("runs/eval"), "--out", help="Folder for the results (read by alignloop report)."),
        config: Path = typer.Option(None, "--config", help="YAML with the eval stage (or a whole loop config)."),
        n_prompts: int = typer.Option(None, "--n-prompts", help="Held-out prompts to sample (default from config)."),
        samples: int = typer.Option(None, "--samples", help="Samples per prompt per policy (default from config)."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Longest sampled response, in tokens."),
        temperature: float = typer.Option(None, "--temperature", help="Sampling temperature."),
        metadata_judge: str = typer.Option(
            "gold", "--metadata-judge", help="gold | panel | none: Likert + flags of the sampled prompts."
        ),
        human_ratings: Path = typer.Option(
            None, "--human-ratings", help="Rating JSONL from `alignloop feedback export --dataset ratings`."
        ),
        truthfulqa: Path = typer.Option(
            None, "--truthfulqa", help="TruthfulQA.csv, or its HF generation JSON/JSONL (MC and generation)."
        ),
        truthfulqa_mc: Path = typer.Option(
            None, "--truthfulqa-mc", help="TruthfulQA mc_task.json, or HF multiple_choice JSON/JSONL."
        ),
        no_truthfulqa_generation: bool = typer.Option(False, "--no-truthfulqa-generation", help="MC only."),
        rtp: Path = typer.Option(None, "--rtp", help="RealToxicityPrompts prompts.jsonl."),
        toxicity_samples: int = typer.Option(4, "--toxicity-samples", help="k samples per toxicity prompt."),
        toxicity_scorer: str = typer.Option(
            "profanity-check", "--toxicity-scorer", help="profanity-check | detoxify[:TYPE] | perspective:URL."
        ),
        crows_pairs: Path = typer.Option(
            None, "--crows-pairs", help="crows_pairs_anonymized.csv, or a JSON/JSONL export."
        ),
        winogender: Path = typer.Option(None, "--winogender", help="Winogender templates.tsv or all_sentences.tsv."),
        hellaswag: Path = typer.Option(
            None, "--hellaswag", help="HellaSwag JSONL (ctx_a/ctx_b, ctx, context or query layouts)."
        ),
        corpus: Path = typer.Option(None, "--corpus", help="Plain-text corpus for perplexity."),
        redteam: Path = typer.Option(None, "--redteam", help="Adversarial prompts (one per line, or JSONL text)."),
        redteam_builtin: bool = typer.Option(False, "--redteam-builtin", help="Add the built-in adversarial prompts."),
        no_paraphrase: bool = typer.Option(False, "--no-paraphrase", help="No policy-written red-team paraphrases."),
        ppo_run: list[Path] = typer.Option([], "--ppo-run", help="PPO run folder for over-optimisation (repeatable)."),
        reference: str = typer.Option(None, "--reference", help="Initial policy of the PPO runs (default: baseline)."),
        limit: int = typer.Option(None, "--limit", help="At most this many items per benchmark file."),
        bootstrap: int = typer.Option(None, "--bootstrap", help="Bootstrap rounds for intervals."),
        dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    ) -> None:
        """Win rates (RM, gold, human judges), Likert/metadata, TruthfulQA, hallucination, toxicity, bias,
        alignment tax, red teaming and over-optimisation; one JSON per evaluation in --out."""
        from alignloop.evaluate.headlines import headline_rows
        from alignloop.evaluate.suite import EvalPlan, run

        cfg = load_eval_config(config)
        gen = cfg.generation
        if max_new_tokens is not None:
            gen = dataclasses.replace(gen, max_new_tokens=max_new_tokens)
        if temperature is not None:
            gen = dataclasses.replace(gen, temperature=temperature)
        plan = EvalPlan(
            policies=[parse_policy(p) for p in policy],
            baseline=parse_policy(baseline, "baseline") if baseline else None,
            out_dir=str(out),
            prompts=str(prompts) if prompts else None,
            judges=list(judge),
            feedback_token=feedback_token,
            n_prompts=n_prompts or cfg.n_prompts,
            samples_per_prompt=samples or cfg.samples_per_prompt,
            bootstrap=cfg.bootstrap if bootstrap is None else bootstrap,
            generation=gen,
            metadata_judge=metadata_judge,
            human_ratings=str(human_ratings) if human_ratings else None,
            truthfulqa=str(truthfulqa) if truthfulqa else None,
            truthfulqa_mc=str(truthfulqa_mc) if truthfulqa_mc else None,
            truthfulqa_generate=not no_truthfulqa_generation,
            rtp=str(rtp) if rtp else None,
            toxicity_samples=toxicity_samples,
            toxicity_scorer=toxicity_scorer,
            crows_pairs=str(crows_pairs) if crows_pairs else None,
            winogender=str(winogender) if winogender else None,
            hellaswag=str(hellaswag) if hellaswag else None,
            corpus=str(corpus) if corpus else None,
            redteam=str(redteam) if redteam else None,
            redteam_builtin=redteam_builtin,
            redteam_paraphrase=not no_paraphrase,
            ppo_runs=[str(p) for p in ppo_run],
            reference=reference,
            limit=limit,
            dtype=dtype,
            seed=seed,
        )
        written = run(plan, log=lambda msg: typer.echo(msg, err=True))
        rows = headline_rows(written)
        if rows:
            from rich.console import Console
            from rich.table import Table

            table = Table("evaluation", "policy", "value", "detail", title="headline figures")
            for r in rows:
                table.add_row(*r)
            Console(width=max(120, Console().width)).print(table)
        for kind, path in written.items():
            typer.echo(f"{kind}: {path}")
        typer.echo(f"next: alignloop report {out}")
