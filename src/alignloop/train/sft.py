"""Supervised fine-tuning on demonstrations (paper section 3.5, SPEC section 4).

    loss(phi) = - sum_t log pi_phi(y_t | x, y_<t) / (number of response tokens)

over the response tokens y of labeler demonstrations (x, y) (:mod:`alignloop.train.sft_data`).
The paper trains 16 epochs with cosine learning-rate decay and residual dropout 0.2, and observes
that validation loss overfits after one epoch while the RM score of samples keeps rising: so when
a :class:`~alignloop.models.scoring.Scorer` is given, the kept ("best") model is the epoch with the
highest mean score on validation prompts, and otherwise the one with the lowest validation loss
(:mod:`alignloop.train.sft_eval`).

Run folder (opened by :func:`~alignloop.train.run_folder.open_run`: a fresh run needs an empty
folder, ``resume`` a checkpoint or a finished run and the same config)::

    RUN_DIR/config.yaml  metrics.jsonl  tb/     resolved config and metrics (see runlog)
    RUN_DIR/checkpoints/step-NNNNNN/           exact-resume checkpoints (model, optimizer, RNG, data position)
    RUN_DIR/samples/step-NNNNNN.jsonl          validation samples and their scores at each evaluation
    RUN_DIR/best/  RUN_DIR/final/              HF folders with tokenizer (LoRA merged), dropout off
    RUN_DIR/finished.json                      written last: what a resume of a finished run returns

Training reads top to bottom: 1. tokenize, 2. build model/optimizer/schedule, 3. resume,
4. per optimizer step: gather this rank's micro-batches, accumulate gradients, clip, step,
5. at each epoch end: evaluate, keep the best, checkpoint, 6. save final.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from alignloop.config import SFTConfig
from alignloop.data.records import Demonstration
from alignloop.errors import AlignloopError
from alignloop.models.loading import load_tokenizer, quiet_hf, set_default_system_prompt
from alignloop.models.padding import pad_token_id
from alignloop.models.scoring import Scorer
from alignloop.train.checkpoint import (
    agreed_budget_spent,
    interrupt_point,
    load_checkpoint,
    save_checkpoint,
    stop_requested,
)
from alignloop.train.distributed import (
    Precision,
    build_accelerator,
    enable_gradient_checkpointing,
    epoch_order,
    gathered_model,
    load_optimizer_state,
    optimizer_state,
    place_model,
    rank_seed,
    rank_slice,
    seed_everything,
)
from alignloop.train.distributed import step_indices as global_step_indices
from alignloop.train.run_folder import open_run
from alignloop.train.runlog import RunLog, track
from alignloop.train.schedule import build_optimizer, cosine_with_warmup, warmup_steps
from alignloop.train.sft_data import (
    IGNORE,
    SFTExample,
    build_example,
    collate,
    fingerprint,
    n_response_tokens,
    response_logits,
    response_only_loss,
)
from alignloop.train.sft_eval import sample_scores, validation_loss
from alignloop.train.sft_model import build_policy, export_model, link_folder, sft_dtype

# Names other modules import from here (DPO builds on SFT's rows and model; kept until they import
# from sft_data / sft_model directly).
_build_model = build_policy
__all__ = [
    "IGNORE", "SFTExample", "SFTResult", "best_policy_dir", "build_example", "collate", "export_model",
    "quiet_hf", "response_logits", "response_only_loss", "sft_dtype", "train_sft",
]  # fmt: skip

log = logging.getLogger(__name__)
BEST_INFO = "alignloop_sft.json"
FINISHED = "finished.json"  # written when a run completes: what resume of a finished run checks
#: What an SFT run writes besides the common layout (what ``overwrite`` may delete).
OUTPUTS = ("samples", "best", "best.tmp", "final", "final.tmp", FINISHED)


# ---------------------------------------------------------------- results


@dataclass
class SFTResult:
    """Where the trained policy is. ``best_dir`` is the kept model (``final_dir`` when there was no
    validation set); ``completed`` is False when the run stopped early at ``stop_at_step``."""

    run_dir: Path
    final_dir: Path | None
    best_dir: Path | None
    steps: int
    completed: bool = True
    best_step: int | None = None
    best_metric: str | None = None
    best_value: float | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)


def best_policy_dir(run_dir: str | Path) -> Path:
    """The kept SFT model of a finished run: ``best/`` when validation chose one, else ``final/``."""
    run = Path(run_dir)
    for name in ("best", "final"):
        if (run / name / "config.json").exists():
            return run / name
    raise AlignloopError(f"{run} holds no finished SFT model (no best/ or final/)", "run `alignloop sft` first")


def _finished(run: Path, data_fingerprint: str) -> SFTResult:
    """The result of a run that already finished, after checking it was trained on the same data
    (:func:`open_run` has checked the config)."""
    record = json.loads((run / FINISHED).read_text())
    if record["data"] != data_fingerprint:
        raise AlignloopError(
            f"cannot resume {run}: the training demonstrations differ from the finished run's",
            "resume with the same --data file",
        )
    return _finished_result(run, record)


def _finished_result(run: Path, record: dict[str, Any]) -> SFTResult:
    """A finished run's result from its record (what ``finished.json`` holds)."""
    best = record["best"]
    chosen = best["step"] is not None
    return SFTResult(
        run,
        run / "final",
        run / "best" if chosen else run / "final",
        record["steps"],
        best_step=best["step"],
        best_metric=record["metric"] if chosen else None,
        best_value=best["value"],
        evals=record["evals"],
    )


# ---------------------------------------------------------------- the trainer


def train_sft(
    cfg: SFTConfig,
    train: Sequence[Demonstration],
    val: Sequence[Demonstration] | None,
    run_dir: str | Path,
    *,
    scorer: Scorer | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep: Iterable[str] = (),
    stop_at_step: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    ends: Sequence[bool] | None = None,
) -> SFTResult:
    """Fine-tune ``cfg.model`` on ``train`` demonstrations; see the module docstring for the folder.

    ``resume`` continues from the newest checkpoint in ``run_dir`` (exactly: same data position,
    optimizer, schedule and RNG) or returns a finished run's result; ``overwrite`` replaces an SFT
    run in ``run_dir``; ``keep``: entries of ``run_dir`` that belong to the caller (see
    :func:`~alignloop.train.run_folder.open_run`). ``stop_at_step`` ends the run after that optimizer step with a
    checkpoint written, as an interruption would; ``on_step(step, metrics)`` is called after
    every optimizer step (and its checkpoint, if any). ``ends[i] = False`` trains demonstration
    i without a final EOS (rejection sampling on responses that hit the length limit).
    """
    run = Path(run_dir)
    if not train:
        raise AlignloopError("no training demonstrations", "give a non-empty demonstrations file")
    ends = list(ends) if ends is not None else [True] * len(train)
    if len(ends) != len(train):
        raise ValueError(f"ends: {len(ends)} flags for {len(train)} demonstrations")
    folder = open_run(
        run, cfg, stage="SFT", resume=resume, overwrite=overwrite, outputs=OUTPUTS, keep=keep, finished_marker=FINISHED
    )
    if folder.finished:  # nothing left to run: the same run (same data), or an error
        return _finished(run, fingerprint(train, ends))
    ckpt = folder.checkpoint

    # 1. tokenize
    acc = build_accelerator()
    main = acc.is_main_process
    dist_cfg = cfg.distributed
    precision = Precision(sft_dtype(cfg), acc.device)
    tokenizer = load_tokenizer(cfg.model.name)
    if cfg.system_prompt is not None:  # saved with every model of the run, so later stages format alike
        set_default_system_prompt(tokenizer, cfg.system_prompt)
    pad_id = pad_token_id(tokenizer)
    train_ex = [
        build_example(tokenizer, d.prompt, d.completion, cfg.max_length, e) for d, e in zip(train, ends, strict=True)
    ]
    val_ex = [build_example(tokenizer, d.prompt, d.completion, cfg.max_length) for d in (val or [])]
    n_trunc = sum(e.truncated for e in train_ex)
    if n_trunc and main:
        log.warning(
            "%d of %d demonstrations exceed max_length=%d and were truncated", n_trunc, len(train_ex), cfg.max_length
        )
    val_prompts = list(dict.fromkeys(d.prompt for d in (val or [])))
    val_prompts = val_prompts[: cfg.eval_prompts] if cfg.eval_prompts else val_prompts

    # 2. model, optimizer, schedule (derived sizes computed once)
    world = acc.num_processes
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(train_ex) / global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    seed_everything(rank_seed(cfg.seed, acc.process_index))
    with quiet_hf():
        model = build_policy(cfg, ckpt / "model" if ckpt is not None else None)
    if dist_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, _ = place_model(model, acc, dist_cfg.strategy, precision)  # sharded before the optimizer sees it
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.adam_betas, cfg.adam_eps)
    scheduler = cosine_with_warmup(
        optimizer, total_steps, warmup_steps(total_steps, cfg.warmup_ratio), cfg.min_lr_ratio
    )

    # 3. resume: optimizer, schedule, RNG, data position, best-so-far
    start_step, best = 0, {"step": None, "value": None}
    evals: list[dict[str, Any]] = []
    if ckpt is not None:
        state = load_checkpoint(ckpt, scheduler=scheduler)
        extra = state["extra"]
        load_optimizer_state(model, optimizer, extra.get("optimizer_state") or state["optimizer"])
        if extra.get("data") != fingerprint(train, ends):
            raise AlignloopError(
                f"cannot resume {run}: the training demonstrations differ from the checkpoint's",
                "resume with the same --data file",
            )
        start_step, best, evals = state["step"], extra["best"], extra["evals"]
        if main:
            log.info("resuming %s from step %d", run, start_step)
    runlog = RunLog(run, cfg, resume_step=start_step if ckpt is not None else None, enabled=main)
    metric_name = "val/score" if scorer is not None else "val/loss"
    sign = 1.0 if scorer is not None else -1.0  # higher score is better, lower loss is better

    def evaluate(step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"val/loss": validation_loss(model, val_ex, cfg.batch_size, pad_id, acc)}
        if scorer is not None and val_prompts:
            row["val/score"], samples = sample_scores(model, tokenizer, val_prompts, scorer, cfg, acc)
            if main:
                from alignloop.data.jsonl import write_jsonl

                write_jsonl(run / "samples" / f"step-{step:06d}.jsonl", samples)
        row["time/eval_s"] = time.perf_counter() - t0
        return row

    def save_model(plain: Any, path: Path) -> None:
        with quiet_hf():
            plain.save_pretrained(str(path))
            tokenizer.save_pretrained(str(path))

    if start_step == 0 and cfg.eval_at_start and val_ex:
        runlog.log(0, {**evaluate(0), "epoch": 0})

    # 4. optimizer steps
    result = SFTResult(run, None, None, start_step, completed=False)
    order_epoch, order = -1, []
    epoch_t0 = time.perf_counter()
    steps = range(start_step, total_steps)
    for step in track(steps, "sft", total=len(steps), enabled=main):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(train_ex), cfg.seed, epoch)
        step_rows = global_step_indices(order, in_epoch, global_batch, world)
        mine = rank_slice(step_rows, acc.process_index, world)
        micro = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
        n_tokens = max(1, sum(n_response_tokens(train_ex[i]) for i in mine))
        # Each rank divides by the step's GLOBAL token count / world: the gradient mean over ranks
        # (DDP, FSDP) is then the gradient of the mean over every token of the step, as on one process.
        per_rank = max(1, sum(n_response_tokens(train_ex[i]) for i in step_rows)) / world
        model.train()
        loss_sum = 0.0
        for j, idx in enumerate(micro):
            batch = {k: v.to(acc.device) for k, v in collate([train_ex[i] for i in idx], pad_id).items()}
            sync = j == len(micro) - 1
            with nullcontext() if sync else acc.no_sync(model):
                nll, _ = response_only_loss(*response_logits(model, batch))
                precision.backward(acc, nll / per_rank)
            loss_sum += nll.detach()
        loss_sum = float(loss_sum)  # one device sync per step, not one per micro-batch
        lr = scheduler.get_last_lr()[0]
        grad_norm = precision.step(optimizer, model.parameters(), cfg.max_grad_norm)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        loss = torch.tensor([loss_sum, float(n_tokens)], dtype=torch.float64, device=acc.device)
        loss = acc.reduce(loss, "sum") if world > 1 else loss
        row: dict[str, Any] = {"train/loss": float(loss[0] / loss[1]), "train/lr": lr, "epoch": done / steps_per_epoch}
        if grad_norm is not None:
            row["train/grad_norm"] = float(grad_norm)

        # 5. epoch end: evaluate, keep the best, checkpoint
        epoch_end = done % steps_per_epoch == 0
        if epoch_end:
            row["time/epoch_s"] = time.perf_counter() - epoch_t0
            if val_ex:
                ev = evaluate(done)
                row.update(ev)
                evals.append({"step": done, **{k: v for k, v in ev.items() if k.startswith("val/")}})
                value = ev.get(metric_name)
                if value is not None and (best["value"] is None or sign * value > sign * best["value"]):
                    best = {"step": done, "value": value}
                    plain = gathered_model(acc.unwrap_model(model))  # every process: a collective under FSDP
                    if main:
                        export_model(plain, tokenizer, run / "best")
                        (run / "best" / BEST_INFO).write_text(
                            json.dumps(
                                {"step": done, "epoch": done // steps_per_epoch, "metric": metric_name, "value": value}
                            )
                        )
                    acc.wait_for_everyone()
            epoch_t0 = time.perf_counter()
        runlog.log(done, row)
        if done < total_steps and agreed_budget_spent(acc):  # `alignloop compare`'s wall time: finish here
            total_steps = done
            if on_step is not None:
                on_step(done, row)
            result.steps = done
            break
        stopping = (stop_at_step is not None and done >= stop_at_step) or stop_requested()
        # The last step writes final/ instead: a finished run has nothing to resume, and a 135M
        # model's checkpoint with Adam state is 1.6 GB of writing.
        periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
        if done < total_steps and (epoch_end or stopping or periodic):
            plain, opt_state = gathered_model(acc.unwrap_model(model)), optimizer_state(model, optimizer)
            if main:
                extra = {"data": fingerprint(train, ends), "best": best, "evals": evals, "optimizer_state": opt_state}
                save_checkpoint(
                    run, done, partial(save_model, plain), scheduler=scheduler, keep=cfg.keep_checkpoints, extra=extra
                )
            acc.wait_for_everyone()
        if on_step is not None:
            on_step(done, row)
        result.steps = done
        if stopping and done < total_steps:
            runlog.close()
            interrupt_point(done, run)  # Ctrl-C / SIGTERM: the checkpoint above is written
            return result

    # 6. final model; the best one is final when no validation set chose another. When the last
    #    step was the best, best/ already holds these weights: final/ links its files.
    reuse_best = best["step"] == total_steps  # the same on every process (the collective below depends on it)
    plain = None if reuse_best else gathered_model(acc.unwrap_model(model))
    if main:
        if reuse_best:
            link_folder(run / "best", run / "final", skip={BEST_INFO})
        else:
            export_model(plain, tokenizer, run / "final")
    acc.wait_for_everyone()
    record = {"steps": total_steps, "data": fingerprint(train, ends), "best": best, "metric": metric_name}
    record["evals"] = evals
    if main:
        (run / FINISHED).write_text(json.dumps(record))
    runlog.close()
    return _finished_result(run, record)
