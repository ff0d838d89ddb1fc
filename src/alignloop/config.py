"""One config dataclass per stage of the loop, loaded from YAML and validated.

A YAML file maps onto :class:`LoopConfig` (all stages) or onto one stage's dataclass. An
unknown key or a value of the wrong type is an :class:`~alignloop.errors.AlignloopError`
naming the key (``sft.lr: expected a number``). Defaults follow the paper where it gives a
value and the CPU demo budget where it does not.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from alignloop.errors import AlignloopError
from alignloop.schema import from_dict

T = TypeVar("T")


#: Weights dtypes a model can be loaded in (ModelConfig.dtype, LoopConfig.sampling_dtype).
MODEL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """Which model to load: a registry name, a local HF folder, or a hub id."""

    name: str = "smollm2-135m-instruct"
    dtype: str = "float32"  # "float32" | "bfloat16"

    def validate(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype: must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass
class DataConfig:
    """The prompt pipeline of SPEC section 2."""

    dedupe_prefix_chars: int = 64  # prompts sharing this long a prefix are duplicates
    max_prompts_per_user: int = 200
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test, by user
    dataset_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3)  # SFT / RM / PPO, disjoint prompts
    seed: int = 0

    def validate(self) -> None:
        if self.dedupe_prefix_chars < 1:
            raise ValueError("dedupe_prefix_chars: must be at least 1")
        if self.max_prompts_per_user < 1:
            raise ValueError("max_prompts_per_user: must be at least 1")
        for name in ("split_fractions", "dataset_fractions"):
            fr = getattr(self, name)
            if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
                raise ValueError(f"{name}: must be three non-negative numbers summing to 1, got {list(fr)}")


@dataclass
class PanelConfig:
    """The simulated labeler panel of SPEC section 9."""

    n_labelers: int = 10
    careless_fraction: float = 0.1  # share of labelers who answer at random
    temperature: float = 0.1  # Bradley-Terry noise on the gold utility; 0 = always agrees with gold
    length_lover_fraction: float = 0.1  # share of labelers with a bias toward long answers
    seed: int = 0
    n_groups: int = 5  # labeler groups, for k-fold cross-validation by group and held-out labelers
    length_bias: float = 0.3  # a length lover's utility bonus per 100 words (capped at 300 words)
    tie_tolerance: float = 0.0  # perceived utilities this close are ranked as ties; 0 = no ties
    thumbs_threshold: float = 0.6  # thumbs up when the noisy perceived utility exceeds this
    # Labeler groups differ in what they value (see alignloop.labelers.panel): each group weighs the gold
    # utility's components with its own weights, the population's (gold) weights plus a deviation whose
    # size is group_spread times the mean weight; deviations sum to 0 over the groups, so the gold utility
    # stays the population's average. 0 = every group shares the gold weights.
    group_spread: float = 1.0
    position_bias: float = 0.0  # mean utility bonus for the completion shown first (0 for the last shown)
    fatigue: float = 0.0  # Bradley-Terry noise added to the temperature by the end of a labeling session
    session_items: int = 50  # items in one labeling session: fatigue grows over a session, resets after it

    def validate(self) -> None:
        if not 0 <= self.careless_fraction <= 1:
            raise ValueError("careless_fraction: must be between 0 and 1")
        if not 0 <= self.length_lover_fraction <= 1:
            raise ValueError("length_lover_fraction: must be between 0 and 1")
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0")
        if self.n_labelers < 1:
            raise ValueError("n_labelers: must be at least 1")
        if not 1 <= self.n_groups <= self.n_labelers:
            raise ValueError("n_groups: must be between 1 and n_labelers")
        if self.length_bias < 0 or self.tie_tolerance < 0:
            raise ValueError("length_bias, tie_tolerance: must be >= 0")
        if self.group_spread < 0 or self.position_bias < 0 or self.fatigue < 0:
            raise ValueError("group_spread, position_bias, fatigue: must be >= 0")
        if self.session_items < 1:
            raise ValueError("session_items: must be at least 1")


@dataclass
class GenerationConfig:
    """Sampling settings shared by SFT evaluation, best-of-N, PPO rollouts and evaluation."""

    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens, batch_size: must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


@dataclass
class DistributedConfig:
    """How a stage trains on its devices: sharding, compute precision, activation memory.

    Chosen here and applied by alignloop itself (``train/distributed.py``), so that the same
    setting means the same thing on one CPU, on GPUs and across machines: ``accelerate launch``
    or ``torchrun`` only start the processes. (Accelerate's own ``distributed_type: FSDP`` is
    silently dropped on a CPU-only machine, so it cannot be what selects sharding.)
    """

    strategy: str = "ddp"  # "ddp": full replica per process | "fsdp": FSDP2 fully_shard, params/grads/optimizer sharded
    dtype: str = "fp32"  # compute precision: "bf16" | "fp16" autocast; trainable weights and optimizer stay fp32
    frozen_dtype: str = "fp32"  # weights of frozen models (PPO reference and reward model): "bf16" halves them
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute

    def validate(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            hint = " (DeepSpeed ZeRO is not one: fsdp shards like ZeRO-3, see the README's scaling section)"
            raise ValueError(
                f"distributed.strategy: must be ddp or fsdp, got {self.strategy!r}"
                + (hint if "zero" in str(self.strategy).lower() else "")
            )
        for name in ("dtype", "frozen_dtype"):
            if getattr(self, name) not in ("fp32", "bf16", "fp16"):
                raise ValueError(f"distributed.{name}: must be fp32, bf16 or fp16, got {getattr(self, name)!r}")


@dataclass
class SampleConfig:
    """``alignloop sample``: K completions per prompt from one policy, for a ranking campaign."""

    k: int = 4  # the paper's K = 4..9 (2..3 for best-pick campaigns)
    seed: int = 0
    dtype: str = "float32"
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=1.0))  # diverse K

    def validate(self) -> None:
        if not 2 <= self.k <= 9:
            raise ValueError(f"k: completions per prompt must be 2..9 (a ranking campaign takes 4..9), got {self.k}")
        self.generation.validate()


def _check_adam(betas: tuple[float, float], eps: float) -> None:
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"adam_betas: must be two numbers in [0, 1), got {list(betas)}")
    if eps <= 0:
        raise ValueError(f"adam_eps: must be positive, got {eps}")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations (paper section 3.5: 16 epochs, cosine decay, dropout 0.2)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 2
    lr: float = 5e-5
    warmup_ratio: float = 0.05
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    dropout: float = 0.0  # residual/attention dropout; the paper used 0.2
    weight_decay: float = 0.0
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"  # peft target_modules: "all-linear" or a comma-separated list
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 = no clipping
    # AdamW moments. beta2 = 0.95 (GPT-3's and InstructGPT's setting, not torch's 0.999): the
    # second-moment estimate follows the gradient scale of fine-tuning, which shifts fast, within ~20
    # steps instead of ~1000, so one large early gradient does not keep later steps small. eps: torch's.
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    mixed_precision: str = "no"  # older name of distributed.dtype: "no" | "bf16" | "fp16" (used when dtype is fp32)
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end of each epoch
    keep_checkpoints: int = 2
    eval_at_start: bool = True  # validation metrics of the starting model, logged at step 0
    eval_prompts: int = 64  # validation prompts sampled for the scorer's mean score (0 = all)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64))
    seed: int = 0  # data order (shared by ranks); sampling and dropout use seed + rank
    system_prompt: str | None = None  # chat system message saved with the policy; null = the template's own
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        self.distributed.validate()
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length: must be at least 8 tokens, got {self.max_length}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.lora_r < 0 or self.checkpoint_every < 0 or self.eval_prompts < 0:
            raise ValueError("lora_r, checkpoint_every, eval_prompts: must be >= 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision: must be no, bf16 or fp16, got {self.mixed_precision!r}")
        _check_adam(self.adam_betas, self.adam_eps)


@dataclass
class BoNConfig:
    """Best-of-N: sample N completions per prompt, keep the highest-scoring one; optionally
    fine-tune the policy on the kept ones (rejection sampling, SPEC section 1 step 8)."""

    policy: ModelConfig = field(default_factory=ModelConfig)
    n: int = 4
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=1.0))
    sft: SFTConfig = field(default_factory=SFTConfig)  # rejection-sampling FT; its model is set to policy
    val_fraction: float = 0.0  # share of prompts held out to choose the kept FT checkpoint by score
    seed: int = 0

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n: must be at least 1, got {self.n}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")


@dataclass
class RMConfig:
    """Reward model training with all C(K,2) comparisons of a prompt as one batch element."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 1
    lr: float = 1e-5
    warmup_ratio: float = 0.05
    prompts_per_step: int = 4
    micro_batch_completions: int = 32
    max_length: int = 256
    weight_decay: float = 0.0
    normalize: bool = True  # bias so SFT demonstrations score mean 0
    seed: int = 0
    backbone: str = "auto"  # "causal" (SFT model minus LM head) | "encoder" (e.g. minilm-l6) | "auto" (from the model)
    pooling: str = "auto"  # "last" real token | "mean" | "cls"; auto = last for causal, mean for encoder
    dropout: float = 0.0  # residual/attention dropout of the trunk while training
    max_grad_norm: float = 1.0  # 0 = no clipping
    # AdamW moments. beta2 = 0.95 (GPT-3's and InstructGPT's setting, not torch's 0.999): the
    # second-moment estimate follows the gradient scale of fine-tuning, which shifts fast, within ~20
    # steps instead of ~1000, so one large early gradient does not keep later steps small. eps: torch's.
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    normalize_gain: bool = False  # also scale so demonstrations have std 1
    val_fraction: float = 0.1  # share of prompts held out when no validation file is given
    eval_every: int = 0  # steps between held-out evaluations; 0 = at each epoch end
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # per_prompt: a prompt's K completions and all C(K,2) pairs are one element (the paper's choice);
    # shuffled_pairs: every pair its own element, shuffled across prompts (for comparison; overfits sooner)
    batching: str = "per_prompt"
    # Several labelers' rankings of the same completions (overlap > 1) share one element: its completions
    # are scored once, each labeler's comparisons still weigh as a ranking (a step then takes
    # prompts_per_step such items).
    merge_overlap: bool = False
    # A frozen sentence encoder (registry name or folder, e.g. minilm-l6) whose prompt-completion cosine
    # is added to the score, weighted as the held-out rankings ask (alignloop.models.relevance); "" = off
    relevance: str = ""

    def validate(self) -> None:
        self.distributed.validate()
        if self.batching not in ("per_prompt", "shuffled_pairs"):
            raise ValueError(f"batching: must be per_prompt or shuffled_pairs, got {self.batching!r}")
        if self.backbone not in ("auto", "causal", "encoder"):
            raise ValueError(f"backbone: must be auto, causal or encoder, got {self.backbone!r}")
        if self.pooling not in ("auto", "last", "mean", "cls"):
            raise ValueError(f"pooling: must be auto, last, mean or cls, got {self.pooling!r}")
        if self.prompts_per_step < 1 or self.micro_batch_completions < 1 or self.epochs < 1:
            raise ValueError("prompts_per_step, micro_batch_completions, epochs: must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction: must be in [0, 1)")
        _check_adam(self.adam_betas, self.adam_eps)


@dataclass
class PPOConfig:
    """PPO against the reward model (SPEC section 6); names follow the paper's symbols."""

    total_episodes: int = 256
    batch_size: int = 16  # rollouts per PPO iteration (global)
    minibatch_size: int = 8
    ppo_epochs: int = 4
    lr: float = 1e-5
    beta: float = 0.05  # KL reward coefficient
    gamma_ptx: float = 0.0  # pretraining loss coefficient (0 = plain PPO)
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gae_gamma: float = 1.0
    gae_lambda: float = 0.95
    whiten_rewards: bool = False
    no_eos_penalty: float | None = -1.0  # the score of a response without EOS; null = keep the RM score
    lora_r: int = 0
    lora_alpha: int = 32
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    checkpoint_every: int = 0  # iterations; 0 = only at the end
    seed: int = 0  # data order (shared by ranks); sampling uses seed + rank
    dtype: str = "float32"  # policy, reference and value weights
    lora_target_modules: str = "all-linear"  # peft target_modules: "all-linear" or a comma-separated list
    value_model: str = "separate"  # "separate": a trained copy of the RM | "shared": LoRA on the RM's own trunk
    value_lora_r: int = 0  # value model LoRA rank: 0 = train the separate copy in full (shared: 16 when 0)
    value_lora_alpha: int = 32  # value model LoRA alpha (with value_lora_r > 0 or a shared value model)
    value_lr: float = 0.0  # 0 = same as lr
    value_layers: int = 0  # the value trunk (copy of the RM's or policy's) keeps its first N layers (0 = all)
    whiten_advantages: bool = True
    score_norm: bool = False  # running mean/std normalisation of the RM score before the EOS penalty
    lr_schedule: str = "constant"  # "constant" | "linear" (decay to 0 over the run)
    max_grad_norm: float = 1.0  # 0 = no clipping
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's; torch's default, as TRL's PPO
    adam_eps: float = 1e-5
    score_batch_size: int = 64  # completions per reward-model call while scoring a rollout
    # pi_old = the sampler's log-probabilities (as TRL; the first step's KL is then ~1e-6 of
    # numerical noise, not 0) instead of one more forward pass over the policy after sampling.
    pi_old_from_sampler: bool = True
    micro_batch_size: int = 4  # rows per forward/backward pass on each process (memory); 0 = the whole minibatch
    ptx_batch_size: int = 8  # pretraining texts per PPO-ptx update (global)
    ptx_max_length: int = 128
    keep_checkpoints: int = 2
    concurrent_passes: bool = True  # one process on a CPU: independent passes (policy/value) run side by side
    # Attention kernel of the policy, its sampler, the reference and a value trunk copied from the policy:
    # "" = the model's own (transformers' SDPA), "eager" | "sdpa". Eager made the demo's bf16 PPO 14 %
    # faster on a CPU but drifted further from the SFT policy (KL 6.8-8.4 vs 4.8-5.9) and won less on
    # validation (68.9 vs 71.2 % over four seeds; docs/NOTES.md, session 11): the demo keeps SDPA.
    attn_implementation: str = ""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # Critic-free RL (no value model): "rloo" (leave-one-out baseline, KL in the reward) | "grpo"
    # (group-normalised advantages, beta * k3 KL as a loss term). Both sample group_size responses
    # per prompt: an iteration takes batch_size / group_size prompts.
    algorithm: str = "ppo"  # "ppo" | "rloo" | "grpo"
    group_size: int = 4  # samples per prompt for rloo / grpo

    def validate(self) -> None:
        self.distributed.validate()
        if self.algorithm not in ("ppo", "rloo", "grpo"):
            raise ValueError(f"algorithm: must be ppo, rloo or grpo, got {self.algorithm!r}")
        if self.algorithm != "ppo" and (self.group_size < 2 or self.batch_size % self.group_size):
            raise ValueError(
                f"group_size: {self.algorithm} needs at least 2 samples per prompt, dividing batch_size "
                f"{self.batch_size}; got {self.group_size}"
            )
        for name in ("total_episodes", "batch_size", "minibatch_size", "ppo_epochs", "ptx_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"minibatch_size: must divide batch_size {self.batch_size}, got {self.minibatch_size}")
        if self.total_episodes < self.batch_size:
            raise ValueError(f"total_episodes: must be at least batch_size ({self.batch_size})")
        if self.value_model not in ("separate", "shared"):
            raise ValueError(f"value_model: must be separate or shared, got {self.value_model!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule: must be constant or linear, got {self.lr_schedule!r}")
        if self.lr <= 0 or self.value_lr < 0 or self.beta < 0 or self.gamma_ptx < 0:
            raise ValueError("lr must be positive; value_lr, beta, gamma_ptx must be >= 0")
        if self.adaptive_kl and (self.target_kl <= 0 or self.kl_horizon < 1):
            raise ValueError("target_kl, kl_horizon: must be positive with adaptive_kl")
        if self.value_layers < 0:
            raise ValueError(f"value_layers: must be >= 0, got {self.value_layers}")
        if self.attn_implementation not in ("", "eager", "sdpa"):
            raise ValueError(f"attn_implementation: must be '', eager or sdpa, got {self.attn_implementation!r}")
        if self.score_batch_size < 1:
            raise ValueError(f"score_batch_size: must be at least 1, got {self.score_batch_size}")
        _check_adam(self.adam_betas, self.adam_eps)
        if self.lora_r < 0 or self.micro_batch_size < 0 or self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("lora_r, micro_batch_size, checkpoint_every: must be >= 0; keep_checkpoints >= 1")


@dataclass
class DPOConfig:
    """Direct preference optimisation on the K-way rankings (DPO and relatives), reference = the SFT policy.

    All C(K,2) comparisons of a prompt form one batch element, as for the reward model: each
    completion gets one policy forward per step and one reference forward per run (cached)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the SFT policy: start point and reference
    loss: str = "sigmoid"  # "sigmoid" (DPO) | "ipo" | "plackett_luce" (listwise)
    beta: float = 0.1  # strength of the implicit KL constraint to the reference
    epochs: int = 1
    lr: float = 1e-6
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    prompts_per_step: int = 4  # rankings per optimizer step (global)
    micro_batch_completions: int = 16  # completions per forward pass; a prompt is never split
    max_length: int = 256
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW's; TRL and torch default to (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    dropout: float = 0.0  # off by default: the cached reference log-probs were computed without it
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # peft target_modules: "all-linear" or a comma-separated list
    mixed_precision: str = "no"  # older name of distributed.dtype: "no" | "bf16" | "fp16" (used when dtype is fp32)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # ddp | fsdp, dtype, checkpointing
    val_fraction: float = 0.1  # share of prompts held out when no validation file is given
    eval_every: int = 0  # steps between held-out evaluations; 0 = at each epoch end
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at epoch ends before the last
    keep_checkpoints: int = 2
    seed: int = 0  # data order (shared by ranks)

    def validate(self) -> None:
        if self.loss not in ("sigmoid", "ipo", "plackett_luce"):
            raise ValueError(f"loss: must be sigmoid, ipo or plackett_luce, got {self.loss!r}")
        if self.beta <= 0 or self.lr <= 0:
            raise ValueError(f"beta, lr: must be positive, got {self.beta}, {self.lr}")
        for name in ("epochs", "prompts_per_step", "micro_batch_completions", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length: must be at least 8 tokens, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.val_fraction < 1 or not 0 <= self.dropout < 1:
            raise ValueError("warmup_ratio, val_fraction, dropout: must be in [0, 1)")
        if self.lora_r < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("lora_r, eval_every, checkpoint_every: must be >= 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision: must be no, bf16 or fp16, got {self.mixed_precision!r}")
        _check_adam(self.adam_betas, self.adam_eps)
        self.distributed.validate()


@dataclass
class FeedbackConfig:
    """The human feedback service."""

    database_url: str = "sqlite:///alignloop-feedback.db"
    host: str = "127.0.0.1"
    port: int = 8000
    overlap: int = 1  # labelers per item
    screening_threshold: float = 0.7
    # The edge's input policy (issue 10). A request body over the limit is refused with 413 before it
    # is read. 16 MiB holds a campaign push of ~200 prompts with K = 9 completions of 2,000 words;
    # a request without credentials (a login) needs far less, so it gets the small limit.
    max_request_bytes: int = 16 * 2**20
    max_anonymous_request_bytes: int = 64 * 2**10
    # Login throttling: attempts per account and per client address within the window; over a limit
    # the login is answered 429 with Retry-After, without running the password hash.
    login_window_seconds: int = 900
    login_attempts_per_account: int = 10
    login_attempts_per_address: int = 100

    def validate(self) -> None:
        for name in (
            "max_request_bytes", "max_anonymous_request_bytes", "login_window_seconds",
            "login_attempts_per_account", "login_attempts_per_address",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    """Evaluation of policies against a baseline."""

    n_prompts: int = 64
    samples_per_prompt: int = 4
    bootstrap: int = 1000
    generation: GenerationConfig = field(default_factory=GenerationConfig)


#: How a round's new policy is accepted, from the deciding judge's win rate against the previous policy:
#: ``ci_low`` (the 95 % interval's lower bound) or ``rate`` above ``LoopConfig.accept_threshold``, or
#: ``always``. "ci_low > 0.5" and "rate > 0.5" are the older spellings (threshold 0.5 written in the rule).
ACCEPT_RULES = ("ci_low", "rate", "always", "ci_low > 0.5", "rate > 0.5")


@dataclass
class LoopConfig:
    """The whole loop: every stage plus the rounds and their stopping rule."""

    out_dir: str = "runs/loop"
    policy: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    rounds: int = 1
    stop_metric: str = "gold_win_rate"  # the deciding judge's win rate of the new policy against the previous one
    stop_threshold: float | None = None
    k: int = 4  # completions ranked per prompt (the paper used 4..9)
    ranking_generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=1.0))
    ranking_source: str = "panel"  # "panel" (simulated labelers) | "service" (the feedback service)
    overlap: int = 1  # labelers per ranked item
    feedback_url: str = ""  # with ranking_source "service": the service's base URL
    feedback_user: str = ""  # an admin of that service
    feedback_password_env: str = "ALIGNLOOP_FEEDBACK_PASSWORD"  # environment variable holding the password
    demonstrations: str = "template"  # "template" (panel writes answers) | "best_of_n" (panel picks model samples)
    # With demonstrations "best_of_n": base-model samples per prompt the panel picks from; each one more
    # is one more sample per SFT prompt. 4 = the paper's smallest ranking size (K = 4..9), as before.
    demonstration_candidates: int = 4
    n_sft_prompts: int = 64
    # Held-out SFT prompts whose demonstrations choose the kept SFT epoch (validation loss, and samples
    # when scored); never trained on. Every epoch end evaluates all of them, so the count is paid once
    # per epoch; 16 is what the demo's timing and win rate in docs/NOTES.md were measured with.
    n_sft_val_prompts: int = 16
    n_rm_prompts: int = 64
    n_ppo_prompts: int = 256
    # Where each round's reward model starts: "config" = rm.model (e.g. the cheap minilm-l6 encoder),
    # "sft" = the SFT policy minus its LM head, as the paper (section 3.5). The SFT trunk already
    # reads the policy's own answers; on the demo's task it agrees with the gold utility on
    # 0.68-0.69 of unseen pairs against minilm-l6's 0.60-0.64 (docs/NOTES.md, session 6), for ~9x
    # the training time.
    rm_init: str = "config"
    # What each round's reward model trains on: "round" = that round's rankings only; "all" = every round's
    # rankings so far (the paper's RM saw all comparisons collected; a later round's rankings are of the
    # improved policy's answers, exactly where PPO exploits the earlier reward model).
    rm_rankings: str = "round"
    eval_seed: int = 12345
    # Weights dtype of the models that only sample (ranking candidates, evaluation answers): "" = policy.dtype.
    # "bfloat16" samples ~3x faster on a CPU with native bf16 (AVX512-BF16/AMX), and both policies of a
    # win rate are sampled alike; training keeps fp32 weights whatever this says.
    sampling_dtype: str = ""
    # The loop as a persisted state machine (OUT/loop.json), with people on the feedback service.
    reference: str = "sft"  # KL reference of every round's PPO: "sft" (pi_SFT, as the paper) | "previous"
    judge: str = "auto"  # who decides: auto (labelers with the service, gold with the panel) | human | rm | gold
    accept_rule: str = "ci_low"  # "ci_low" (95 % interval above accept_threshold) | "rate" | "always"
    # The win rate against the previous policy a round must exceed to be accepted. 0.5 = a tie: the
    # new policy must be preferred more often than the old one (with "ci_low", significantly so).
    accept_threshold: float = 0.5
    # Round i's PPO (and its ranking samples) use seed ppo.seed + round_seed_stride * i: a fresh,
    # reproducible random stream per round (0 = every round draws the same stream). 1000: the formula
    # earlier runs used (they reproduce), and two runs whose ppo.seed differ by 1..999 never share one.
    round_seed_stride: int = 1000
    gold_judge: bool | None = None  # also judge by the hidden gold utility; null = only with the simulated panel
    wait_timeout: float = 3600.0  # seconds one process waits for labels before it exits (resume continues)
    poll_seconds: float = 5.0  # between progress checks of a campaign
    demonstration_round: bool = False  # round 0: demonstrations (panel or a service campaign) -> SFT
    # Campaigns go only to labelers who passed screening: on the service its screening campaign's verdict;
    # with the simulated panel, agreement with gold on SimulatedPanel.screening_items at
    # feedback.screening_threshold (the careless labelers fail it).
    screened_only: bool = False
    eval_overlap: int = 1  # labelers per evaluation item on the service
    feedback_token_env: str = "ALIGNLOOP_FEEDBACK_TOKEN"  # environment variable holding an admin API token

    @property
    def sample_weights_dtype(self) -> str:
        """The weights dtype for sampling-only model loads: ``sampling_dtype``, else the policy's."""
        return self.sampling_dtype or self.policy.dtype

    def validate(self) -> None:
        if self.sampling_dtype not in ("", *MODEL_DTYPES):
            raise ValueError(f"sampling_dtype: must be '', float32, bfloat16 or float16, got {self.sampling_dtype!r}")
        if self.rm_rankings not in ("round", "all"):
            raise ValueError(f"rm_rankings: must be round or all, got {self.rm_rankings!r}")
        if self.rm_init not in ("config", "sft"):
            raise ValueError(f"rm_init: must be config or sft, got {self.rm_init!r}")
        if self.reference not in ("sft", "previous"):
            raise ValueError(f"reference: must be sft or previous, got {self.reference!r}")
        if self.judge not in ("auto", "human", "rm", "gold"):
            raise ValueError(f"judge: must be auto, human, rm or gold, got {self.judge!r}")
        if self.accept_rule not in ACCEPT_RULES:
            rules = ", ".join(map(repr, ACCEPT_RULES))
            raise ValueError(f"accept_rule: must be one of {rules}, got {self.accept_rule!r}")
        if " > " in self.accept_rule and self.accept_threshold != 0.5:
            raise ValueError(
                f"accept_rule: {self.accept_rule!r} fixes the threshold at 0.5 but accept_threshold is "
                f"{self.accept_threshold}; write accept_rule: {self.accept_rule.split(' > ')[0]}"
            )
        if not 0.0 <= self.accept_threshold < 1.0:
            raise ValueError(f"accept_threshold: must be in [0, 1), got {self.accept_threshold}")
        if self.n_sft_val_prompts < 0 or self.demonstration_candidates < 1:
            raise ValueError("n_sft_val_prompts: must be >= 0 and demonstration_candidates >= 1")
        if self.wait_timeout < 0 or self.poll_seconds <= 0:
            raise ValueError("wait_timeout: must be >= 0 and poll_seconds > 0")
        if not 2 <= self.k <= 9:
            raise ValueError(f"k: must be between 2 and 9, got {self.k}")
        if self.rounds < 1:
            raise ValueError("rounds: must be at least 1")
        if self.ranking_source not in ("panel", "service"):
            raise ValueError(f"ranking_source: must be panel or service, got {self.ranking_source!r}")
        if self.demonstrations not in ("template", "best_of_n"):
            raise ValueError(f"demonstrations: must be template or best_of_n, got {self.demonstrations!r}")
        if self.stop_metric != "gold_win_rate":
            raise ValueError(f"stop_metric: only gold_win_rate is supported, got {self.stop_metric!r}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``lr: 1e-4`` is a number, not the string "1e-4"
    (YAML 1.1, which PyYAML follows, wants ``1.0e-4``; nobody writes that)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


COMPARE_METHODS = ("ppo", "ppo_ptx", "rloo", "grpo", "dpo", "rejection_ft")  # plus "bonN": best-of-N, N >= 2


@dataclass
class CompareBudget:
    """The compute each trained method of ``alignloop compare`` gets: the same number of policy samples
    (``ppo.total_episodes``: PPO, PPO-ptx, RLOO, GRPO and rejection-sampling FT each draw that many;
    DPO trains ``dpo.epochs`` and draws none), or the same wall time. With ``wall_time`` each method
    stops at its first step boundary after ``seconds`` (counted from the method's start, model loading
    included) and writes its policy; the sample budget and ``dpo.epochs`` still lay out the learning-rate
    schedules and cap a method that would run longer. The table reports what each method spent."""

    kind: str = "samples"  # samples | wall_time
    seconds: float = 0.0  # wall_time: each method's training time
    rejection_sample_share: float = 0.5  # wall_time: share of rejection_ft's time for sampling (the rest fine-tunes)

    def validate(self) -> None:
        if self.kind not in ("samples", "wall_time"):
            raise ValueError(f"budget.kind: must be samples or wall_time, got {self.kind!r}")
        if self.kind == "wall_time" and self.seconds <= 0:
            raise ValueError(f"budget.seconds: a wall_time budget needs seconds > 0, got {self.seconds}")
        if not 0 < self.rejection_sample_share < 1:
            raise ValueError(f"budget.rejection_sample_share: must be in (0, 1), got {self.rejection_sample_share}")


@dataclass
class CompareConfig:
    """``alignloop compare``: every method from one SFT policy and one set of rankings, judged against SFT
    on held-out prompts by the gold judge and by the reward model, with KL to SFT and perplexity."""

    policy: str = ""  # the SFT policy: folder or registry name
    rankings: str = ""  # rankings JSONL: the reward model's and DPO's data
    prompts: str = ""  # RL prompts JSONL (Prompt records)
    eval_prompts: str = ""  # held-out users' prompts JSONL (Prompt records)
    ptx_corpus: str = ""  # pretraining-like text: PPO-ptx's data and the perplexity column ("" = none)
    methods: list[str] = field(
        default_factory=lambda: ["ppo", "ppo_ptx", "rloo", "dpo", "bon4", "bon16", "rejection_ft"]
    )
    budget: CompareBudget = field(default_factory=CompareBudget)  # the same policy samples, or the same wall time
    ptx_gamma: float = 1.0  # PPO-ptx's pretraining coefficient
    max_ptx_documents: int = 64  # documents of ptx_corpus read (training and perplexity)
    # The last share of those documents is held out: perplexity (the alignment tax) is measured on it
    # and PPO-ptx never trains on it, or PPO-ptx's perplexity would only say it saw the text.
    ptx_heldout_fraction: float = 0.25
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    # rejection-sampling FT: n samples per prompt, the RM's favourite kept, SFT on those (policy set to `policy`)
    rejection_ft: BoNConfig = field(default_factory=BoNConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_seed: int = 12345

    def validate(self) -> None:
        self.budget.validate()
        self.rejection_ft.validate()
        for m in self.methods:
            bon = m.startswith("bon") and m[3:].isdigit() and int(m[3:]) >= 2
            if m not in COMPARE_METHODS and not bon:
                raise ValueError(f"methods: unknown method {m!r}; use {', '.join(COMPARE_METHODS)} or bonN (N >= 2)")
        if not self.methods:
            raise ValueError("methods: name at least one method")

    def check_inputs(self) -> None:
        """The input paths a run needs (a config file may leave them to the command line or a script)."""
        for name in ("policy", "rankings", "eval_prompts"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required (a path)")
        if any(m in ("ppo", "ppo_ptx", "rloo", "grpo", "rejection_ft") for m in self.methods) and not self.prompts:
            raise ValueError("prompts: the RL methods need a prompts file")
        if not 0 < self.ptx_heldout_fraction < 1:
            raise ValueError(f"ptx_heldout_fraction: must be in (0, 1), got {self.ptx_heldout_fraction}")
        if "ppo_ptx" in self.methods and not self.ptx_corpus:
            raise ValueError("ptx_corpus: ppo_ptx needs a pretraining-like corpus")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    p = Path(path)
    if not p.exists():
        raise AlignloopError(f"config file {p} does not exist", "check the path")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise AlignloopError(f"{p}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AlignloopError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None, cls: type[T] = LoopConfig) -> T:  # type: ignore[assignment]
    """Load ``path`` (or defaults if None) into dataclass ``cls``; errors name the key and the file."""
    if path is None:
        return cls()
    try:
        return from_dict(cls, load_yaml(path))
    except AlignloopError as err:
        if str(path) in str(err):
            raise
        raise AlignloopError(f"{path}: {err.message}", err.hint) from None


def _check_same_stage(saved: Path, cls: type, stage: str) -> None:
    """A clear error when ``--resume`` points at another stage's run folder (instead of "unknown key")."""
    keys = set(load_yaml(saved))
    if keys <= {f.name for f in dataclasses.fields(cls)}:
        return
    stages = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig, "dpo": DPOConfig, "bon": BoNConfig}
    other = next((name for name, c in stages.items() if keys <= {f.name for f in dataclasses.fields(c)}), None)
    # no stage's: another stage's run, or one saved under keys since renamed (ppo.adam_beta1 -> adam_betas)
    unknown = sorted(keys - {f.name for f in dataclasses.fields(cls)})
    what = f"a {other} run" if other else f"a run of another stage (keys not in {stage}: {', '.join(unknown)})"
    raise AlignloopError(
        f"cannot resume {saved.parent} as a {stage} run: it holds {what} (see its config.yaml)",
        f"resume it with `alignloop {other or '<its stage>'} ... --resume`, or give this {stage} run a new --out",
    )


def load_stage_config(
    path: str | os.PathLike[str] | None,
    cls: type[T],
    stage: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    model: str | None = None,
    **overrides: Any,
) -> T:
    """One stage's config as a command line resolves it, validated: the resolved ``config.yaml``
    of the run being resumed (when no file is given), else ``path`` holding either the stage
    alone or a whole loop config (its ``stage`` key), then the command-line overrides (``None``
    = not given; ``model`` names the model). A bad value is an error naming the stage and field."""
    saved = Path(run_dir) / "config.yaml" if run_dir is not None else None
    if resume and path is None and saved is not None and saved.exists():
        _check_same_stage(saved, cls, stage)
        cfg = load_config(saved, cls)
    elif path is None:
        cfg = cls()
    elif set(load_yaml(path)) <= {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        cfg = load_config(path, cls)
    else:
        cfg = getattr(load_config(path, LoopConfig), stage)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if model is not None:
        changes["model"] = dataclasses.replace(cfg.model, name=model)  # type: ignore[attr-defined]
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    try:
        cfg.validate()  # type: ignore[attr-defined]
    except ValueError as err:
        raise AlignloopError(f"{stage} config: {err}") from None
    return cfg


def with_distributed(cfg: T, *, dtype: str | None = None, strategy: str | None = None, **more: Any) -> T:
    """``cfg`` with its ``distributed`` section changed by command-line options (``None`` = not given),
    validated: a bad value is an error naming the field."""
    changes = {k: v for k, v in {"dtype": dtype, "strategy": strategy, **more}.items() if v is not None}
    if not changes:
        return cfg
    dist = dataclasses.replace(cfg.distributed, **changes)  # type: ignore[attr-defined]
    try:
        dist.validate()
    except ValueError as err:
        raise AlignloopError(str(err), "see `distributed:` in examples/configs/fsdp.yaml") from None
    return dataclasses.replace(cfg, distributed=dist)  # type: ignore[type-var]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config next to a run's outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
