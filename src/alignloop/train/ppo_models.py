"""The four models of PPO-RLHF: the policy, the reward model, the value model and the reference.

* the policy starts from the SFT model (dropout off in every model during RL), trained in full
  or through LoRA adapters;
* the reward model is any :class:`~alignloop.models.scoring.Scorer`; a local causal RM sharing
  the policy's tokenizer also initialises the value model (paper section 3.5), otherwise the value
  model is a copy of the policy trunk with a zero head (and the caller is told why);
* the reference is a frozen copy of the SFT policy, or with LoRA the same weights with the
  adapters disabled (no second copy), or a given model (the loop's round 2+ keeps pi_SFT).

Critic-free algorithms (rloo, grpo) build no value model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from alignloop.config import PPOConfig
from alignloop.errors import AlignloopError
from alignloop.models.loading import disable_dropout, load_policy
from alignloop.models.lora import lora_targets
from alignloop.models.scoring import Scorer
from alignloop.models.value import ValueModel, value_compatibility, value_from_policy, value_from_reward_model
from alignloop.train.distributed import WEIGHT_DTYPES, frozen_copy

#: The value model's LoRA rank when it shares the RM's trunk and ``value_lora_r`` is 0.
SHARED_VALUE_LORA_R = 16


@dataclass
class PPOModels:
    policy: Any
    tokenizer: Any
    scorer: Scorer
    rm: Any  # the local reward model behind ``scorer`` (None for a remote or toy scorer)
    value: ValueModel | None
    ref: Any  # None: with LoRA the reference is the policy with its adapters off
    notes: list[str]


def build_models(
    cfg: PPOConfig,
    policy: str | Any,
    reward: Scorer | str,
    tokenizer: Any,
    reference: str | Any | None,
    device: Any,
    sharded: bool,
) -> PPOModels:
    """Load or take the models, in the layout ``cfg`` asks for, on ``device``."""
    notes: list[str] = []
    if isinstance(policy, str):
        policy_model, tokenizer = load_policy(policy, cfg.dtype)
    elif tokenizer is None:
        raise AlignloopError("a policy given as a model needs its tokenizer", "pass tokenizer=")
    else:
        policy_model = policy
    disable_dropout(policy_model)
    if cfg.attn_implementation:  # before the value trunk is copied from it: the copy keeps the choice
        policy_model.set_attn_implementation(cfg.attn_implementation)
    policy_model.to(device)
    # The reward model, and the value model initialised from it (paper section 3.5).
    if isinstance(reward, str):
        from alignloop.models.reward import load_scorer

        reward = load_scorer(reward, device=str(device))
    rm = getattr(reward, "model", None)
    if rm is not None and hasattr(rm, "info"):
        rm.requires_grad_(False).eval()
        disable_dropout(rm)
    else:
        rm = None
    why = value_compatibility(rm, tokenizer, getattr(reward, "tokenizer", None))
    value: ValueModel | None = None
    lora = dict(lora_alpha=cfg.value_lora_alpha, target_modules=cfg.lora_target_modules)
    if cfg.algorithm != "ppo":  # critic-free (rloo / grpo): no value model is built
        pass
    elif why is None:
        shared = cfg.value_model == "shared"
        lora_r = cfg.value_lora_r or (SHARED_VALUE_LORA_R if shared else 0)
        layers = 0 if shared else cfg.value_layers
        try:
            value = value_from_reward_model(rm, shared=shared, lora_r=lora_r, layers=layers, **lora)
        except ValueError as err:
            raise AlignloopError(f"ppo config: {err}") from None
    else:
        notes.append(f"value model initialised from the policy trunk with a zero head: {why}")
        lora_r = cfg.value_lora_r or (SHARED_VALUE_LORA_R if cfg.value_model == "shared" else 0)
        try:
            value = value_from_policy(policy_model, lora_r=lora_r, layers=cfg.value_layers, **lora)
        except ValueError as err:
            raise AlignloopError(f"ppo config: {err}") from None
    if value is not None:
        value.to(device)
        if rm is not None and (sharded or cfg.distributed.frozen_dtype != "fp32"):
            frozen_copy(value, rm, cfg.distributed.frozen_dtype)  # the value keeps fp32 weights of its own

    # The reference: a frozen copy of the SFT policy, or with LoRA the same base without adapters.
    ref = None
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        policy_model.requires_grad_(False)
        config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=lora_targets(cfg.lora_target_modules),
        )
        policy_model = get_peft_model(policy_model, config)
    else:
        policy_model.requires_grad_(True)
        ref = None if reference is not None else copy.deepcopy(policy_model).requires_grad_(False).eval()
    if reference is not None:  # a reference other than the starting policy (the loop's SFT policy in round 2+)
        ref = load_policy(reference, cfg.dtype)[0] if isinstance(reference, str) else reference
        disable_dropout(ref)
        if cfg.attn_implementation:
            ref.set_attn_implementation(cfg.attn_implementation)
        ref.requires_grad_(False).eval()
    if ref is not None:
        ref.to(WEIGHT_DTYPES[cfg.distributed.frozen_dtype])
    return PPOModels(policy_model, tokenizer, reward, rm, value, ref, notes)
