"""Supervised fine-tuning on demonstrations (paper section 3.5, SPEC section 4).

    loss(phi) = - sum_t log pi_phi(y_t | x, y_<t) / (number of response tokens)

over the response tokens y of labeler demonstrations (x, y); prompt tokens and padding carry
label -100 and add nothing. The paper trains 16 epochs with cosine learning-rate decay and
residual dropout 0.2, and observes that validation loss overfits after one epoch while the RM
score of samples keeps rising: so when a :class:`~alignloop.models.scoring.Scorer` is given,
the kept ("best") model is the epoch with the highest mean score on validation prompts, and
otherwise the one with the lowest validation loss.

Run folder::

    RUN_DIR/config.yaml  metrics.jsonl  tb/     resolved config and metrics (see runlog)
    RUN_DIR/checkpoints/step-NNNNNN/           exact-resume checkpoints (model, optimizer, RNG, data position)
    RUN_DIR/samples/step-NNNNNN.jsonl          validation samples and their scores at each evaluation
    RUN_DIR/best/  RUN_DIR/final/              HF folders with tokenizer (LoRA merged), dropout off

Training reads top to bottom: 1. tokenize, 2. build model/optimizer/schedule, 3. resume,
4. per optimizer step: gather this rank's micro-batches, accumulate gradients, clip, step,
5. at each epoch end: evaluate, keep the best, checkpoint, 6. save final.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alignloop.config import SFTConfig, config_to_dict, load_yaml
from alignloop.data.records import Demonstration
from alignloop.errors import AlignloopError
from alignloop.models.generation import forward_last_logits, generate, query_token_ids
from alignloop.models.loading import disable_dropout, load_causal_lm, load_tokenizer, set_default_system_prompt
from alignloop.models.scoring import Scorer, score_all
from alignloop.train.checkpoint import (
    budget_active,
    budget_spent,
    interrupt_point,
    latest_checkpoint,
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
    is_sharded,
    load_optimizer_state,
    optimizer_state,
    place_model,
    rank_seed,
    rank_slice,
    seed_everything,
)
from alignloop.train.distributed import step_indices as global_step_indices
from alignloop.train.runlog import RunLog, track
from alignloop.train.schedule import build_optimizer, cosine_with_warmup, warmup_steps

log = logging.getLogger(__name__)
IGNORE = -100
BEST_INFO = "alignloop_sft.json"
FINISHED = "finished.json"  # written when a run completes: what resume of a finished run checks


# ---------------------------------------------------------------- 1. demonstrations -> token rows


@dataclass
class SFTExample:
    """One demonstration as tokens: ``labels`` is -100 on the prompt, the response ids after it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def build_example(tokenizer: Any, prompt: str, completion: str, max_length: int, ends: bool = True) -> SFTExample:
    """Chat-formatted prompt (exactly the query generation uses) + completion + EOS, labels on the
    response only. ``ends=False`` leaves EOS out (a policy sample cut off at max_new_tokens: the
    model should not learn to stop there). Over ``max_length``, the response keeps at least half
    the budget and the prompt loses its oldest tokens first (its end, the generation cue, matters most)."""
    query = query_token_ids(tokenizer, prompt)
    response = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ends else [])
    truncated = len(query) + len(response) > max_length
    if truncated:
        response = response[: max(max_length - len(query), max_length // 2)]
        query = query[len(query) - (max_length - len(response)) :]
    return SFTExample(query + response, [IGNORE] * len(query) + response, truncated)


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions 0.. for every row, as the model's default position ids assume)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_only_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(y_t | ...) over response tokens, number of response tokens).

    ``logits[:, t]`` predicts token ``t + 1``, so labels are shifted left by one; positions with
    label -100 (prompt, padding) are ignored. The caller divides by the token count of the whole
    optimizer step, so micro-batches of different lengths weigh every token equally.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, (shift_labels != IGNORE).sum()


def response_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over the window that holds every response token of the batch.

    The vocabulary projection is the costliest part of a small model's step; prompts (the chat
    template's system text included) need no logits, so only positions from the earliest response
    start onward are projected (``logits_to_keep``). The window's first label is a prompt token,
    so :func:`response_only_loss` sees every response token exactly once.
    """
    labels = batch["labels"]
    is_response = (labels != IGNORE).any(0).nonzero()
    first = int(is_response[0]) if len(is_response) else labels.shape[1] - 1
    keep = labels.shape[1] - max(0, first - 1)
    logits = forward_last_logits(model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits, labels[:, -keep:]


def _n_response_tokens(example: SFTExample) -> int:
    return sum(1 for x in example.labels[1:] if x != IGNORE)


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


# ---------------------------------------------------------------- model helpers


def sft_dtype(cfg: SFTConfig) -> str:
    """The compute precision: ``distributed.dtype``, or the older ``mixed_precision`` field when that is set."""
    if cfg.distributed.dtype != "fp32":
        return cfg.distributed.dtype
    return {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[cfg.mixed_precision]


@contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' per-file load/save progress bars (the run has its own progress bar)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _build_model(cfg: SFTConfig, checkpoint_model: Path | None) -> Any:
    """Base model with dropout, LoRA-wrapped when ``lora_r > 0``; weights from a checkpoint when resuming."""
    if cfg.lora_r <= 0:
        return load_causal_lm(str(checkpoint_model or cfg.model.name), cfg.model.dtype, cfg.dropout)
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.dropout)
    if checkpoint_model is not None:
        return PeftModel.from_pretrained(base, str(checkpoint_model), is_trainable=True)
    targets: Any = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(base, lora)


def export_model(model: Any, tokenizer: Any, out: Path, *, in_place: bool = False) -> None:
    """Save a plain HF folder (LoRA merged into the weights, dropout 0 in its config) with tokenizer.
    ``in_place``: merge and switch dropout off in ``model`` itself instead of a copy (when training
    is over: no second copy of the weights in memory)."""
    with quiet_hf():
        _export(model, tokenizer, out, in_place)


def _export(model: Any, tokenizer: Any, out: Path, in_place: bool = False) -> None:
    plain = model if in_place else copy.deepcopy(model)
    plain.__dict__.pop("forward", None)  # an autocast wrapper bound to the original (Precision.wrap)
    if hasattr(plain, "merge_and_unload"):
        plain = plain.merge_and_unload()
    disable_dropout(plain)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)


def _finished(run: Path, cfg: SFTConfig, fingerprint: str) -> SFTResult:
    """The result of a run that already finished, after checking it is the run asked for."""
    _check_resumable(run, cfg)
    record = json.loads((run / FINISHED).read_text())
    if record["data"] != fingerprint:
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


def _link_folder(src: Path, dst: Path, skip: set[str]) -> None:
    """``dst`` as a copy of the flat folder ``src`` made of hard links (a copy where links fail)."""
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def _fingerprint(demos: Sequence[Demonstration], ends: Sequence[bool]) -> str:
    h = hashlib.sha1()
    for d, e in zip(demos, ends, strict=True):
        h.update(json.dumps([d.prompt, d.completion, e]).encode())
    return h.hexdigest()[:16]


def _agreed_budget_spent(acc: Any) -> bool:
    """:func:`~alignloop.train.checkpoint.budget_spent`, agreed by every process (any one's clock decides)."""
    if not budget_active():
        return False
    spent = torch.tensor(float(budget_spent()), device=acc.device)
    return bool((acc.reduce(spent, "sum") if acc.num_processes > 1 else spent) > 0)


def _check_resumable(run_dir: Path, cfg: SFTConfig) -> None:
    """A resume must continue the same run: refuse a changed config (its schedule would differ)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved, now = load_yaml(saved_path), config_to_dict(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise AlignloopError(
            f"cannot resume {run_dir}: the config differs from the run's config.yaml in {', '.join(changed)}",
            "resume with the same settings, or start a new run in another --out folder",
        )


# ---------------------------------------------------------------- 5. evaluation


@torch.no_grad()
def validation_loss(model: Any, examples: Sequence[SFTExample], batch_size: int, pad_id: int, accelerator: Any):
    """Mean response-token NLL over ``examples`` (sharded across ranks, dropout off)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    mine = rank_slice(range(len(examples)), accelerator.process_index, accelerator.num_processes)
    n_batches = math.ceil(len(mine) / batch_size)
    if is_sharded(model):  # every process must run as many forwards (each gathers the shards)
        n_batches = math.ceil(math.ceil(len(examples) / accelerator.num_processes) / batch_size)
    for i in range(0, n_batches * batch_size, batch_size):
        rows = mine[i : i + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[j] for j in rows or [0]], pad_id).items()}
        nll, n = response_only_loss(*response_logits(model, batch))
        if rows:
            total += torch.stack([nll.double(), n.double()])
    model.train(was_training)
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    return float(total[0] / total[1].clamp(min=1))


def sample_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], scorer: Scorer, cfg: SFTConfig, accelerator: Any
) -> tuple[float, list[dict[str, Any]]]:
    """Mean scorer score of samples on validation prompts (same seed at every evaluation, so epochs
    are compared on the same random stream), plus this rank's samples for the run folder."""
    mine = rank_slice(list(prompts), accelerator.process_index, accelerator.num_processes)
    model = accelerator.unwrap_model(model)
    share = math.ceil(len(prompts) / accelerator.num_processes) if is_sharded(model) else len(mine)
    filler = [prompts[0]] * (share - len(mine))  # equal sampling work per process under FSDP, then dropped
    gen = generate(model, tokenizer, mine + filler, cfg.generation, seed=rank_seed(cfg.seed, accelerator.process_index))
    scores = score_all(scorer, mine, gen.texts[: len(mine)]) if mine else []
    total = torch.tensor([sum(scores), len(scores)], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    samples = [{"prompt": p, "completion": c, "score": s} for p, c, s in zip(mine, gen.texts, scores, strict=False)]
    return float(total[0] / total[1].clamp(min=1)), samples


# ---------------------------------------------------------------- the trainer


def train_sft(
    cfg: SFTConfig,
    train: Sequence[Demonstration],
    val: Sequence[Demonstration] | None,
    run_dir: str | Path,
    *,
    scorer: Scorer | None = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    ends: Sequence[bool] | None = None,
) -> SFTResult:
    """Fine-tune ``cfg.model`` on ``train`` demonstrations; see the module docstring for the folder.

    ``resume`` continues from the newest checkpoint in ``run_dir`` (exactly: same data position,
    optimizer, schedule and RNG); ``stop_at_step`` ends the run after that optimizer step with a
    checkpoint written, as an interruption would; ``on_step(step, metrics)`` is called after
    every optimizer step (and its checkpoint, if any). ``ends[i] = False`` trains demonstration
    i without a final EOS (rejection sampling on responses that hit the length limit).
    """
    run = Path(run_dir)
    if not train:
        raise AlignloopError("no training demonstrations", "give a non-empty demonstrations file")
    ckpt = latest_checkpoint(run) if resume else None
    if not resume and (latest_checkpoint(run) is not None or (run / "final").exists()):
        raise AlignloopError(
            f"{run} already holds an SFT run", "pass --resume to continue it, or choose another --out folder"
        )
    ends = list(ends) if ends is not None else [True] * len(train)
    if len(ends) != len(train):
        raise ValueError(f"ends: {len(ends)} flags for {len(train)} demonstrations")
    if ckpt is not None:
        _check_resumable(run, cfg)
    elif resume and (run / FINISHED).exists():  # nothing left to run: the same run, or an error
        return _finished(run, cfg, _fingerprint(train, ends))

    # 1. tokenize
    acc = build_accelerator()
    main = acc.is_main_process
    dist_cfg = cfg.distributed
    precision = Precision(sft_dtype(cfg), acc.device)
    tokenizer = load_tokenizer(cfg.model.name)
    if cfg.system_prompt is not None:  # saved with every model of the run, so later stages format alike
        set_default_system_prompt(tokenizer, cfg.system_prompt)
    pad_id = tokenizer.pad_token_id
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
        model = _build_model(cfg, ckpt / "model" if ckpt is not None else None)
    if dist_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, _ = place_model(model, acc, dist_cfg.strategy, precision)  # sharded before the optimizer sees it
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
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
        if extra.get("data") != _fingerprint(train, ends):
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
        n_tokens = max(1, sum(_n_response_tokens(train_ex[i]) for i in mine))
        # Each rank divides by the step's GLOBAL token count / world: the gradient mean over ranks
        # (DDP, FSDP) is then the gradient of the mean over every token of the step, as on one process.
        per_rank = max(1, sum(_n_response_tokens(train_ex[i]) for i in step_rows)) / world
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
        if done < total_steps and _agreed_budget_spent(acc):  # `alignloop compare`'s wall time: finish here
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
                extra = {"data": _fingerprint(train, ends), "best": best, "evals": evals, "optimizer_state": opt_state}
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
            _link_folder(run / "best", run / "final", skip={BEST_INFO})
        else:
            export_model(plain, tokenizer, run / "final")
    acc.wait_for_everyone()
    record = {"steps": total_steps, "data": _fingerprint(train, ends), "best": best, "metric": metric_name}
    record["evals"] = evals
    if main:
        (run / FINISHED).write_text(json.dumps(record))
    runlog.close()
    return _finished_result(run, record)
