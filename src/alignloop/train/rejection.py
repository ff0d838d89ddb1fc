"""Best-of-N sampling and rejection-sampling fine-tuning (SPEC section 1, step 8).

Best-of-N at inference time: sample N completions of each prompt from the policy, score them
with a :class:`~alignloop.models.scoring.Scorer` (the reward model, or the gold judge in a
simulation) and answer with the highest-scoring one. It is the simplest way to spend compute
against a reward model, and the baseline PPO has to beat at equal reward-model queries.

Rejection-sampling fine-tuning: the best samples become demonstrations and the SFT trainer
fine-tunes the policy on them, moving the policy's own distribution toward what best-of-N
picks (used after RL to stabilise it, or instead of it).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignloop.config import BoNConfig, GenerationConfig
from alignloop.data.records import Demonstration, Prompt, stable_id
from alignloop.errors import AlignloopError
from alignloop.models.generation import generate
from alignloop.models.scoring import Scorer, score_all

SAMPLES_FILE = "best_of_n.jsonl"
SUMMARY_FILE = "summary.json"
BON_CONFIG = "bon_config.yaml"  # the BoNConfig of a fine-tuning run (config.yaml is the SFT stage's)


@dataclass
class BestOfN:
    """N scored samples per prompt; row i holds prompt i's completions, scores and EOS flags."""

    prompts: list[str]
    completions: list[list[str]]
    scores: list[list[float]]
    has_eos: list[list[bool]]
    prompt_ids: list[str] | None = None

    @property
    def n(self) -> int:
        return len(self.completions[0]) if self.completions else 0

    @property
    def best_index(self) -> list[int]:
        """Index of the highest score per prompt (the first one on ties)."""
        return [max(range(len(s)), key=lambda j, s=s: (s[j], -j)) for s in self.scores]

    @property
    def best(self) -> list[str]:
        return [c[j] for c, j in zip(self.completions, self.best_index, strict=True)]

    @property
    def best_scores(self) -> list[float]:
        return [s[j] for s, j in zip(self.scores, self.best_index, strict=True)]

    def ids(self) -> list[str]:
        return self.prompt_ids or [stable_id(p) for p in self.prompts]

    def demonstrations(self) -> list[Demonstration]:
        """The best sample of each prompt as an SFT demonstration (labeler ``best-of-N``)."""
        return [
            Demonstration(prompt_id=i, prompt=p, completion=c, labeler_id=f"best-of-{self.n}")
            for i, p, c in zip(self.ids(), self.prompts, self.best, strict=True)
        ]

    def summary(self) -> dict[str, float]:
        """Mean best score vs mean single-sample score: what best-of-N buys against this scorer."""
        flat = [x for s in self.scores for x in s]
        eos = [x for e in self.has_eos for x in e]
        return {
            "bon/n": float(self.n),
            "bon/prompts": float(len(self.prompts)),
            "bon/best_score_mean": sum(self.best_scores) / max(1, len(self.prompts)),
            "bon/sample_score_mean": sum(flat) / max(1, len(flat)),
            "bon/eos_rate": sum(eos) / max(1, len(eos)),
        }

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able row per prompt (the ``best_of_n.jsonl`` format)."""
        return [
            {"prompt_id": i, "prompt": p, "completions": c, "scores": s, "has_eos": e, "best": c[j], "best_score": s[j]}
            for i, p, c, s, e, j in zip(
                self.ids(), self.prompts, self.completions, self.scores, self.has_eos, self.best_index, strict=True
            )
        ]

    @classmethod
    def from_records(cls, rows: Sequence[dict[str, Any]]) -> BestOfN:
        return cls(
            prompts=[r["prompt"] for r in rows],
            completions=[r["completions"] for r in rows],
            scores=[r["scores"] for r in rows],
            has_eos=[r["has_eos"] for r in rows],
            prompt_ids=[r["prompt_id"] for r in rows],
        )


def best_of_n(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scorer: Scorer,
    n: int,
    generation: GenerationConfig | None = None,
    *,
    seed: int = 0,
    prompt_ids: Sequence[str] | None = None,
) -> BestOfN:
    """Sample ``n`` completions per prompt with the shared sampler and score them all.

    The N copies of a prompt are adjacent, so they share micro-batches (and their padding)."""
    if n < 1:
        raise AlignloopError(f"best-of-N needs n >= 1, got {n}")
    repeated = [p for p in prompts for _ in range(n)]
    out = generate(model, tokenizer, repeated, generation or GenerationConfig(temperature=1.0), seed=seed)
    scores = score_all(scorer, repeated, out.texts)
    eos = out.has_eos.tolist()

    def rows(flat: list) -> list[list]:
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    return BestOfN(list(prompts), rows(out.texts), rows(scores), rows(eos), list(prompt_ids) if prompt_ids else None)


def _split(prompts: list[Prompt], val_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Hold out a seeded share of prompts whose best samples choose the kept fine-tuned checkpoint."""
    if val_fraction <= 0 or len(prompts) < 2:
        return prompts, []
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_val = min(len(prompts) - 1, max(1, round(len(prompts) * val_fraction)))
    val = set(order[:n_val])
    return [p for i, p in enumerate(prompts) if i not in val], [p for i, p in enumerate(prompts) if i in val]


def sample_best_of_n(cfg: BoNConfig, prompts: Sequence[Prompt], scorer: Scorer, device: Any = None) -> BestOfN:
    """Load ``cfg.policy`` and run :func:`best_of_n` on ``prompts`` (inference-time best-of-N), on
    ``device`` (default: the first GPU when there is one, else the CPU)."""
    from alignloop.models.loading import load_policy, quiet_hf

    with quiet_hf():
        model, tokenizer = load_policy(cfg.policy.name, cfg.policy.dtype)
    import torch

    if device is None and torch.cuda.is_available():
        device = "cuda"
    if device is not None:
        model.to(device)
    return best_of_n(
        model, tokenizer, [p.text for p in prompts], scorer, cfg.n, cfg.generation, seed=cfg.seed,
        prompt_ids=[p.id for p in prompts],
    )  # fmt: skip


def write_best_of_n(result: BestOfN, out_dir: str | Path) -> Path:
    """``best_of_n.jsonl`` (every sample and score) and ``summary.json`` in ``out_dir``."""
    from alignloop.data.jsonl import write_jsonl

    out = Path(out_dir)
    write_jsonl(out / SAMPLES_FILE, result.records())
    (out / SUMMARY_FILE).write_text(json.dumps(result.summary(), indent=2) + "\n")
    return out / SAMPLES_FILE


def rejection_sampling_finetune(
    cfg: BoNConfig,
    prompts: Sequence[Prompt],
    scorer: Scorer,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    samples: BestOfN | None = None,
):
    """Best-of-N on ``prompts``, then SFT of ``cfg.policy`` on the best samples.

    With ``cfg.val_fraction > 0`` the best samples of held-out prompts form the validation set
    and ``scorer`` chooses the kept checkpoint (as SFT with an RM does). The samples are written
    to ``run_dir/best_of_n.jsonl`` first; a resumed run reuses them rather than sampling again
    (and continues the fine-tuning from its checkpoint, or starts it when it had none yet).
    ``samples``: best-of-N already drawn for ``prompts`` (``alignloop compare`` samples in chunks
    to stop at a wall-time budget); they are written and trained on instead of sampling here.
    A fresh run needs an empty ``run_dir``; ``overwrite`` replaces a rejection-sampling run there
    (:func:`~alignloop.train.run_folder.open_run`). Returns (BestOfN, SFTResult).
    """
    from alignloop.config import dump_config
    from alignloop.data.jsonl import iter_json_lines
    from alignloop.train import sft as sft_stage
    from alignloop.train.distributed import build_accelerator
    from alignloop.train.run_folder import can_resume, open_run

    if not prompts:
        raise AlignloopError("no prompts for best-of-N", "give a non-empty prompts file")
    run = Path(run_dir)
    samples_path = run / SAMPLES_FILE
    sft_cfg = dataclasses.replace(cfg.sft, model=cfg.policy)
    ours = (SAMPLES_FILE, SUMMARY_FILE, BON_CONFIG)  # what best-of-N writes before fine-tuning starts
    if resume and not samples_path.exists():
        raise AlignloopError(f"nothing to resume: {run} holds no best-of-N samples ({SAMPLES_FILE})", "drop --resume")
    if not resume:  # before sampling, so a folder that is not empty fails at once, not after the sampling
        open_run(run, sft_cfg, stage="rejection-sampling", overwrite=overwrite, outputs=(*sft_stage.OUTPUTS, *ours))
    # Under several processes the main one samples and writes the file, and every process trains on
    # what it reads back: the SFT steps slice ONE list of demonstrations by rank, and sampling on
    # each process would neither be bitwise equal across GPUs nor safe to write from two processes.
    acc = build_accelerator()
    if acc.is_main_process and not resume:
        written = samples if samples is not None else sample_best_of_n(cfg, prompts, scorer, device=acc.device)
        run.mkdir(parents=True, exist_ok=True)
        write_best_of_n(written, run)
        dump_config(cfg, run / BON_CONFIG)
    acc.wait_for_everyone()
    result = BestOfN.from_records([row for _, row in iter_json_lines(samples_path)])
    # the best sample is trained on as it was sampled: with EOS only if the policy ended it
    by_id = {
        d.prompt_id: (d, e[j])
        for d, e, j in zip(result.demonstrations(), result.has_eos, result.best_index, strict=True)
    }
    train_p, val_p = _split(list(prompts), cfg.val_fraction, cfg.seed)
    train = [by_id[p.id][0] for p in train_p]
    val = [by_id[p.id][0] for p in val_p]
    # Resumed before fine-tuning wrote its first checkpoint: start it over (only its own files go).
    sft_resume = resume and can_resume(run, sft_stage.FINISHED)
    sft = sft_stage.train_sft(
        sft_cfg, train, val or None, run, scorer=scorer if val else None, resume=sft_resume,
        overwrite=resume and not sft_resume, keep=ours, ends=[by_id[p.id][1] for p in train_p],
    )  # fmt: skip
    return result, sft
