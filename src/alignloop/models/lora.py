"""LoRA settings shared by every trainer that adapts a model (SFT, PPO's policy and value, DPO).

Configs name the adapted layers as peft does, as one string: ``"all-linear"`` or a comma-separated
list of module names (``"q_proj,v_proj"``); :func:`lora_targets` is the one place that reads it.
"""

from __future__ import annotations

from alignloop.errors import AlignloopError


def lora_targets(spec: str) -> str | list[str]:
    """peft's ``target_modules`` from a config string: ``"all-linear"`` as is, else the stripped,
    non-empty names of a comma-separated list (an empty list is an error: LoRA would adapt nothing)."""
    if spec == "all-linear":
        return spec
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise AlignloopError(
            f"lora_target_modules: {spec!r} names no module", 'use "all-linear" or a list like "q_proj,v_proj"'
        )
    return names
