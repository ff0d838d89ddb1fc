"""The value model of PPO: V(x, y_<t) for every response token, initialised from the reward model.

Paper section 3.5: "we initialize the value function from the RM". The value model is a causal
trunk (no LM head) with a scalar head read at EVERY position, where the reward model reads only
the last token. Starting from the RM, its first predictions are already the RM's expected score.

Two layouts:

* ``separate`` (default): a copy of the RM trunk and head, trained in full except for the token
  embeddings, which stay shared with the frozen RM; or, with a LoRA rank, adapters on the copy.
* ``shared``: the value model shares the RM's frozen trunk and trains LoRA adapters plus its own
  head; the RM scores with the adapters disabled, so no second copy of the weights is held.

An RM that cannot give per-token values (an encoder, which sees the future tokens, or a trunk
with another tokenizer than the policy's) or no local RM at all (a remote or toy scorer): the
value model starts from a copy of the policy trunk with a zero head, and the caller is told why.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from alignloop.models.loading import disable_dropout
from alignloop.models.lora import lora_targets


class ValueModel(nn.Module):
    """Causal trunk + scalar head; ``forward`` returns one value per position, float32 [B, L]."""

    def __init__(self, trunk: nn.Module, head: nn.Linear, shares_trunk: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.shares_trunk = shares_trunk  # the trunk is the RM's own: adapters on only in forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Values of all positions, or of the last ``keep`` only (the head runs on those alone)."""
        with _adapters_enabled(self.trunk) if self.shares_trunk else contextlib.nullcontext():
            hidden = self.trunk(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        if keep is not None:
            hidden = hidden[:, -keep:]
        return self.head(hidden).squeeze(-1).float()


def _head_from_reward_model(rm: Any) -> nn.Linear:
    """The RM head with its normalisation (gain * raw + bias) folded in, so V starts at the
    normalised score the scorer reports."""
    head = copy.deepcopy(rm.head)
    gain, bias = float(rm.info.gain), float(rm.info.bias)
    with torch.no_grad():
        head.weight.mul_(gain)
        head.bias.mul_(gain).add_(bias)
    head.requires_grad_(True)
    return head


def value_compatibility(rm: Any, policy_tokenizer: Any, rm_tokenizer: Any) -> str | None:
    """Why this RM cannot initialise a per-token value model, or None if it can."""
    if rm is None:
        return "the reward is not a local reward model"
    if getattr(rm.info, "kind", None) != "causal":
        return "the reward model is an encoder (its outputs see future tokens)"
    if rm_tokenizer is None or rm_tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        return "the reward model's tokenizer differs from the policy's"
    return None


def value_from_reward_model(
    rm: Any,
    *,
    shared: bool = False,
    lora_r: int = 0,
    lora_alpha: int = 32,
    target_modules: str = "all-linear",
    layers: int = 0,
) -> ValueModel:
    """A value model initialised from reward model ``rm`` (trunk and head).

    Separate (default): a copy of the RM trunk, trained in full when ``lora_r`` is 0, else a
    frozen copy with LoRA adapters of rank ``lora_r``. ``shared=True`` injects LoRA adapters
    (rank ``lora_r``, 16 when 0) into ``rm.backbone`` itself: no copy at all; the adapters are
    switched on only inside :meth:`ValueModel.forward`, so the RM keeps scoring with its own weights.

    ``layers`` > 0 (separate only) keeps the first ``layers`` blocks of the copy, as
    :func:`value_from_policy` does and for the same reason (a causal RM is as large as the policy).
    The RM head reads the last block's features, not those of block ``layers``, so such a value
    starts from a zero head, V = 0: the normalised score of a typical demonstration. (Keeping the
    head's normalisation bias without its weight would start V far from every return, and GAE
    would turn that offset into advantages that grow towards each answer's end: PPO learns to stop.)
    """
    if not shared and layers > 0:
        trunk = _trainable_trunk(_first_layers(rm.backbone, layers), lora_r, lora_alpha, target_modules)
        return ValueModel(trunk, _zero_head(trunk))
    head = _head_from_reward_model(rm)
    if not shared:
        # Every layer is copied except the token embeddings, which stay shared with the frozen RM:
        # a value function reads inputs through them and needs no new ones, and sharing saves a
        # copy of the largest matrix with its gradient and Adam state.
        embeddings = rm.backbone.get_input_embeddings()
        trunk = copy.deepcopy(rm.backbone, memo={id(embeddings): embeddings})
        return ValueModel(_trainable_trunk(trunk, lora_r, lora_alpha, target_modules), head)
    from peft import LoraConfig, get_peft_model

    rm.backbone.requires_grad_(False)
    targets = lora_targets(target_modules)
    lora = LoraConfig(r=lora_r or 16, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=targets)
    trunk = get_peft_model(rm.backbone, lora)
    _switch_adapters(trunk, on=False)  # off except inside ValueModel.forward
    disable_dropout(trunk)
    return ValueModel(trunk, head, shares_trunk=True)


def value_from_policy(
    policy: Any, *, lora_r: int = 0, lora_alpha: int = 32, target_modules: str = "all-linear", layers: int = 0
) -> ValueModel:
    """The fallback: a copy of the policy's trunk with a zero head (V = 0 at the start), trained in
    full or, with ``lora_r`` > 0, through LoRA adapters on the frozen copy.

    ``layers`` > 0 keeps only the first ``layers`` transformer blocks of the copy (and its final
    norm). A value function is only PPO's baseline: a shallow one is a fair trade when the value
    pass would otherwise cost as much as the policy's own (on a CPU it is most of an iteration)."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    decoder = base.get_decoder()
    if layers > 0:
        decoder = _first_layers(decoder, layers)
    else:
        decoder = copy.deepcopy(decoder)
    trunk = _trainable_trunk(decoder, lora_r, lora_alpha, target_modules)
    return ValueModel(trunk, _zero_head(trunk))


def _zero_head(trunk: nn.Module) -> nn.Linear:
    """A value head that outputs 0 whatever the features (V = 0 at the start), in the trunk's dtype."""
    head = nn.Linear(trunk.config.hidden_size, 1, dtype=next(trunk.parameters()).dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _first_layers(decoder: nn.Module, n: int) -> nn.Module:
    """A copy of ``decoder`` holding only its first ``n`` blocks (the rest are never copied)."""
    name = next((a for a in ("layers", "h", "blocks") if isinstance(getattr(decoder, a, None), nn.ModuleList)), None)
    if name is None:
        raise ValueError(f"value_layers: cannot find the block list of {type(decoder).__name__}")
    blocks = getattr(decoder, name)
    if n > len(blocks):
        raise ValueError(f"value_layers: the trunk has {len(blocks)} layers, asked for {n}")
    dropped = {id(b): None for b in blocks[n:]}  # deepcopy's memo: skip the dropped blocks
    trunk = copy.deepcopy(decoder, memo=dropped)
    setattr(trunk, name, nn.ModuleList(list(getattr(trunk, name))[:n]))
    for attr in ("num_hidden_layers", "n_layer"):  # the copy has its own config (deepcopy)
        if hasattr(trunk.config, attr):
            setattr(trunk.config, attr, n)
    if hasattr(trunk.config, "layer_types") and trunk.config.layer_types is not None:
        trunk.config.layer_types = list(trunk.config.layer_types)[:n]
    return trunk


def _trainable_trunk(trunk: nn.Module, lora_r: int, lora_alpha: int, target_modules: str) -> nn.Module:
    """A private trunk copy made trainable: all of it except the token embeddings, or LoRA adapters."""
    disable_dropout(trunk)
    if lora_r <= 0:
        trunk.requires_grad_(True)
        trunk.get_input_embeddings().requires_grad_(False)
        return trunk
    from peft import LoraConfig, get_peft_model

    trunk.requires_grad_(False)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=lora_targets(target_modules))
    return get_peft_model(trunk, lora)


@contextlib.contextmanager
def _adapters_enabled(trunk: nn.Module) -> Iterator[None]:
    """A shared trunk's LoRA adapters are on only inside the value model's own forward pass, so
    the reward model (and anyone else holding it) always scores with its own weights."""
    _switch_adapters(trunk, on=True)
    try:
        yield
    finally:
        _switch_adapters(trunk, on=False)


def _switch_adapters(trunk: nn.Module, on: bool) -> None:
    """peft's switch also freezes the adapters when it turns them off; they are what the value
    model trains, so they stay trainable either way."""
    if on:
        trunk.base_model.enable_adapter_layers()
    else:
        trunk.base_model.disable_adapter_layers()
    for name, param in trunk.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
