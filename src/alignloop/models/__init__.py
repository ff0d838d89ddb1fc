"""Model registry and loading: packaged defaults, local folders, hub ids; prompt formatting."""

from alignloop.models.loading import (
    disable_dropout,
    end_of_response_token,
    format_prompt,
    load_causal_lm,
    load_policy,
    load_tokenizer,
    torch_dtype,
)
from alignloop.models.registry import MINILM, REGISTRY, SMOLLM2, TINY, cache_dir, resolve, tiny_config

__all__ = [
    "MINILM",
    "REGISTRY",
    "SMOLLM2",
    "TINY",
    "cache_dir",
    "disable_dropout",
    "end_of_response_token",
    "format_prompt",
    "load_causal_lm",
    "load_policy",
    "load_tokenizer",
    "resolve",
    "tiny_config",
    "torch_dtype",
]
