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
saved to ``RUN_DIR/model``. With ``rm.relevance`` a frozen sentence encoder's prompt-completion
similarity, weighted as the training rankings ask, is added to every score before the head
trains (:mod:`alignloop.models.relevance`), so the head learns the rest. The run folder follows
:mod:`alignloop.train.runlog`, is opened by :func:`~alignloop.train.run_folder.open_run` (a fresh
run needs an empty folder; ``resume`` needs a checkpoint and the same config) and resumes exactly
from :mod:`alignloop.train.checkpoint`.
Batch elements are built in :mod:`alignloop.train.reward_data`, held-out figures in
:mod:`alignloop.train.reward_eval`, cross-validation by labeler group in
:mod:`alignloop.train.reward_crossval`.

``rm.batching: shuffled_pairs`` is the alternative the paper warns against, kept so users can
see the difference themselves (``bench/rm_batching.py``): every untied pair becomes its own
two-completion element (:func:`expand_pairs`), pairs of all prompts are shuffled together, and a
step takes as many pairs as the per-prompt steps average, so both modes make the same number of
steps per epoch over the same comparisons; each completion is then scored K-1 times per epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignloop.config import RMConfig
from alignloop.data.records import Demonstration, Ranking
from alignloop.errors import AlignloopError
from alignloop.models.padding import pad_token_id
from alignloop.models.reward import (
    RewardModel,
    fit_normalisation,
    init_reward_model,
    load_reward_model,
    relevance_of,
)
from alignloop.train.checkpoint import interrupt_point, load_checkpoint, save_checkpoint, stop_requested
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
from alignloop.train.reward_data import (
    EncodedRanking,
    chunk_prompts,
    encode_rankings,
    expand_pairs,
    score_chunk,
    split_by_prompt,
)
from alignloop.train.reward_eval import Tally, evaluate_encoded, evaluate_reward_model, ranking_pairs
from alignloop.train.run_folder import open_run
from alignloop.train.runlog import RunLog, track
from alignloop.train.schedule import build_optimizer, cosine_with_warmup, warmup_steps

# Names other modules and tests import from here.
__all__ = [
    "EncodedRanking", "RMTrainResult", "chunk_prompts", "encode_rankings", "evaluate_encoded",
    "evaluate_reward_model", "expand_pairs", "split_by_prompt", "train_reward_model",
]  # fmt: skip

MODEL_SUBDIR = "model"
#: What an RM run writes besides the common layout (what ``overwrite`` may delete).
OUTPUTS = (MODEL_SUBDIR, ".tmp-model-*")


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
    relevance: dict[str, float] = field(default_factory=dict)  # the fitted relevance weight (rm.relevance)


def train_reward_model(
    cfg: RMConfig,
    rankings: Sequence[Ranking],
    out_dir: str | os.PathLike[str],
    *,
    val: Sequence[Ranking] | None = None,
    demos: Sequence[Demonstration] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> RMTrainResult:
    """Train a reward model on ``rankings``; write the run folder ``out_dir``.

    ``val``: held-out rankings (default: ``cfg.val_fraction`` of the prompts, split off by
    prompt). ``demos``: SFT demonstrations (or SFT samples as Demonstration records) for reward
    normalisation. ``resume``: continue from the newest checkpoint in ``out_dir``; ``overwrite``:
    replace an RM run there (:func:`~alignloop.train.run_folder.open_run`).
    ``on_step(step, metrics)`` is called after every step; ``on_eval(step, metrics)`` after every
    held-out evaluation and may return True to stop early. Both metrics dicts carry
    ``train_seconds``: wall time spent in training steps only (evaluation and checkpoints excluded).
    """
    out = Path(out_dir)
    rankings = list(rankings)
    if not rankings:
        raise AlignloopError("no rankings to train on", "give a rankings JSONL file with at least one line")
    ckpt = open_run(out, cfg, stage="reward-model", resume=resume, overwrite=overwrite, outputs=OUTPUTS).checkpoint
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
    relevance = fit_relevance(model, rankings, cfg.relevance) if cfg.relevance else {}
    seed_everything(rank_seed(cfg.seed, accelerator.process_index))  # dropout masks differ per rank
    pad = pad_token_id(tok)
    train_data = encode_rankings(model, tok, rankings, cfg.merge_overlap)
    val_data = encode_rankings(model, tok, val, cfg.merge_overlap)

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
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.adam_betas, cfg.adam_eps)
    scheduler = cosine_with_warmup(optimizer, total, warmup_steps(total, cfg.warmup_ratio))

    start, train_seconds = 0, 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, scheduler=scheduler)
        start, train_seconds = state["step"], state["extra"]["train_seconds"]
        load_optimizer_state(model, optimizer, state["extra"].get("optimizer_state") or state["optimizer"])
    log = RunLog(out, cfg, resume_step=start if ckpt is not None else None, enabled=main)
    if relevance and ckpt is None:
        log.log(0, {f"relevance/{k}": v for k, v in relevance.items()})

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
        n_prompts = sum(train_data[i].pair_rankings for i in indices)  # the step's rankings, over every process
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
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    log.close()
    accelerator.wait_for_everyone()
    return RMTrainResult(out, model_dir, done, train_seconds, last_train, last_val, norm, relevance)


def fit_relevance(model: RewardModel, rankings: Sequence[Ranking], encoder: str) -> dict[str, float]:
    """Give ``model`` the relevance feature of sentence encoder ``encoder``, weighted as ``rankings``
    (every labeler's every untied pair) ask when relevance alone explains them
    (:func:`~alignloop.models.relevance.fit_weight`)."""
    from alignloop.models.relevance import fit_weight

    prompts, completions, pairs = ranking_pairs(rankings)
    model.info.relevance_model, model.info.relevance_weight = encoder, 0.0
    fit = fit_weight(relevance_of(model, prompts, completions), pairs)
    model.info.relevance_weight = fit["weight"]
    return fit


def _train_step(
    model, optimizer, scheduler, accelerator, precision: Precision, batch: list[EncodedRanking], n_prompts: int,
    pad: int, cfg: RMConfig,
) -> Tally:  # fmt: skip
    """Steps 2-4 of the module docstring: micro-batched forwards, accumulated backward, update.
    A chunk weighs its prompts / (the step's ``n_prompts`` over every process / world): the gradient
    mean over processes is the mean over the step's prompts, as on one process. Every pass runs a
    backward (DDP and FSDP synchronise in it), as many passes on every process under FSDP."""
    tally = Tally()
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
