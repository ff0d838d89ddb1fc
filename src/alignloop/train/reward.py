"""Reward-model training with all C(K,2) comparisons of a prompt as ONE batch element (SPEC section 5).

A batch element is one prompt with its K ranked completions. Each completion gets one forward
pass; the pair losses come from those K scalars (:func:`~alignloop.train.losses.rm_kway_loss`).
So an epoch costs K forwards per prompt instead of K(K-1) (two per expanded pair), and each
completion is seen once per epoch instead of K-1 times, which is what made the paper's RM stop
overfitting after one epoch.

One optimizer step:
  1. take ``prompts_per_step`` rankings from the epoch's shuffled order (this rank's slice);
  2. group whole prompts into chunks of at most ``micro_batch_completions`` completions;
  3. per chunk: one forward over its completions, the K-way loss, backward scaled by the
     chunk's share of the step's prompts (so the accumulated gradient is that of the mean over
     all prompts of the step; a prompt is never split, its K scores meet in one loss);
  4. clip, AdamW step, cosine-with-warm-up LR step.
Held-out pairwise accuracy / loss / margin are evaluated every ``eval_every`` steps and at each
epoch end. At the end the reward is normalised so demonstrations score mean 0, and the model is
saved to ``RUN_DIR/model``. The run folder follows :mod:`alignloop.train.runlog` and resumes
exactly from :mod:`alignloop.train.checkpoint`.

``rm.batching: shuffled_pairs`` is the alternative the paper warns against, kept so users can
see the difference themselves (``bench/rm_batching.py``): every untied pair becomes its own
two-completion element (:func:`expand_pairs`), pairs of all prompts are shuffled together, and a
step takes as many pairs as the per-prompt steps average, so both modes make the same number of
steps per epoch over the same comparisons; each completion is then scored K-1 times per epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignloop.config import RMConfig
from alignloop.data.records import Demonstration, Ranking
from alignloop.errors import AlignloopError
from alignloop.models.reward import (
    Encoded,
    RewardModel,
    collate,
    encode,
    fit_normalisation,
    init_reward_model,
    load_reward_model,
    pad_id,
)
from alignloop.train.checkpoint import (
    interrupt_point,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    stop_requested,
)
from alignloop.train.distributed import (
    Precision,
    build_accelerator,
    enable_gradient_checkpointing,
    epoch_order,
    equal_passes,
    gathered_model,
    load_optimizer_state,
    optimizer_state,
    place_model,
    rank_seed,
    rank_slice,
    seed_everything,
    step_indices,
)
from alignloop.train.losses import rm_kway_loss
from alignloop.train.runlog import RunLog, track
from alignloop.train.schedule import build_optimizer, cosine_with_warmup, warmup_steps

MODEL_SUBDIR = "model"


@dataclass
class EncodedRanking:
    """One batch element: the K tokenised completions of a prompt and their ranks (0 = best)."""

    items: list[Encoded]
    ranks: list[int]

    @property
    def has_pairs(self) -> bool:
        return len(set(self.ranks)) > 1


def encode_rankings(model: RewardModel, tokenizer: Any, rankings: Sequence[Ranking]) -> list[EncodedRanking]:
    """Tokenise every completion once, up front (one batched tokenizer call)."""
    prompts = [r.prompt for r in rankings for _ in r.completions]
    completions = [c for r in rankings for c in r.completions]
    flat = encode(tokenizer, model.info, prompts, completions)
    out, i = [], 0
    for r in rankings:
        out.append(EncodedRanking(flat[i : i + r.k], r.ranks()))
        i += r.k
    return out


def expand_pairs(data: Sequence[EncodedRanking]) -> list[EncodedRanking]:
    """``shuffled_pairs`` elements: one per untied ordered pair (winner first, rank 0; loser rank 1)."""
    out = []
    for r in data:
        for w, lo in itertools.combinations(range(len(r.items)), 2):
            if r.ranks[w] == r.ranks[lo]:
                continue
            if r.ranks[lo] < r.ranks[w]:
                w, lo = lo, w
            out.append(EncodedRanking([r.items[w], r.items[lo]], [0, 1]))
    return out


def chunk_prompts(batch: Sequence[EncodedRanking], max_completions: int) -> list[list[EncodedRanking]]:
    """Consecutive groups of whole prompts with at most ``max_completions`` completions each
    (a prompt with more completions than that forms a chunk of its own)."""
    chunks: list[list[EncodedRanking]] = []
    current: list[EncodedRanking] = []
    size = 0
    for r in batch:
        if current and size + len(r.items) > max_completions:
            chunks.append(current)
            current, size = [], 0
        current.append(r)
        size += len(r.items)
    if current:
        chunks.append(current)
    return chunks


def score_chunk(
    model: torch.nn.Module, chunk: Sequence[EncodedRanking], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over the chunk's completions -> (scores, ranks, k_mask), each [B, Kmax]."""
    flat = [it for r in chunk for it in r.items]
    raw = model(**collate(flat, pad, device))
    kmax = max(len(r.items) for r in chunk)
    k_mask = torch.tensor([[1] * len(r.items) + [0] * (kmax - len(r.items)) for r in chunk], device=device)
    ranks = torch.tensor([r.ranks + [0] * (kmax - len(r.ranks)) for r in chunk], device=device)
    scores = torch.zeros(k_mask.shape, dtype=raw.dtype, device=device).masked_scatter(k_mask.bool(), raw)
    return scores, ranks, k_mask


class _Tally:
    """Sums chunk metrics into step/epoch figures: loss per prompt, accuracy and margin per pair."""

    def __init__(self) -> None:
        self.loss = self.correct = self.margin = 0.0
        self.prompts = self.pairs = 0

    def add(self, loss: torch.Tensor, m: dict[str, torch.Tensor]) -> None:
        n_prompts, n_pairs = int(m["n_prompts"]), int(m["n_pairs"])
        self.loss += float(loss.detach()) * n_prompts
        self.correct += float(m["accuracy"]) * n_pairs
        self.margin += float(m["margin"]) * n_pairs
        self.prompts += n_prompts
        self.pairs += n_pairs

    def result(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/loss": self.loss / max(self.prompts, 1),
            f"{prefix}/accuracy": self.correct / max(self.pairs, 1),
            f"{prefix}/margin": self.margin / max(self.pairs, 1),
            f"{prefix}/pairs": float(self.pairs),
        }


@torch.no_grad()
def evaluate_encoded(
    model: torch.nn.Module, data: Sequence[EncodedRanking], pad: int, micro_batch: int, prefix: str = "val"
) -> dict[str, float]:
    """Pairwise accuracy, loss and mean margin of ``model`` on encoded rankings (no gradient)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tally = _Tally()
    try:
        for chunk in chunk_prompts(data, micro_batch):
            loss, m = rm_kway_loss(*score_chunk(model, chunk, pad, device))
            tally.add(loss, m)
    finally:
        model.train(was_training)
    return tally.result(prefix)


def evaluate_reward_model(
    model_dir: str | os.PathLike[str], rankings: Sequence[Ranking], micro_batch: int = 32
) -> dict[str, float]:
    """``alignloop rm eval``: held-out pairwise accuracy / loss / margin of a saved reward model."""
    if not rankings:
        raise AlignloopError("no rankings to evaluate on", "give a rankings JSONL file with at least one line")
    model, tok = load_reward_model(model_dir)
    return evaluate_encoded(model, encode_rankings(model, tok, rankings), pad_id(tok), micro_batch, prefix="eval")


def split_by_prompt(rankings: Sequence[Ranking], fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held-out) with no prompt in both; ``fraction`` of the distinct prompts are held out
    (at least one when the fraction is positive and there are two prompts or more)."""
    ids = sorted({r.prompt_id for r in rankings})
    if fraction <= 0 or len(ids) < 2:
        return list(rankings), []
    random.Random(seed).shuffle(ids)
    n_held = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held = set(ids[:n_held])
    return [r for r in rankings if r.prompt_id not in held], [r for r in rankings if r.prompt_id in held]


@dataclass
class RMTrainResult:
    """What a training run produced: the model folder and its final figures."""

    run_dir: Path
    model_dir: Path
    steps: int
    train_seconds: float
    train: dict[str, float] = field(default_factory=dict)  # last step's train/* metrics
    val: dict[str, float] = field(default_factory=dict)  # last held-out evaluation (val/*)
    normalisation: dict[str, float] = field(default_factory=dict)


def train_reward_model(
    cfg: RMConfig,
    rankings: Sequence[Ranking],
    out_dir: str | os.PathLike[str],
    *,
    val: Sequence[Ranking] | None = None,
    demos: Sequence[Demonstration] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> RMTrainResult:
    """Train a reward model on ``rankings``; write the run folder ``out_dir``.

    ``val``: held-out rankings (default: ``cfg.val_fraction`` of the prompts, split off by
    prompt). ``demos``: SFT demonstrations (or SFT samples as Demonstration records) for reward
    normalisation. ``resume``: continue from the newest checkpoint in ``out_dir``.
    ``on_step(step, metrics)`` is called after every step; ``on_eval(step, metrics)`` after every
    held-out evaluation and may return True to stop early. Both metrics dicts carry
    ``train_seconds``: wall time spent in training steps only (evaluation and checkpoints excluded).
    """
    out = Path(out_dir)
    rankings = list(rankings)
    if not rankings:
        raise AlignloopError("no rankings to train on", "give a rankings JSONL file with at least one line")
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise AlignloopError(f"nothing to resume: {out} has no checkpoint", "drop --resume to start a new run")
    if not resume and (list_checkpoints(out) or (out / MODEL_SUBDIR).exists()):
        raise AlignloopError(
            f"{out} already holds a reward-model run", "pass --resume to continue it, or choose a new --out folder"
        )
    if val is None:
        rankings, val = split_by_prompt(rankings, cfg.val_fraction, cfg.seed)
    val = list(val)

    accelerator = build_accelerator()
    main = accelerator.is_main_process
    precision = Precision(cfg.distributed.dtype, accelerator.device)
    seed_everything(cfg.seed)  # the head's initialisation is the same on every rank
    if ckpt is not None:
        model, tok = load_reward_model(ckpt / MODEL_SUBDIR)
    else:
        model, tok = init_reward_model(
            cfg.model.name,
            kind=cfg.backbone,
            pooling=cfg.pooling,
            dtype=cfg.model.dtype,
            dropout=cfg.dropout,
            max_length=cfg.max_length,
        )
    model.train()
    seed_everything(rank_seed(cfg.seed, accelerator.process_index))  # dropout masks differ per rank
    pad = pad_id(tok)
    train_data = encode_rankings(model, tok, rankings)
    val_data = encode_rankings(model, tok, val)

    step_size = cfg.prompts_per_step  # elements per optimizer step
    steps_per_epoch = math.ceil(len(train_data) / step_size)
    if cfg.batching == "shuffled_pairs":
        train_data = expand_pairs(train_data)
        step_size = max(1, math.ceil(len(train_data) / steps_per_epoch))
        steps_per_epoch = math.ceil(len(train_data) / step_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.distributed.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, _ = place_model(model, accelerator, cfg.distributed.strategy, precision)  # shard before the optimizer
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_with_warmup(optimizer, total, warmup_steps(total, cfg.warmup_ratio))

    start, train_seconds = 0, 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, scheduler=scheduler)
        start, train_seconds = state["step"], state["extra"]["train_seconds"]
        load_optimizer_state(model, optimizer, state["extra"].get("optimizer_state") or state["optimizer"])
    log = RunLog(out, cfg, resume_step=start if ckpt is not None else None, enabled=main)

    def save(step: int) -> None:
        plain = gathered_model(accelerator.unwrap_model(model))  # every process: a collective under FSDP
        opt_state = optimizer_state(model, optimizer)
        if main:
            save_checkpoint(
                out,
                step,
                lambda p: plain.save(p, tok),
                scheduler=scheduler,
                extra={"train_seconds": train_seconds, "optimizer_state": opt_state},
            )
        accelerator.wait_for_everyone()

    def evaluate(step: int) -> dict[str, float]:
        if not val_data:
            return {}
        metrics = evaluate_encoded(accelerator.unwrap_model(model), val_data, pad, cfg.micro_batch_completions)
        log.log(step, metrics)
        return metrics

    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    orders: dict[int, list[int]] = {}
    stopped = False
    done = start
    steps = track(range(start, total), "reward model", total=total - start, enabled=progress and main)
    for step in steps:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: epoch_order(len(train_data), cfg.seed, epoch)}
        indices = step_indices(orders[epoch], pos, step_size, accelerator.num_processes)
        batch = [train_data[i] for i in rank_slice(indices, accelerator.process_index, accelerator.num_processes)]

        t0 = time.perf_counter()
        n_prompts = sum(train_data[i].has_pairs for i in indices)  # the step's, over every process
        tally = _train_step(model, optimizer, scheduler, accelerator, precision, batch, n_prompts, pad, cfg)
        train_seconds += time.perf_counter() - t0
        done = step + 1

        last_train = tally.result("train") | {
            "lr": scheduler.get_last_lr()[0],
            "epoch": epoch + (pos + 1) / steps_per_epoch,
        }
        log.log(step + 1, last_train)
        if on_step is not None:
            on_step(step + 1, last_train | {"train_seconds": train_seconds})
        end_of_epoch = pos + 1 == steps_per_epoch
        if val_data and (end_of_epoch or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            last_val = evaluate(step + 1)
            if on_eval is not None and on_eval(step + 1, last_val | {"train_seconds": train_seconds}):
                stopped = True
        interrupted = stop_requested() and step + 1 < total
        periodic = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
        if stopped or interrupted or step + 1 == total or periodic:
            save(step + 1)
        if interrupted:
            log.close()
            interrupt_point(step + 1, out)  # Ctrl-C / SIGTERM: the checkpoint above is written
        if stopped:
            break
    if not last_val and val_data:
        last_val = evaluate(done)

    # Reward normalisation: demonstrations score mean 0 (and std 1 with normalize_gain).
    unwrapped: RewardModel = gathered_model(accelerator.unwrap_model(model))  # None off the main process under FSDP
    if unwrapped is None:  # normalisation runs on the main process's gathered copy; the others wait
        log.close()
        accelerator.wait_for_everyone()
        return RMTrainResult(out, out / MODEL_SUBDIR, done, train_seconds, last_train, last_val, {})
    unwrapped.to(accelerator.device)
    norm: dict[str, float] = {}
    if cfg.normalize and demos:
        norm = fit_normalisation(
            unwrapped,
            tok,
            [d.prompt for d in demos],
            [d.completion for d in demos],
            with_gain=cfg.normalize_gain,
            batch_size=cfg.micro_batch_completions,
        )
        log.log(done, {f"reward/{k}": v for k, v in norm.items()})
    model_dir = out / MODEL_SUBDIR
    if main:
        tmp = out / f".tmp-model-{os.getpid()}"
        unwrapped.save(tmp, tok)
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    log.close()
    accelerator.wait_for_everyone()
    return RMTrainResult(out, model_dir, done, train_seconds, last_train, last_val, norm)


def _train_step(
    model, optimizer, scheduler, accelerator, precision: Precision, batch: list[EncodedRanking], n_prompts: int,
    pad: int, cfg: RMConfig,
) -> _Tally:  # fmt: skip
    """Steps 2-4 of the module docstring: micro-batched forwards, accumulated backward, update.
    A chunk weighs its prompts / (the step's ``n_prompts`` over every process / world): the gradient
    mean over processes is the mean over the step's prompts, as on one process. Every pass runs a
    backward (DDP and FSDP synchronise in it), as many passes on every process under FSDP."""
    tally = _Tally()
    per_rank = max(1, n_prompts) / accelerator.num_processes
    optimizer.zero_grad(set_to_none=True)
    chunks = chunk_prompts(batch, cfg.micro_batch_completions)
    passes = equal_passes(len(chunks), model, accelerator.device)
    for i in range(passes):
        chunk, real = chunks[min(i, len(chunks) - 1)], i < len(chunks)
        with contextlib.nullcontext() if i == passes - 1 else accelerator.no_sync(model):
            loss, m = rm_kway_loss(*score_chunk(model, chunk, pad, accelerator.device))
            precision.backward(accelerator, loss * (int(m["n_prompts"]) / per_rank if real else 0.0))
        if real:
            tally.add(loss, m)
    precision.step(optimizer, model.parameters(), cfg.max_grad_norm)
    scheduler.step()
    return tally


# ----------------------------------------------------------------------------------------------
# Cross-validation by labeler group (the paper's 72.4 +- 0.4 % vs 69.6 +- 0.9 % experiment).


def labeler_group(r: Ranking) -> str:
    """The labeler group of a ranking (``metadata['labeler_group']``, else its labeler id)."""
    g = r.metadata.get("labeler_group")
    return str(g) if g is not None else r.labeler_id


@dataclass
class CrossvalResult:
    """Per-fold and summary pairwise accuracies (as fractions)."""

    folds: list[dict[str, Any]]

    def _stat(self, key: str) -> tuple[float, float]:
        xs = [f[key] for f in self.folds]
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    @property
    def in_group(self) -> tuple[float, float]:
        return self._stat("in_group_accuracy")

    @property
    def held_out_group(self) -> tuple[float, float]:
        return self._stat("held_out_accuracy")

    def summary(self) -> str:
        (a, sa), (b, sb) = self.in_group, self.held_out_group
        return (
            f"in-group accuracy {100 * a:.1f} +- {100 * sa:.1f} %   "
            f"held-out group accuracy {100 * b:.1f} +- {100 * sb:.1f} %   "
            f"({len(self.folds)} folds; paper: 72.4 +- 0.4 vs 69.6 +- 0.9)"
        )


def crossval(
    cfg: RMConfig,
    rankings: Sequence[Ranking],
    k: int = 5,
    by: str = "labeler_group",
    *,
    test_fraction: float = 0.2,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> CrossvalResult:
    """k-fold cross-validation by labeler group: train on k-1 folds of groups, then measure

    * in-group accuracy: on held-out prompts (``test_fraction`` of all prompts, never trained on)
      ranked by the training groups;
    * held-out-group accuracy: on the held-out groups' rankings of prompts not in the training set.
    Groups are dealt round-robin into k folds (exactly one group per fold when there are k).
    ``by``: ``labeler_group`` or ``labeler`` (each labeler its own group)."""
    if by not in ("labeler_group", "labeler"):
        raise AlignloopError(f"unknown cross-validation key {by!r}", "use labeler_group or labeler")
    key = labeler_group if by == "labeler_group" else (lambda r: r.labeler_id)
    groups = sorted({key(r) for r in rankings})
    if k < 2 or len(groups) < k:
        raise AlignloopError(
            f"{k}-fold cross-validation by {by} needs at least {max(k, 2)} groups; the data has {len(groups)}",
            f"use --folds {len(groups)} or fewer (at least 2), or rankings from more labeler groups",
        )
    fold_of = {g: i % k for i, g in enumerate(groups)}
    _, test = split_by_prompt(rankings, test_fraction, cfg.seed)
    test_ids = {r.prompt_id for r in test}
    folds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        root = Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for f in range(k):
            train = [r for r in rankings if fold_of[key(r)] != f and r.prompt_id not in test_ids]
            in_group = [r for r in rankings if fold_of[key(r)] != f and r.prompt_id in test_ids]
            train_ids = {r.prompt_id for r in train}
            held_out = [r for r in rankings if fold_of[key(r)] == f and r.prompt_id not in train_ids]
            if not train or not in_group or not held_out:
                raise AlignloopError(
                    f"fold {f}: too little data ({len(train)} training, {len(in_group)} in-group test, "
                    f"{len(held_out)} held-out-group rankings)",
                    "give more rankings or a larger --test-fraction",
                )
            fold_cfg = _replace_rm(cfg, normalize=False)
            run = train_reward_model(fold_cfg, train, root / f"fold-{f}", val=in_group, progress=progress)
            held = evaluate_reward_model(run.model_dir, held_out, cfg.micro_batch_completions)
            folds.append(
                {
                    "fold": f,
                    "held_out_groups": [g for g in groups if fold_of[g] == f],
                    "in_group_accuracy": run.val["val/accuracy"],
                    "held_out_accuracy": held["eval/accuracy"],
                    "train_rankings": len(train),
                    "in_group_pairs": int(run.val["val/pairs"]),
                    "held_out_pairs": int(held["eval/pairs"]),
                }
            )
    return CrossvalResult(folds)


def _replace_rm(cfg: RMConfig, **changes: Any) -> RMConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)
