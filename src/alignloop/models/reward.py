"""The reward model: a transformer trunk without its LM head, plus a scalar head (paper section 3.5).

Two backbones are supported:

* ``causal``: the SFT model (or any causal LM) with the unembedding layer removed. The input is
  the chat-formatted prompt, the completion and EOS; the reward is read at the last real token
  (the EOS), found from the attention mask.
* ``encoder``: a cheaper BERT-style encoder such as ``minilm-l6``. Its tokenizer differs from the
  policy's, so it works on text: (prompt, completion) is encoded as a sentence pair and the
  reward is read from the mean-pooled (or [CLS]) output.

Because both work on text, :class:`RewardScorer` tokenises for itself and every caller (the
trainer, PPO, best-of-N, evaluation, the scoring service) sees the same formatting.

Reward normalisation: the paper normalises the RM so that labeler demonstrations score mean 0
before RL. ``normalised = gain * raw + bias`` with ``bias`` (and optionally ``gain``) fitted on
demonstrations by :func:`fit_normalisation`; both are saved with the model and applied at
inference. Training uses raw scores (the pairwise loss sees only differences).

A saved reward model is a folder::

    MODEL_DIR/config.json, model.safetensors, tokenizer files   the Hugging Face trunk
    MODEL_DIR/reward_head.safetensors                           the scalar head (weight, bias)
    MODEL_DIR/reward_config.json                                backbone kind, pooling, normalisation
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignloop.errors import AlignloopError
from alignloop.models.loading import _set_dropout, format_prompt, load_tokenizer, quiet_hf, torch_dtype
from alignloop.models.padding import pad_token_id, right_pad
from alignloop.models.registry import REGISTRY, resolve
from alignloop.schema import from_dict

REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"
KINDS = ("causal", "encoder")
POOLINGS = ("last", "mean", "cls")

#: One tokenised (prompt, completion): input ids and, for sentence-pair encoders, token type ids.
Encoded = tuple[list[int], list[int] | None]


@dataclass
class RewardModelInfo:
    """What ``reward_config.json`` holds: how to format, pool and normalise."""

    kind: str  # "causal" | "encoder"
    pooling: str  # "last" | "mean" | "cls"
    max_length: int = 256
    bias: float = 0.0  # normalised = gain * raw + bias
    gain: float = 1.0
    base_model: str = ""  # what the trunk was initialised from (for the record)
    # raw = head + relevance_weight * cosine of the prompt's and completion's embeddings by the frozen
    # sentence encoder ``relevance_model`` (alignloop.models.relevance); "" / 0 = the head alone
    relevance_model: str = ""
    relevance_weight: float = 0.0

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.max_length < 8:
            raise ValueError("max_length: must be at least 8 tokens")
        if self.relevance_weight and not self.relevance_model:
            raise ValueError("relevance_weight: needs relevance_model (the sentence encoder it weighs)")


class RewardModel(nn.Module):
    """Trunk + scalar head. ``forward`` returns raw rewards [N] (float32); :meth:`normalise` applies
    the saved bias and gain."""

    def __init__(self, backbone: nn.Module, info: RewardModelInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.info = info
        d = backbone.config.hidden_size
        self.head = nn.Linear(d, 1, dtype=next(backbone.parameters()).dtype)
        # Scalar head initialised N(0, 1/sqrt(d+1)) with zero bias, as the paper's RM (Stiennon et al. 2020).
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)
        # The pairwise loss sees only differences r_w - r_l, so the head bias gets no gradient except
        # rounding noise, which Adam would scale up into a random walk; the offset is set by
        # normalisation instead (``info.bias``).
        self.head.bias.requires_grad_(False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.info.kind == "causal":
            kwargs["use_cache"] = False
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.info.pooling)).squeeze(-1).float()

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.info.gain + self.info.bias

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save(self, path: str | os.PathLike[str], tokenizer: Any) -> Path:
        """Write the model folder (trunk, tokenizer, head, reward_config.json)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf(warnings=True):
            self.backbone.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
        (out / REWARD_CONFIG).write_text(json.dumps(asdict(self.info), indent=2) + "\n", encoding="utf-8")
        return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """[N, T, d] -> [N, d]: the last real token, the first real token ([CLS]) or the masked mean.
    Positions come from the mask, so left and right padding both work."""
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    if how == "last":
        idx = (attention_mask.long() * positions).argmax(dim=1)  # largest position holding a real token
    elif how == "cls":
        idx = attention_mask.long().argmax(dim=1)  # first real token
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def backbone_kind(name: str) -> str:
    """``causal`` or ``encoder`` for a registry name or model folder (from its config)."""
    if name in REGISTRY:
        return "encoder" if REGISTRY[name].kind == "encoder" else "causal"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(resolve(name))
    archs = config.architectures or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal"
    mt = config.model_type
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    return "encoder"


def _load_trunk(path: str, kind: str, dtype: str, dropout: float | None) -> nn.Module:
    """The transformer without its LM head (``AutoModel``), and without BERT's unused pooler."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path)
        _set_dropout(config, dropout)
        with quiet_hf(warnings=True):
            try:
                trunk = AutoModel.from_pretrained(
                    path,
                    config=config,
                    dtype=torch_dtype(dtype),
                    **({"add_pooling_layer": False} if kind == "encoder" else {}),
                )
            except TypeError:  # an encoder class without a pooler switch
                trunk = AutoModel.from_pretrained(path, config=config, dtype=torch_dtype(dtype))
    except OSError as err:
        raise AlignloopError(
            f"cannot load a reward-model trunk from {path}: {err}", "give a registry name or a local HF folder"
        ) from None
    return trunk


def init_reward_model(
    name: str,
    *,
    kind: str = "auto",
    pooling: str = "auto",
    dtype: str = "float32",
    dropout: float | None = 0.0,
    max_length: int = 256,
) -> tuple[RewardModel, Any]:
    """A fresh reward model from a backbone (registry name, SFT output folder, encoder folder).

    A folder that already holds a reward model (``reward_config.json``) is loaded as it is, so
    training can continue from an earlier RM. Returns (model, tokenizer)."""
    path = resolve(name)
    if (Path(path) / REWARD_CONFIG).exists():
        model, tok = load_reward_model(path, dtype=dtype)
        _set_dropout(model.backbone.config, dropout)
        return model, tok
    kind = backbone_kind(name) if kind == "auto" else kind
    if pooling == "auto":
        pooling = "last" if kind == "causal" else "mean"
    info = from_dict(RewardModelInfo, {"kind": kind, "pooling": pooling, "max_length": max_length, "base_model": name})
    trunk = _load_trunk(path, kind, dtype, dropout)
    return RewardModel(trunk, info), load_tokenizer(path)


def load_reward_model(
    path: str | os.PathLike[str], *, dtype: str | None = None, device: str | torch.device | None = None
) -> tuple[RewardModel, Any]:
    """Load a saved reward model folder; returns (model in eval mode, tokenizer)."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg_file = p / REWARD_CONFIG
    if not cfg_file.exists():
        raise AlignloopError(
            f"{p} is not a reward model folder (no {REWARD_CONFIG})",
            "give the model folder written by `alignloop rm train` (RUN_DIR/model)",
        )
    info = from_dict(RewardModelInfo, json.loads(cfg_file.read_text(encoding="utf-8")))
    if dtype is None:
        from transformers import AutoConfig

        saved = getattr(AutoConfig.from_pretrained(str(p)), "dtype", None)
        dtype = str(saved).replace("torch.", "") if saved is not None else "float32"
        dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    model = RewardModel(_load_trunk(str(p), info.kind, dtype, None), info)
    head = load_file(str(p / HEAD_FILE))
    model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in head.items()})
    if device is not None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(str(p))


# ----------------------------------------------------------------------------------------------
# Formatting: one function the trainer and every scorer share.


def encode(tokenizer: Any, info: RewardModelInfo, prompts: Sequence[str], completions: Sequence[str]) -> list[Encoded]:
    """Tokenise (prompt, completion) pairs the way the reward model reads them.

    causal: ``format_prompt(prompt) + completion + EOS`` (EOS is not doubled if the completion
    already ends with it); when too long, tokens are dropped from the left so the scored EOS and
    the end of the answer survive. encoder: the sentence pair (prompt, completion), truncated
    longest-first."""
    if len(prompts) != len(completions):
        raise AlignloopError(
            f"{len(prompts)} prompts but {len(completions)} completions", "pass one prompt per completion"
        )
    if not prompts:
        return []
    if info.kind == "encoder":
        enc = tokenizer(list(prompts), list(completions), truncation=True, max_length=info.max_length)
        types = enc.get("token_type_ids")
        return [(ids, types[i] if types is not None else None) for i, ids in enumerate(enc["input_ids"])]
    eos = tokenizer.eos_token or ""
    texts = [
        format_prompt(tokenizer, p) + (c if c.endswith(eos) and eos else c + eos)
        for p, c in zip(prompts, completions, strict=True)
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(x[-info.max_length :], None) for x in ids]


def collate(items: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded pairs into model inputs. Right padding keeps every sequence's
    positions 0..n-1, so a completion scores the same whatever batch it is in."""
    input_ids, mask = right_pad([ids for ids, _ in items], pad_id)
    batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if items[0][1] is not None:
        types, _ = right_pad([tt if tt is not None else [] for _, tt in items], 0)
        batch["token_type_ids"] = types.to(device)
    return batch


#: The one pad-id rule (:func:`alignloop.models.padding.pad_token_id`), under its old name here.
pad_id = pad_token_id


# ----------------------------------------------------------------------------------------------
# Scoring and normalisation.


class RewardScorer:
    """A :class:`~alignloop.models.scoring.Scorer` backed by a local reward model.

    ``prompts`` are raw instructions and ``completions`` decoded responses (before EOS); scores
    are normalised (``gain * raw + bias``). Work is micro-batched to ``batch_size`` completions,
    longest first, so padding stays small and memory bounded."""

    def __init__(self, model: RewardModel, tokenizer: Any, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise AlignloopError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def relevance(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The relevance feature of each pair, unweighted (zeros when the model has none)."""
        return relevance_of(self.model, prompts, completions)

    @classmethod
    def load(cls, path: str | os.PathLike[str], batch_size: int = 16, device: str | None = None) -> RewardScorer:
        model, tok = load_reward_model(path, device=device)
        return cls(model, tok, batch_size)

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The head's scores plus the weighted relevance (before normalisation)."""
        head = self.head_scores(prompts, completions)
        weight = self.model.info.relevance_weight
        if not weight:
            return head
        return [h + weight * r for h, r in zip(head, self.relevance(prompts, completions), strict=True)]

    @torch.no_grad()
    def head_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        items = encode(self.tokenizer, self.model.info, prompts, completions)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        out = [0.0] * len(items)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = collate([items[i] for i in idx], pad_id(self.tokenizer), self.model.device)
                for i, s in zip(idx, self.model(**batch).tolist(), strict=True):
                    out[i] = s
        finally:
            self.model.train(was_training)
        return out

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        raw = self.raw_scores(prompts, completions)
        return [r * self.model.info.gain + self.model.info.bias for r in raw]


def relevance_of(model: RewardModel, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """cosine(E(prompt), E(completion)) by the model's relevance encoder (zeros when it has none)."""
    if not model.info.relevance_model:
        return [0.0] * len(completions)
    from alignloop.models.relevance import shared

    return shared(model.info.relevance_model, model.info.max_length, str(model.device)).similarity(prompts, completions)


def fit_normalisation(
    model: RewardModel,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    with_gain: bool = False,
    batch_size: int = 16,
) -> dict[str, float]:
    """Set the model's bias (and gain, if asked) so these completions (SFT demonstrations or SFT
    samples) score mean 0 (and std 1). Returns the raw mean/std and the new bias/gain."""
    if not prompts:
        raise AlignloopError(
            "reward normalisation needs at least one demonstration", "give a demonstrations file (--demos)"
        )
    raw = torch.tensor(RewardScorer(model, tokenizer, batch_size).raw_scores(prompts, completions), dtype=torch.float64)
    mean = raw.mean().item()
    std = raw.std(unbiased=False).item() if len(raw) > 1 else 0.0
    gain = 1.0 / std if with_gain and std > 1e-8 else 1.0
    model.info.gain = gain
    model.info.bias = -gain * mean
    return {"raw_mean": mean, "raw_std": std, "bias": model.info.bias, "gain": gain}


def load_scorer(spec: str, batch_size: int = 16, device: str | None = None):
    """A scorer from a reward model folder or the URL of an ``alignloop rm serve`` endpoint."""
    if spec.startswith(("http://", "https://")):
        from alignloop.models.rm_server import RemoteScorer

        return RemoteScorer(spec)
    return RewardScorer.load(spec, batch_size=batch_size, device=device)
