"""The policy SFT trains and the folders it saves (full fine-tuning or LoRA, SPEC section 4).

Training keeps residual dropout (the paper's 0.2) and, with ``lora_r > 0``, trains LoRA adapters
only; what leaves a run is always a plain Hugging Face folder with the adapters merged into the
weights and dropout off in its config, so every later stage loads it without peft.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from alignloop.config import SFTConfig
from alignloop.models.loading import disable_dropout, load_causal_lm, quiet_hf
from alignloop.models.lora import lora_targets


def sft_dtype(cfg: SFTConfig) -> str:
    """The compute precision: ``distributed.dtype``, or the older ``mixed_precision`` field when that is set."""
    if cfg.distributed.dtype != "fp32":
        return cfg.distributed.dtype
    return {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[cfg.mixed_precision]


def build_policy(cfg: SFTConfig, checkpoint_model: Path | None) -> Any:
    """Base model with dropout, LoRA-wrapped when ``lora_r > 0``; weights from a checkpoint when resuming."""
    if cfg.lora_r <= 0:
        return load_causal_lm(str(checkpoint_model or cfg.model.name), cfg.model.dtype, cfg.dropout)
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.dropout)
    if checkpoint_model is not None:
        return PeftModel.from_pretrained(base, str(checkpoint_model), is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(cfg.lora_target_modules), task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(base, lora)


def export_model(model: Any, tokenizer: Any, out: Path, *, in_place: bool = False) -> None:
    """Save a plain HF folder (LoRA merged into the weights, dropout 0 in its config) with tokenizer.
    ``in_place``: merge and switch dropout off in ``model`` itself instead of a copy (when training
    is over: no second copy of the weights in memory). Written to ``OUT.tmp`` and renamed, so a
    run killed mid-save never leaves a half-written model under the final name."""
    with quiet_hf():
        plain = model if in_place else copy.deepcopy(model)
        plain.__dict__.pop("forward", None)  # an autocast wrapper bound to the original (Precision.wrap)
        if hasattr(plain, "merge_and_unload"):
            plain = plain.merge_and_unload()
        disable_dropout(plain)
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)


def link_folder(src: Path, dst: Path, skip: set[str]) -> None:
    """``dst`` as a copy of the flat folder ``src`` made of hard links (a copy where links fail)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)
