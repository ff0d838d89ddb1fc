"""Direct preference optimisation on the K-way rankings, all C(K,2) pairs of a prompt as ONE element.

The policy is trained on the labelers' rankings directly, without a reward model or sampling
(Rafailov et al. 2023); the reference is the SFT policy it starts from. As for the reward model
(:mod:`alignloop.train.reward`), a batch element is one prompt with its K ranked completions:
each completion gets one policy forward per step, and the pair (or listwise) losses come from
those K sequence log-probabilities (:func:`~alignloop.train.losses.dpo_kway_loss`). Expanding
a ranking into C(K,2) pairs, as pair-based trainers do, costs 2*C(K,2) policy forwards and as
many reference forwards per prompt; here it is K policy forwards, and K reference forwards
once per run: the reference is frozen, so its log-probs are computed before the first step
(from the starting weights, which ARE the reference: no second model is held in memory),
cached in the run folder and reused by every epoch and by a resume.

One run, in the order the code runs it:
  1. tokenise every completion once (the chat-formatted query + completion + EOS, the SFT rows);
  2. the reference log-probs of every training and held-out completion (cached), computed with
     the placed starting weights (a replica per process, or FSDP2 shards: ``distributed.strategy``);
  3. per optimizer step: ``prompts_per_step`` rankings from the epoch's shuffled order (this
     rank's slice), grouped into chunks of whole prompts of at most ``micro_batch_completions``
     completions; per chunk one forward, the K-way loss, backward scaled by the chunk's share of
     the step's prompts (the accumulated gradient is the mean over the step's prompts);
  4. clip, AdamW step, cosine LR step; held-out metrics every ``eval_every`` steps and at epoch ends;
     a spent wall-time budget (:func:`~alignloop.train.checkpoint.wall_time_budget`, ``alignloop
     compare``) ends the run at this step boundary, as the schedule's end would;
  5. the policy as a plain HF folder in ``RUN_DIR/policy`` (LoRA merged).

Metrics: loss, implicit-reward accuracy (share of untied pairs with h_w > h_l, where
h = beta * log(pi / pi_ref)), reward margin, mean chosen/rejected reward, and ``kl_ref``: the
mean over held-out completions of log pi_ref(y|x) - log pi(y|x). The held-out completions are
samples of the SFT policy in the loop, so this is a Monte-Carlo estimate of KL(pi_SFT || pi)
(the direction sampled from the reference; zero at the start, grows as the policy moves away).

Run folder (as every trainer: :mod:`alignloop.train.runlog`, :mod:`alignloop.train.checkpoint`;
opened by :func:`~alignloop.train.run_folder.open_run`: a fresh run needs an empty folder,
``resume`` a checkpoint or a finished run and the same config)::

    RUN_DIR/config.yaml  metrics.jsonl  tb/  checkpoints/step-NNNNNN/  reference_logprobs.pt
    RUN_DIR/policy/      the trained policy (HF folder with tokenizer)   finished.json
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from alignloop.config import DPOConfig
from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError
from alignloop.models.loading import load_tokenizer
from alignloop.models.reward import pad_id
from alignloop.train.checkpoint import agreed_budget_spent, load_checkpoint, save_checkpoint
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
    rank_slice,
    seed_everything,
    step_indices,
)
from alignloop.train.logprobs import (  # noqa: F401  (encode_rankings, reference_logprobs: imported from here too)
    EncodedRanking,
    encode_rankings,
    fingerprint,
    grid,
    ref_grid,
    reference_logprobs,
    sequence_logprobs,
)
from alignloop.train.losses import dpo_kway_loss
from alignloop.train.reward import chunk_prompts, split_by_prompt
from alignloop.train.run_folder import open_run
from alignloop.train.runlog import RunLog, track
from alignloop.train.schedule import build_optimizer, cosine_with_warmup, warmup_steps
from alignloop.train.sft import _build_model, export_model, quiet_hf

POLICY_SUBDIR = "policy"
REFERENCE_CACHE = "reference_logprobs.pt"
FINISHED = "finished.json"
#: What a DPO run writes besides the common run-folder layout (what ``overwrite`` may delete).
OUTPUTS = (POLICY_SUBDIR, f"{POLICY_SUBDIR}.tmp", REFERENCE_CACHE, FINISHED)


# ---------------------------------------------------------------- metrics


class _Tally:
    """Chunk metrics -> step/eval figures: loss per prompt, pair metrics per pair, KL per completion."""

    PAIR_KEYS = ("accuracy", "margin", "chosen", "rejected")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(("loss", *self.PAIR_KEYS, "kl_ref"), 0.0)
        self.prompts = self.pairs = self.completions = 0

    def add(self, loss: torch.Tensor, m: dict[str, torch.Tensor], kl_sum: float, n_completions: int) -> None:
        n_prompts, n_pairs = int(m["n_prompts"]), int(m["n_pairs"])
        self.sums["loss"] += float(loss.detach()) * n_prompts
        for k in self.PAIR_KEYS:
            self.sums[k] += float(m[k]) * n_pairs
        self.sums["kl_ref"] += kl_sum
        self.prompts += n_prompts
        self.pairs += n_pairs
        self.completions += n_completions

    def all_sum(self, acc: Any) -> _Tally:
        """The tally of every process together (each holds its share of the step's prompts)."""
        if acc.num_processes > 1:
            keys = list(self.sums)
            local = [self.sums[k] for k in keys] + [self.prompts, self.pairs, self.completions]
            total = acc.reduce(torch.tensor(local, dtype=torch.float64, device=acc.device), "sum").tolist()
            self.sums = dict(zip(keys, total[: len(keys)], strict=True))
            self.prompts, self.pairs, self.completions = (int(x) for x in total[len(keys) :])
        return self

    def result(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/loss": self.sums["loss"] / max(self.prompts, 1)}
        out |= {f"{prefix}/{k}": self.sums[k] / max(self.pairs, 1) for k in self.PAIR_KEYS}
        out[f"{prefix}/kl_ref"] = self.sums["kl_ref"] / max(self.completions, 1)
        out[f"{prefix}/pairs"] = float(self.pairs)
        return out


def _chunk_loss(model: Any, chunk: Sequence[EncodedRanking], ref: torch.Tensor, pad: int, device, cfg: DPOConfig):
    """(loss, metrics, KL sum) of one chunk: one policy forward over its completions."""
    logps = sequence_logprobs(model, [it for r in chunk for it in r.items], pad, device)
    logps, ranks, k_mask = grid(logps, chunk, device)
    ref_logps = ref_grid(ref, chunk, device)
    loss, m = dpo_kway_loss(logps, ref_logps, ranks, k_mask, cfg.beta, cfg.loss)
    kl_sum = float(((ref_logps - logps.detach()) * k_mask).sum())
    return loss, m, kl_sum


@torch.no_grad()
def evaluate_dpo(
    model: Any, data: Sequence[EncodedRanking], ref: torch.Tensor, pad: int, cfg: DPOConfig, prefix: str = "val"
) -> dict[str, float]:
    """Held-out loss, implicit-reward accuracy, reward margin and KL estimate (no gradient, dropout off)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tally = _Tally()
    try:
        for chunk in chunk_prompts(data, cfg.micro_batch_completions):
            loss, m, kl_sum = _chunk_loss(model, chunk, ref, pad, device, cfg)
            tally.add(loss, m, kl_sum, sum(len(r.items) for r in chunk))
    finally:
        model.train(was_training)
    return tally.result(prefix)


# ---------------------------------------------------------------- the trainer


@dataclass
class DPOResult:
    """What a run produced: the policy folder and its final figures. ``stopped_by_budget``: a wall-time
    budget ended the run after ``steps`` steps, before its schedule's end (the policy is that step's)."""

    run_dir: Path
    policy_dir: Path
    steps: int
    train_seconds: float
    train: dict[str, float] = field(default_factory=dict)  # last step's train/* metrics
    val: dict[str, float] = field(default_factory=dict)  # last held-out evaluation (val/*)
    reference_seconds: float = 0.0  # computing the cached reference log-probs (once per run)
    stopped_by_budget: bool = False


def train_dpo(
    cfg: DPOConfig,
    rankings: Sequence[Ranking],
    out_dir: str | os.PathLike[str],
    *,
    val: Sequence[Ranking] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> DPOResult:
    """Train ``cfg.model`` (the SFT policy, also the reference) on ``rankings``; write ``out_dir``.

    ``val``: held-out rankings (default: ``cfg.val_fraction`` of the prompts, split off by
    prompt). ``resume`` continues from the newest checkpoint in ``out_dir`` exactly (weights,
    optimizer, schedule, RNG, data position, the cached reference log-probs); resuming a
    finished run returns it; ``overwrite`` replaces a DPO run in ``out_dir`` (both:
    :func:`~alignloop.train.run_folder.open_run`). ``on_step(step, metrics)`` is called after
    every step, its metrics carrying ``train_seconds`` (time in training steps only, for benchmarks).
    """
    out = Path(out_dir)
    rankings = list(rankings)
    if not rankings:
        raise AlignloopError("no rankings to train on", "give a rankings JSONL file with at least one line")
    if val is None:
        rankings, val = split_by_prompt(rankings, cfg.val_fraction, cfg.seed)
    val = list(val)
    data_fp = fingerprint(rankings) + fingerprint(val)
    folder = open_run(
        out, cfg, stage="DPO", resume=resume, overwrite=overwrite, outputs=OUTPUTS, finished_marker=FINISHED
    )
    if folder.finished:  # nothing left to run: the same run (same rankings), or an error
        return _finished(out, data_fp)
    ckpt = folder.checkpoint

    # 1. tokenise; the model placed (a replica per process, or FSDP2 shards) before the optimizer sees it
    acc = build_accelerator()
    precision = Precision(dpo_dtype(cfg), acc.device)
    main = acc.is_main_process
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    pad = pad_id(tokenizer)
    train_data = encode_rankings(tokenizer, rankings, cfg.max_length)
    val_data = encode_rankings(tokenizer, val, cfg.max_length)
    with quiet_hf():
        model = _build_model(cfg, ckpt / "model" if ckpt is not None else None)  # type: ignore[arg-type]
    if cfg.distributed.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, _ = place_model(model, acc, cfg.distributed.strategy, precision)
    steps_per_epoch = math.ceil(len(train_data) / cfg.prompts_per_step)
    total = cfg.epochs * steps_per_epoch
    # the optimizer on the placed parameters: under FSDP before any forward (the root module's
    # parameters stay unsharded after a forward without backward; the optimizer must hold the shards)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.adam_betas, cfg.adam_eps)
    scheduler = cosine_with_warmup(optimizer, total, warmup_steps(total, cfg.warmup_ratio), cfg.min_lr_ratio)

    # 2. reference log-probs: computed from the starting weights (the SFT policy) once, cached.
    #    Every process computes all of them (under FSDP each forward gathers the shards: a collective).
    cache = out / REFERENCE_CACHE
    if ckpt is not None:
        saved = torch.load(cache, map_location="cpu") if cache.exists() else None
        if saved is None or saved["data"] != data_fp:
            raise AlignloopError(
                f"cannot resume {out}: the rankings differ from the run's (or {REFERENCE_CACHE} is missing)",
                "resume with the same --data and --val files",
            )
        ref_train, ref_val, reference_seconds = saved["train"], saved["val"], saved["seconds"]
    else:
        plain = acc.unwrap_model(model)
        t0 = time.perf_counter()
        ref_train = reference_logprobs(plain, train_data, pad, cfg.micro_batch_completions, acc.device)
        reference_seconds = time.perf_counter() - t0  # the training rankings only: the cost of an epoch's reference
        ref_val = reference_logprobs(plain, val_data, pad, cfg.micro_batch_completions, acc.device)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"data": data_fp, "train": ref_train, "val": ref_val, "seconds": reference_seconds}, cache)
    model.train()

    start, train_seconds = 0, 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, scheduler=scheduler)
        start, train_seconds = state["step"], state["extra"]["train_seconds"]
        load_optimizer_state(model, optimizer, state["extra"].get("optimizer_state") or state["optimizer"])
    log = RunLog(out, cfg, resume_step=start if ckpt is not None else None, enabled=main)

    def save_model(plain: Any, path: Path) -> None:
        with quiet_hf():
            plain.save_pretrained(str(path))
            tokenizer.save_pretrained(str(path))

    def save(step: int) -> None:
        plain, opt_state = gathered_model(acc.unwrap_model(model)), optimizer_state(model, optimizer)  # collectives
        if main:
            extra = {"train_seconds": train_seconds, "optimizer_state": opt_state}
            save_checkpoint(
                out, step, partial(save_model, plain), scheduler=scheduler, keep=cfg.keep_checkpoints, extra=extra
            )
        acc.wait_for_everyone()

    def evaluate(step: int) -> dict[str, float]:
        if not val_data:
            return {}
        metrics = evaluate_dpo(acc.unwrap_model(model), val_data, ref_val, pad, cfg)  # every process: all of it
        log.log(step, metrics)
        return metrics

    # the starting point: all implicit rewards are 0, the KL estimate is 0
    last_val = evaluate(0) if start == 0 else {}
    last_train: dict[str, float] = {}
    orders: dict[int, list[int]] = {}
    done, stopped_by_budget = start, False
    # 3.-4. optimizer steps
    for step in track(range(start, total), "dpo", total=total - start, enabled=progress and main):
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: epoch_order(len(train_data), cfg.seed, epoch)}
        indices = step_indices(orders[epoch], pos, cfg.prompts_per_step, acc.num_processes)
        batch = [train_data[i] for i in rank_slice(indices, acc.process_index, acc.num_processes)]
        n_prompts = sum(train_data[i].has_pairs for i in indices)  # the step's prompts over every process

        t0 = time.perf_counter()
        tally = _train_step(model, optimizer, scheduler, acc, precision, batch, n_prompts, ref_train, pad, cfg)
        train_seconds += time.perf_counter() - t0
        done = step + 1
        last_train = tally.all_sum(acc).result("train")
        last_train |= {"lr": scheduler.get_last_lr()[0], "epoch": done / steps_per_epoch}
        log.log(done, last_train)
        if on_step is not None:
            on_step(done, last_train | {"train_seconds": train_seconds})
        end_of_epoch = pos + 1 == steps_per_epoch
        if end_of_epoch or (cfg.eval_every and done % cfg.eval_every == 0):
            last_val = evaluate(done) or last_val
        if done < total and agreed_budget_spent(acc):  # `alignloop compare`'s wall time: finish here
            stopped_by_budget = True
            break
        # The last step writes policy/ instead of a checkpoint (a full model with Adam state is
        # several times the policy's size); a finished run has nothing left to resume.
        if done < total and (end_of_epoch or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            save(done)

    # 5. the policy (gathered from the shards under FSDP: every process takes part)
    policy_dir = out / POLICY_SUBDIR
    plain = gathered_model(acc.unwrap_model(model))
    if main:
        export_model(plain, tokenizer, policy_dir, in_place=True)
        record = {"steps": done, "train_seconds": train_seconds, "train": last_train, "val": last_val}
        record |= {"reference_seconds": reference_seconds, "stopped_by_budget": stopped_by_budget}
        (out / FINISHED).write_text(json.dumps(record | {"data": data_fp}))
    log.close()
    acc.wait_for_everyone()
    return DPOResult(out, policy_dir, done, train_seconds, last_train, last_val, reference_seconds, stopped_by_budget)


def dpo_dtype(cfg: DPOConfig) -> str:
    """The compute precision: ``distributed.dtype``, or the older ``mixed_precision`` field when that is set."""
    if cfg.distributed.dtype != "fp32":
        return cfg.distributed.dtype
    return {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[cfg.mixed_precision]


def _finished(out: Path, data_fp: str) -> DPOResult:
    """The result of a run that already finished, after checking it was trained on the same rankings."""
    record = json.loads((out / FINISHED).read_text())
    if record["data"] != data_fp:
        raise AlignloopError(
            f"cannot resume {out}: the rankings differ from the finished run's", "resume with the same --data and --val"
        )
    figures = (record[k] for k in ("steps", "train_seconds", "train", "val", "reference_seconds"))
    # stopped_by_budget: absent from a run finished before DPO checked the budget
    return DPOResult(out, out / POLICY_SUBDIR, *figures, record.get("stopped_by_budget", False))


def _train_step(
    model, optimizer, scheduler, acc, precision: Precision, batch: list[EncodedRanking], n_prompts: int, ref, pad, cfg
) -> _Tally:
    """Steps 3-4 of the module docstring: micro-batched forwards, accumulated backward, update.

    ``n_prompts``: the step's prompts with a pair, over every process. Each process weighs a chunk
    by its prompts / (n_prompts / world): the gradient mean over processes (DDP, FSDP) is then the
    mean over the step's prompts, as on one process. Every pass runs a backward (DDP and FSDP
    synchronise in it), and under FSDP every process runs as many passes (each gathers the
    shards, :func:`~alignloop.train.distributed.equal_passes`)."""
    tally = _Tally()
    per_rank = max(1, n_prompts) / acc.num_processes
    optimizer.zero_grad(set_to_none=True)
    chunks = chunk_prompts(batch, cfg.micro_batch_completions)
    passes = equal_passes(len(chunks), model, acc.device)
    for i in range(passes):
        chunk, real = chunks[min(i, len(chunks) - 1)], i < len(chunks)
        with contextlib.nullcontext() if i == passes - 1 else acc.no_sync(model):
            loss, m, kl_sum = _chunk_loss(model, chunk, ref, pad, acc.device, cfg)
            precision.backward(acc, loss * (int(m["n_prompts"]) / per_rank if real else 0.0))
        if real:
            tally.add(loss, m, kl_sum, sum(len(r.items) for r in chunk))
    precision.step(optimizer, model.parameters(), cfg.max_grad_norm)  # unscale (fp16), clip, step
    scheduler.step()
    return tally
