"""Policies under evaluation: a name, where the weights are, and sampling through the one shared sampler.

Evaluation compares named policies ("sft", "ppo", "ppo-ptx") against a baseline. Each is a
registry name or a model folder; it is loaded on demand and released after use, so comparing
several 135M policies on a laptop never holds more than one (plus the reference) in memory.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignloop.config import GenerationConfig
from alignloop.errors import AlignloopError
from alignloop.evaluate.likelihood import CausalLMLikelihood

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class PolicySpec:
    """A policy to evaluate: the name shown in results and the model it loads."""

    name: str
    path: str


def parse_policy(spec: str, default_name: str | None = None) -> PolicySpec:
    """``NAME=PATH`` or a bare ``PATH`` (named ``default_name`` or after the folder)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = default_name or Path(spec.rstrip("/")).name or spec
    name, path = name.strip(), path.strip()
    if not path:
        raise AlignloopError(f"policy {spec!r} has no path", "write NAME=PATH, e.g. ppo=runs/demo/ppo/final")
    if not _NAME.match(name):
        raise AlignloopError(
            f"policy name {name!r} is not a plain name", "use letters, digits, '.', '_', '-' or '+' (e.g. ppo-ptx)"
        )
    return PolicySpec(name, path)


def unique_names(specs: Sequence[PolicySpec]) -> None:
    """Two policies with one name would overwrite each other's results."""
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise AlignloopError(f"two policies are named {s.name!r}", "give each --policy a distinct NAME=")
        seen.add(s.name)


class LoadedPolicy:
    """A policy's model and tokenizer, ready to sample and to score likelihoods."""

    def __init__(self, spec: PolicySpec, model: Any, tokenizer: Any) -> None:
        self.spec, self.model, self.tokenizer = spec, model, tokenizer

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def load(cls, spec: PolicySpec, dtype: str = "float32") -> LoadedPolicy:
        from alignloop.models.loading import load_policy

        model, tok = load_policy(spec.path, dtype)
        model.eval()
        return cls(spec, model, tok)

    def sample(
        self, prompts: Sequence[str], config: GenerationConfig, n: int = 1, seed: int = 0, formatted: bool = True
    ) -> list[list[str]]:
        """``n`` sampled responses per prompt (chat-formatted unless ``formatted=False``), prompt-major."""
        from alignloop.models.generation import generate

        flat = [p for p in prompts for _ in range(n)]
        if not flat:
            return [[] for _ in prompts]
        texts = generate(self.model, self.tokenizer, flat, config, seed=seed, formatted=formatted).texts
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def likelihood(self, batch_size: int = 8) -> CausalLMLikelihood:
        return CausalLMLikelihood(self.model, self.tokenizer, batch_size=batch_size)

    def release(self) -> None:
        """Drop the weights (the next policy can use the memory)."""
        self.model = None
        gc.collect()
