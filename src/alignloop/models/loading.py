"""Loading policies, references and backbones, and formatting prompts with the chat template."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from alignloop.config import MODEL_DTYPES
from alignloop.errors import AlignloopError
from alignloop.models.registry import _set_distinct_pad, resolve

DTYPES = MODEL_DTYPES


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise AlignloopError(f"unknown dtype {name!r}", f"use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _offline_hint(name: str) -> str:
    return f"is '{name}' downloaded? without network only registry names and local folders load"


def load_tokenizer(name: str, padding_side: str = "left"):
    """The model's tokenizer, left-padded by default (queries are left-padded for generation),
    with a pad token distinct from EOS where the vocabulary allows."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise AlignloopError(f"cannot load tokenizer for '{name}' from {path}: {err}", _offline_hint(name)) from None
    _set_distinct_pad(tok)
    tok.padding_side = padding_side
    return tok


def _set_dropout(config: Any, dropout: float | None) -> None:
    if dropout is None:
        return
    for key in (
        "attention_dropout",
        "hidden_dropout",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "dropout",
    ):
        if hasattr(config, key):
            setattr(config, key, dropout)


def load_causal_lm(name: str, dtype: str = "float32", dropout: float | None = None):
    """A causal LM (policy or reference) from a registry name, local folder or hub id.

    ``dropout`` sets the model's attention/residual dropout where its config has such fields
    (SFT uses it; RL turns it off by calling ``model.eval()``-style :func:`disable_dropout`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path)
        _set_dropout(config, dropout)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype(dtype))
    except OSError as err:
        raise AlignloopError(f"cannot load model '{name}' from {path}: {err}", _offline_hint(name)) from None
    return model


def load_policy(name: str, dtype: str = "float32", dropout: float | None = None):
    """(model, tokenizer) for a policy; the tokenizer is left-padded."""
    return load_causal_lm(name, dtype, dropout), load_tokenizer(name)


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 (RL must not sample dropout masks: SPEC section 6)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    cfg = getattr(model, "config", None)
    if cfg is not None:
        _set_dropout(cfg, 0.0)


def format_prompt(tokenizer: Any, text: str) -> str:
    """The prompt as the model expects it: the chat template with a generation prompt when the
    tokenizer has one, else the plain text followed by a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text + "\n"


def set_default_system_prompt(tokenizer: Any, text: str) -> None:
    """Make the chat template use ``text`` as the system message when a conversation has none.

    SmolLM2's template otherwise injects a 16-token default system message into every query;
    on a CPU every token of every rollout, reference and training pass costs time, and the
    tokenizer saved with the policy carries the change to every later stage."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise AlignloopError("system_prompt: this tokenizer has no chat template to set it in")
    marker = "{#- alignloop default system prompt -#}"
    if template.startswith(marker):  # set before: replace, do not stack
        template = template.split("{#- end -#}", 1)[1]
    content = json.dumps(text)  # a JSON string is a valid Jinja string literal
    prefix = (
        f"{marker}{{%- if messages and messages[0]['role'] != 'system' -%}}"
        f"{{%- set messages = [{{'role': 'system', 'content': {content}}}] + messages -%}}"
        "{%- endif -%}{#- end -#}"
    )
    tokenizer.chat_template = prefix + template


def end_of_response_token(tokenizer: Any) -> str:
    """The token that ends a response: EOS, or [SEP] for encoders without one."""
    return tokenizer.eos_token or tokenizer.sep_token or ""


@contextlib.contextmanager
def quiet_hf(*, warnings: bool = False) -> Iterator[None]:
    """Silence transformers' per-file load/save progress bars (a run has its own progress bar);
    ``warnings=True`` also hides its warnings (loading a trunk out of a causal-LM checkpoint warns
    about the dropped LM head, which is intended). Both are restored on exit."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if warnings:
            hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
