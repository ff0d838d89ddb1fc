"""PPO against the reward model: the RL step of InstructGPT (paper section 3.5, SPEC section 6).

    objective(phi) = E_{(x,y) ~ pi_phi}[ r_theta(x, y) - beta * log(pi_phi(y|x) / pi_SFT(y|x)) ]
                     + gamma * E_{x ~ D_pretrain}[ log pi_phi(x) ]

One iteration of :meth:`PPOTrainer.train`, in the order the code runs it:

1. prompts: the next global batch in a data order shared by every process; each takes its share;
2. rollout: the policy samples one response per prompt (the shared generator: left-padded
   queries, stop at the first EOS, softmax(logits / temperature));
3. score: the RM scores the response truncated after its first EOS; a response without EOS gets
   the fixed penalty score instead;
4. reference and values: log pi_SFT(y_t) from the frozen SFT policy (with LoRA: the same weights
   with the adapters disabled), log pi_old(y_t), and V(y_<t) from the value model;
5. rewards and advantages: r_t = -beta * KL_t (k1) with the score added on the last token;
   GAE(gamma = 1, lambda = 0.95); whitened advantages;
6. PPO epochs: clipped policy loss (+ gamma * pretraining loss for PPO-ptx), then clipped value
   loss, over shuffled minibatches, with the rollout's temperature;
7. the KL controller moves beta; 8. metrics are logged; 9. a checkpoint is written.

Critic-free RL (``algorithm: rloo | grpo``, issue 14) runs the same loop without a value model:
step 1 takes batch_size / group_size prompts, each sampled group_size times; step 5's advantages
come from the other samples of the same prompt (:func:`~alignloop.train.ppo_core.rloo_advantages`,
KL in the reward; :func:`~alignloop.train.ppo_core.grpo_advantages`, KL as the loss term
:func:`~alignloop.train.losses.kl_penalty_loss`); step 6 has no value step.

Dropout is off in every model. Under ``accelerate launch`` each process works on its share of
the batch: statistics that need the whole batch (whitening, KL, token counts) are summed across
processes, so N processes compute what one process would with the same global batch.

Speed and memory on a CPU (one process): passes that do not depend on each other run side by
side on their own cores (the two halves of the rollout's sampling; policy + reference next to
value + RM; the policy step next to the value step), each pass on one core, with exactly the
numbers of running them one after another. Every pass goes through micro-batches of
``micro_batch_size`` rows grouped by length and trimmed of their common padding, and logits are
computed only where a response token is predicted.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignloop.config import PPOConfig
from alignloop.errors import AlignloopError
from alignloop.models.generation import Generation, generate, position_ids_from_mask, response_logprobs
from alignloop.models.loading import disable_dropout, load_policy
from alignloop.models.scoring import Scorer, score_all
from alignloop.models.value import (
    ValueModel,
    value_compatibility,
    value_from_policy,
    value_from_reward_model,
)
from alignloop.train import ppo_core as core
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
    WEIGHT_DTYPES,
    Precision,
    build_accelerator,
    enable_gradient_checkpointing,
    epoch_order,
    frozen_copy,
    gathered_model,
    load_optimizer_state,
    optimizer_state,
    place_model,
    rank_seed,
    rank_slice,
    seed_everything,
    shard_model,
    trainable_state,
)
from alignloop.train.kl_controller import make_kl_controller
from alignloop.train.losses import kl_penalty_loss, ppo_policy_loss, ppo_value_loss, ptx_loss
from alignloop.train.runlog import RunLog, Timer, track

POLICY_WEIGHTS = "policy.safetensors"
VALUE_WEIGHTS = "value.safetensors"


@dataclass
class Rollout:
    """One batch of experience on this process; every tensor has the batch as its first axis.

    ``mask`` covers the response tokens up to and including the first EOS; ``scores`` are the
    per-sequence scores that entered the reward (normalised, with the EOS penalty applied)."""

    prompts: list[str]
    texts: list[str]
    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    mask: Tensor
    has_eos: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor
    metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: Tensor) -> Rollout:
        """The rows ``idx`` (a minibatch)."""
        rows = idx.tolist()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, Tensor) else [v[i] for i in rows] if isinstance(v, list) else v
        return Rollout(**out)

    def trimmed(self) -> Rollout:
        """The same rows without the columns that are padding in every row (left of the queries,
        right of the responses): fewer tokens through the models, identical results."""
        q_width = int(self.query_mask.sum(1).max())
        r_width = max(1, int(self.mask.sum(1).max()))
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("query_ids", "query_mask"):
                v = v[:, v.shape[1] - q_width :]
            elif isinstance(v, Tensor) and v.dim() == 2:
                v = v[:, :r_width]
            out[f.name] = v
        return Rollout(**out)


@dataclass
class PPOResult:
    """What a finished run leaves: its folder, the saved policy and the metrics of each iteration."""

    run_dir: Path | None
    policy_dir: Path | None
    iterations: int
    metrics: list[dict[str, float]]
    is_main: bool = True  # False on the other processes of a distributed run


class PPOTrainer:
    """PPO-RLHF on one process or many (``accelerate launch``).

    ``policy`` is a model folder / registry name, or a causal LM (then pass ``tokenizer``).
    ``reward`` is any :class:`~alignloop.models.scoring.Scorer` or a reward-model folder / URL;
    a local reward model sharing the policy's tokenizer also initialises the value model.
    ``ptx_texts`` is the pretraining corpus of PPO-ptx (used when ``config.gamma_ptx > 0``).
    ``extra_scorers`` (e.g. the gold judge) are logged as ``score_<name>`` and do not train.
    ``reference`` (a folder or a causal LM with the policy's tokenizer) is the KL reference when
    it is not the starting policy: the loop starts round 2 from round 1's policy, but the KL
    penalty stays against pi_SFT (SPEC section 6). Default: a frozen copy of the starting policy.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy: str | Any,
        reward: Scorer | str,
        prompts: Sequence[str],
        run_dir: str | os.PathLike[str] | None = None,
        *,
        tokenizer: Any = None,
        ptx_texts: Sequence[str] | None = None,
        extra_scorers: Mapping[str, Scorer] | None = None,
        accelerator: Any = None,
        resume: bool = False,
        progress: bool = True,
        on_iteration: Callable[[int, dict[str, float]], None] | None = None,
        reference: str | Any | None = None,
    ) -> None:
        try:
            config.validate()
        except ValueError as err:
            raise AlignloopError(f"ppo config: {err}") from None
        self.config = cfg = config
        self.acc = accelerator or build_accelerator()  # the CPU without CUDA: a multi-process CPU launch uses gloo
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.device = self.acc.device
        for name in ("batch_size", "minibatch_size", "ptx_batch_size"):
            if getattr(cfg, name) % self.world:
                raise AlignloopError(
                    f"ppo.{name} = {getattr(cfg, name)} does not split over {self.world} processes",
                    f"use a multiple of {self.world}",
                )
        if cfg.algorithm != "ppo" and (cfg.batch_size // cfg.group_size) % self.world:  # whole groups per process
            raise AlignloopError(
                f"ppo.batch_size / group_size = {cfg.batch_size // cfg.group_size} prompts do not split over "
                f"{self.world} processes",
                f"use a multiple of {self.world * cfg.group_size} for batch_size",
            )
        if not prompts:
            raise AlignloopError("PPO needs at least one prompt", "give a prompts file with records")
        self.prompts = list(prompts)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress, self.on_iteration = progress, on_iteration
        self.n_iterations = cfg.total_episodes // cfg.batch_size
        self.local_batch = cfg.batch_size // self.world
        self.local_minibatch = cfg.minibatch_size // self.world
        self.n_minibatches = cfg.batch_size // cfg.minibatch_size
        seed_everything(rank_seed(cfg.seed, self.rank))
        self.sampling = torch.Generator(device=self.device).manual_seed(rank_seed(cfg.seed, self.rank))
        self.notes: list[str] = []
        self.threads = torch.get_num_threads()
        self.concurrent = cfg.concurrent_passes and self.world == 1 and self.device.type == "cpu"
        self.precision = Precision(cfg.distributed.dtype, self.device)
        sharded = cfg.distributed.strategy == "fsdp" and self.world > 1

        # The policy (dropout off in every model during RL).
        if isinstance(policy, str):
            policy_model, tokenizer = load_policy(policy, cfg.dtype)
        elif tokenizer is None:
            raise AlignloopError("a policy given as a model needs its tokenizer", "pass tokenizer=")
        else:
            policy_model = policy
        self.tokenizer = tokenizer
        disable_dropout(policy_model)
        policy_model.to(self.device)
        # The reward model, and the value model initialised from it (paper section 3.5).
        if isinstance(reward, str):
            from alignloop.models.reward import load_scorer

            reward = load_scorer(reward, device=str(self.device))
        self.scorer = reward
        self.extra_scorers = dict(extra_scorers or {})
        rm = getattr(reward, "model", None)
        rm_tokenizer = getattr(reward, "tokenizer", None)
        if rm is not None and hasattr(rm, "info"):
            rm.requires_grad_(False).eval()
            disable_dropout(rm)
        else:
            rm = None
        why = value_compatibility(rm, tokenizer, rm_tokenizer)
        value_model: ValueModel | None
        if cfg.algorithm != "ppo":  # critic-free (rloo / grpo): no value model is built
            value_model = None
        elif why is None:
            value_model = value_from_reward_model(
                rm, shared=cfg.value_model == "shared", lora_r=cfg.value_lora_r, target_modules=cfg.lora_target_modules
            )
        else:
            self.notes.append(f"value model initialised from the policy trunk with a zero head: {why}")
            try:
                value_model = value_from_policy(
                    policy_model,
                    lora_r=cfg.value_lora_r or (16 if cfg.value_model == "shared" else 0),
                    target_modules=cfg.lora_target_modules,
                    layers=cfg.value_layers,
                )
            except ValueError as err:
                raise AlignloopError(f"ppo config: {err}") from None
        if value_model is not None:
            value_model.to(self.device)
            if rm is not None and (sharded or cfg.distributed.frozen_dtype != "fp32"):
                frozen_copy(value_model, rm, cfg.distributed.frozen_dtype)  # the value keeps fp32 weights of its own
        self.rm = rm

        # The reference: a frozen copy of the SFT policy, or with LoRA the same base without adapters.
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            policy_model.requires_grad_(False)
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=_targets(cfg))
            policy_model = get_peft_model(policy_model, lora)
            self.ref = None
        else:
            policy_model.requires_grad_(True)
            self.ref = None if reference is not None else copy.deepcopy(policy_model).requires_grad_(False).eval()
        if reference is not None:  # a reference other than the starting policy (the loop's SFT policy in round 2+)
            self.ref = load_policy(reference, cfg.dtype)[0] if isinstance(reference, str) else reference
            disable_dropout(self.ref)
            self.ref.requires_grad_(False).eval()
        if self.ref is not None:
            self.ref.to(WEIGHT_DTYPES[cfg.distributed.frozen_dtype])

        # Optimizers: one per model, so the policy step and the value step are independent. Under
        # FSDP they are built on the shards, after placement (and the trainable weights of a
        # checkpoint are loaded before it, into the whole model).
        self.experience_lanes, self.balanced_update = _plan_lanes(policy_model, value_model, rm, self.ref is None)
        resume_from = latest_checkpoint(self.run_dir) if resume and self.run_dir is not None else None
        if resume_from is not None:
            self._load_weights(resume_from, policy_model, value_model)
        if cfg.distributed.gradient_checkpointing:
            enable_gradient_checkpointing(policy_model)
            if value_model is not None:
                enable_gradient_checkpointing(value_model)
        self.policy, _ = place_model(policy_model, self.acc, cfg.distributed.strategy, self.precision)
        self.value = None
        if value_model is not None:
            self.value, _ = place_model(value_model, self.acc, cfg.distributed.strategy, self.precision)
        if self.ref is not None:
            self.ref = shard_model(self.ref, self.device) if sharded else self.ref.to(self.device)
            self.precision.wrap(self.ref)
        n_updates = self.n_iterations * cfg.ppo_epochs * self.n_minibatches
        self.policy_opt = _adamw(self.policy, cfg.lr, cfg.adam_eps)
        self.policy_sched = _schedule(self.policy_opt, cfg.lr_schedule, n_updates)
        self.value_opt = self.value_sched = None  # critic-free (rloo / grpo): no value model, no value step
        if self.value is not None:
            self.value_opt = _adamw(self.value, cfg.value_lr or cfg.lr, cfg.adam_eps)
            self.value_sched = _schedule(self.value_opt, cfg.lr_schedule, n_updates)
        self.kl_ctl = make_kl_controller(cfg.beta, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon)
        self.score_moments = torch.zeros(3, dtype=torch.float64)  # running [sum, sum sq, count] of RM scores
        self.ptx = self._tokenize_ptx(ptx_texts) if cfg.gamma_ptx > 0 else []
        if cfg.gamma_ptx > 0 and not self.ptx:
            raise AlignloopError("gamma_ptx > 0 needs a pretraining corpus", "pass --ptx FILE or set gamma_ptx: 0")

        self.iteration = 0
        resumed = resume_from is not None
        if resumed:
            self._load_checkpoint(resume_from)
        self.log = RunLog(
            self.run_dir or ".",
            cfg,
            resume_step=self.iteration if resumed else None,
            enabled=self.is_main and self.run_dir is not None,
        )
        self.history: list[dict[str, float]] = []

    # -----------------------------------------------------------------------------------------
    # The loop

    def train(self) -> PPOResult:
        """Run the remaining iterations; save the final policy to ``RUN_DIR/policy``."""
        cfg = self.config
        steps = range(self.iteration, self.n_iterations)
        for note in self.notes if self.is_main else []:
            print(f"[ppo] {note}")
        for iteration in track(steps, "PPO", enabled=self.progress and self.is_main):
            timer = Timer()
            # 1. Prompts: the next global batch of a data order every process shares; this process's share.
            prompts = self.batch_prompts(iteration)
            # 2. Rollout: one sampled response per prompt.
            with timer.phase("generate"):
                gen = self.rollout(prompts)
            # 3.-5. Scores, reference log-probs, values, per-token rewards, advantages.
            rollout = self.make_experience(prompts, gen, timer)
            # 6. PPO epochs over minibatches.
            with timer.phase("train"):
                train_metrics = self.ppo_update(rollout, iteration)
            # 7. The KL controller sees the batch's mean KL per sequence.
            self.kl_ctl.update(rollout.metrics["kl"], cfg.batch_size)
            # 8. Metrics, under stable names.
            self.iteration = iteration + 1
            metrics = {
                "episodes": self.iteration * cfg.batch_size,
                **rollout.metrics,
                **train_metrics,
                "beta": self.kl_ctl.value,
                **{f"time_{k}": v for k, v in timer.seconds.items()},
            }
            self.log.log(self.iteration, metrics)
            self.history.append(metrics)
            if self.on_iteration is not None:
                self.on_iteration(self.iteration, metrics)
            # 9. Checkpoint. A spent wall-time budget (`alignloop compare`) ends the run here, with its policy.
            last = self.iteration == self.n_iterations or self._budget_spent()
            interrupted = stop_requested() and not last
            if self.run_dir is not None and (
                last or interrupted or (cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0)
            ):
                self.save_checkpoint()
            if interrupted:
                self.log.close()
                interrupt_point(self.iteration, self.run_dir)  # Ctrl-C / SIGTERM: the checkpoint above is written
            if last:
                break
        policy_dir = self.save_policy(self.run_dir / "policy") if self.run_dir is not None else None
        self.log.close()
        return PPOResult(self.run_dir, policy_dir, self.iteration, self.history, self.is_main)

    def _budget_spent(self) -> bool:
        """:func:`~alignloop.train.checkpoint.budget_spent`, agreed by every process (any one's clock decides)."""
        if not budget_active():
            return False
        return bool(self._all_sum(torch.tensor(float(budget_spent()), device=self.acc.device)) > 0)

    def batch_prompts(self, iteration: int) -> list[str]:
        """This process's prompts of ``iteration``: positions [it*B, (it+1)*B) of the endless
        sequence of shuffled epochs (shared data seed), strided over processes."""
        n, b = len(self.prompts), self.config.batch_size
        k = self.config.group_size if self.config.algorithm != "ppo" else 1  # critic-free: k samples per prompt
        b //= k
        chosen, orders = [], {}
        for pos in range(iteration * b, (iteration + 1) * b):
            epoch = pos // n
            if epoch not in orders:
                orders[epoch] = epoch_order(n, self.config.seed, epoch)
            chosen.append(orders[epoch][pos % n])
        return [self.prompts[i] for i in rank_slice(chosen, self.rank, self.world) for _ in range(k)]

    # -----------------------------------------------------------------------------------------
    # Step 2: rollout

    def rollout(self, prompts: list[str]) -> Generation:
        """One sampled response per prompt from the current policy (the shared generator). On a CPU
        the batch is split over the cores, each part sampled on its own thread with its own seed
        drawn from this process's sampling generator (token-by-token decoding parallelises poorly)."""
        policy, cfg = self.unwrapped_policy, self.config.generation
        n_parts = min(len(prompts), self.threads) if self.concurrent else 1
        if n_parts <= 1:
            return generate(policy, self.tokenizer, prompts, cfg, generator=self.sampling)
        bounds = [len(prompts) * i // n_parts for i in range(n_parts + 1)]
        seeds = torch.randint(0, 2**62, (n_parts,), generator=self.sampling).tolist()
        parts = self._concurrently(
            *(
                partial(generate, policy, self.tokenizer, prompts[a:b], cfg, seed=seed)
                for a, b, seed in zip(bounds, bounds[1:], seeds, strict=False)
            )
        )
        return _join_generations(parts, _pad_id(self.tokenizer))

    # -----------------------------------------------------------------------------------------
    # Steps 3-5: experience

    @torch.no_grad()
    def make_experience(self, prompts: list[str], gen: Generation, timer: Timer | None = None) -> Rollout:
        """Score the sampled responses and turn them into per-token rewards and advantages."""
        cfg = self.config
        timer = timer or Timer()
        q_ids, q_mask = gen.query_ids.to(self.device), gen.query_mask.to(self.device)
        r_ids, has_eos = gen.response_ids.to(self.device), gen.has_eos.to(self.device)
        mask = gen.response_mask.to(self.device).float()

        # 3. The RM scores each response truncated after its first EOS (gen.texts stop before it);
        # 4. log pi_old, log pi_SFT and V for every response token (at the sampling temperature).
        # Passes through the same weights stay in one lane, one after the other: with LoRA the
        # reference is the policy with its adapters switched off, and a shared value model switches
        # its adapters on in the RM's trunk; that switch is module state every thread sees
        # (overlapping it would make pi_old == pi_SFT, or score with the value's adapters). The two
        # lanes, chosen in __init__ to cost about the same, run side by side.
        passes: dict[str, Callable[[], Any]] = {
            "policy": lambda: self._chunked(self._policy_logprobs, q_ids, q_mask, r_ids, mask),
            "reference": lambda: self._chunked(self._ref_logprobs, q_ids, q_mask, r_ids, mask)[0],
            "value": lambda: self._chunked(self._rollout_values, q_ids, q_mask, r_ids, mask)[0],
            "reward": lambda: (
                torch.tensor(score_all(self.scorer, prompts, gen.texts), dtype=torch.float32),
                {n: torch.tensor(score_all(s, prompts, gen.texts)) for n, s in self.extra_scorers.items()},
            ),
        }

        def lane(names: tuple[str, ...]) -> dict[str, Any]:
            return {name: passes[name]() for name in names}

        with timer.phase("score"):
            lanes = self._concurrently(*(partial(lane, names) for names in self.experience_lanes))
        out = {k: v for done in lanes for k, v in done.items()}
        (logprobs, entropy), ref_logprobs = out["policy"], out["reference"]
        values = out["value"] if "value" in out else torch.zeros_like(mask)  # critic-free: no value pass
        rm_scores, extra = out["reward"]
        rm_scores = rm_scores.to(self.device)
        scores = rm_scores
        if cfg.score_norm:  # running statistics of the whole run, summed over processes
            self.score_moments += self._all_sum(core.masked_moments(rm_scores, torch.ones_like(rm_scores))).cpu()
            mean, var = core.moments_mean_var(self.score_moments)
            scores = (rm_scores - mean.float()) / torch.sqrt(var.float() + 1e-8)
        scores = core.apply_eos_penalty(scores, has_eos, cfg.no_eos_penalty)

        # 5. Per-token rewards: -beta * KL_t (k1) with the score on the last token; GAE; whitening.
        kl = core.kl_k1(logprobs, ref_logprobs) * mask
        beta_in_reward = 0.0 if cfg.algorithm == "grpo" else self.kl_ctl.value  # GRPO: KL in the loss instead
        rewards, non_score = core.per_token_rewards(scores, kl, mask, beta_in_reward)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, moments=self._moments(rewards, mask))
        if cfg.algorithm == "rloo":  # critic-free: the baseline is the prompt's other samples
            advantages, _ = core.rloo_advantages(scores, kl, mask, self.kl_ctl.value, cfg.group_size)
            returns = advantages
        elif cfg.algorithm == "grpo":
            advantages = returns = core.grpo_advantages(scores, mask, cfg.group_size)
        else:
            advantages, returns = core.gae(rewards, values, mask, cfg.gae_gamma, cfg.gae_lambda)
        if cfg.whiten_advantages and cfg.algorithm != "grpo":  # GRPO's are normalised per group already
            advantages = core.masked_whiten(advantages, mask, moments=self._moments(advantages, mask))

        # Metrics of the global batch: per-sequence sums averaged over sequences, token means over tokens.
        ones = torch.ones_like(rm_scores)
        seq = {
            "rm_score": rm_scores,
            "score": scores,
            "kl": kl.sum(1),
            "kl_k3": (core.kl_k3(logprobs, ref_logprobs) * mask).sum(1),
            "non_score_reward": non_score.sum(1),
            "reward": rewards.sum(1),
            "response_length": mask.sum(1),
            "eos_rate": has_eos.float(),
            **{f"score_{name}": s.to(self.device, torch.float32) for name, s in extra.items()},
        }
        if self.rm is not None and self.rm.info.gain:
            seq["rm_score_raw"] = (rm_scores - self.rm.info.bias) / self.rm.info.gain
        sums = self._all_sum(torch.stack([v.double().sum() for v in seq.values()] + [ones.double().sum()]))
        metrics = {k: (sums[i] / sums[-1]).item() for i, k in enumerate(seq)}
        tok = self._all_sum(torch.stack([(entropy * mask).sum(), (values * mask).sum(), mask.sum()]).double())
        metrics["entropy"] = (tok[0] / tok[2]).item()
        metrics["value_mean"] = (tok[1] / tok[2]).item()
        ret_m, res_m = self._moments(returns, mask), self._moments(returns - values, mask)
        var_ret = core.moments_mean_var(ret_m)[1]
        metrics["explained_variance"] = (1 - core.moments_mean_var(res_m)[1] / var_ret.clamp(min=1e-8)).item()
        return Rollout(
            prompts=list(prompts),
            texts=list(gen.texts),
            query_ids=q_ids,
            query_mask=q_mask,
            response_ids=r_ids,
            mask=mask,
            has_eos=has_eos,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            scores=scores,
            rewards=rewards,
            advantages=advantages,
            returns=returns,
            metrics=metrics,
        )

    # -----------------------------------------------------------------------------------------
    # Step 6: PPO epochs

    def ppo_update(self, rollout: Rollout, iteration: int | None = None) -> dict[str, float]:
        """``ppo_epochs`` passes over shuffled minibatches; each minibatch makes one policy step
        and one value step (independent of each other: on a CPU they run side by side)."""
        cfg = self.config
        iteration = self.iteration if iteration is None else iteration
        self.policy.train()
        steps = [self._policy_step]
        if self.value is not None:  # critic-free: no value step
            self.value.train()
            steps.append(self._value_step)
        totals: dict[str, Tensor] = {}
        update = 0
        for epoch in range(cfg.ppo_epochs):
            # The minibatch order: the data seed, the iteration and the epoch (not the sampling RNG).
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration * 1_009 + epoch)
            perm = torch.randperm(len(rollout), generator=g)
            for k in range(self.n_minibatches):
                mb = rollout.select(perm[k * self.local_minibatch : (k + 1) * self.local_minibatch].to(self.device))
                # Loss sums are divided by (global tokens / processes): DDP's gradient mean is then
                # the gradient of the mean over every token of the global minibatch.
                tokens = self._all_sum(mb.mask.sum().double()).float() / self.world
                parts = self._micro(mb)
                # 6a. policy step and 6b. value step
                for stats in self._concurrently(
                    partial(self._policy_step, parts, tokens, iteration, update),
                    *(partial(step, parts, tokens) for step in steps[1:]),
                    balanced=self.balanced_update,
                ):
                    for name, v in stats.items():
                        totals[name] = totals.get(name, 0) + v.detach().double()
                update += 1

        names = sorted(totals)
        summed = self._all_sum(torch.stack([totals[k] for k in names])) if names else torch.zeros(0)
        t = dict(zip(names, summed.tolist(), strict=True))
        n_tokens = max(t.get("tokens", 1.0), 1.0)
        metrics = {
            "policy_loss": t["policy_loss_sum"] / n_tokens,
            "clipfrac": t["clipfrac_sum"] / n_tokens,
            "approx_kl": t["approx_kl_sum"] / n_tokens,
            "lr": self.policy_sched.get_last_lr()[0],
        }
        if "value_loss_sum" in t:
            metrics["value_loss"] = t["value_loss_sum"] / n_tokens
            metrics["vf_clipfrac"] = t["vf_clipfrac_sum"] / n_tokens
        if "kl_loss_sum" in t:  # grpo
            metrics["kl_loss"] = t["kl_loss_sum"] / n_tokens
        if "ptx_loss_sum" in t:
            metrics["ptx_loss"] = t["ptx_loss_sum"] / max(t["ptx_tokens"], 1.0)
        return metrics

    def _policy_step(self, parts: list[Rollout], tokens: Tensor, iteration: int, update: int) -> dict[str, Tensor]:
        """6a. One policy step: the clipped surrogate on the rollout's advantages (+ gamma * ptx loss)."""
        cfg = self.config
        stats: dict[str, Tensor] = {}
        for i, part in enumerate(parts):
            with self._sync_if(self.policy, i == len(parts) - 1 and cfg.gamma_ptx == 0):
                logprobs, _ = response_logprobs(
                    self.policy,
                    part.query_ids,
                    part.query_mask,
                    part.response_ids,
                    cfg.generation.temperature,
                    response_mask=part.mask,
                )
                loss, s = ppo_policy_loss(
                    logprobs, part.logprobs, part.advantages, part.mask, cfg.clip_range, token_count=tokens
                )
                if cfg.algorithm == "grpo":  # critic-free: beta * k3 KL to the reference as a loss term
                    kl_loss = kl_penalty_loss(logprobs, part.ref_logprobs, part.mask, token_count=tokens)
                    s["kl_loss_sum"] = kl_loss.detach() * tokens
                    loss = loss + self.kl_ctl.value * kl_loss
                self.precision.backward(self.acc, loss)
            release_freed_memory()
            _accumulate(stats, {**s, "policy_loss_sum": loss.detach() * tokens})
        if cfg.gamma_ptx > 0:
            loss, s = self._ptx_loss(iteration, update)
            self.precision.backward(self.acc, cfg.gamma_ptx * loss)
            _accumulate(stats, s)
        self._optimizer_step(self.policy, self.policy_opt, self.policy_sched)
        return stats

    def _value_step(self, parts: list[Rollout], tokens: Tensor) -> dict[str, Tensor]:
        """6b. One value step: the clipped value loss toward the GAE returns."""
        cfg = self.config
        stats: dict[str, Tensor] = {}
        for i, part in enumerate(parts):
            with self._sync_if(self.value, i == len(parts) - 1):
                (values,) = self._values(part.query_ids, part.query_mask, part.response_ids, part.mask)
                loss, s = ppo_value_loss(
                    values, part.values, part.returns, part.mask, cfg.clip_range_value, token_count=tokens
                )
                self.precision.backward(self.acc, cfg.vf_coef * loss)
            release_freed_memory()
            _accumulate(stats, {"vf_clipfrac_sum": s["vf_clipfrac_sum"], "value_loss_sum": loss.detach() * tokens})
        self._optimizer_step(self.value, self.value_opt, self.value_sched)
        return stats

    def _concurrently(self, *tasks: Callable[[], Any], balanced: bool = True) -> list[Any]:
        """Run independent passes, on their own threads when that pays: one process on a CPU with
        several cores, and passes of similar cost (``balanced``). Each thread then gets an equal
        share of the cores, because two passes side by side on one core each beat one pass at a
        time split over two cores; but a short pass beside a long one leaves its core idle, and
        then one after the other on all cores is faster. DDP needs its collectives in the same
        order on every rank: sequential there."""
        workers = min(len(tasks), self.threads) if self.concurrent and balanced else 1
        if workers <= 1:
            return [task() for task in tasks]
        grad = torch.is_grad_enabled()  # thread-local: the workers must inherit the caller's mode

        def run(task: Callable[[], Any]) -> Any:
            with torch.set_grad_enabled(grad):
                return task()

        torch.set_num_threads(max(1, self.threads // workers))
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(run, task) for task in tasks]
                return [f.result() for f in futures]
        finally:
            torch.set_num_threads(self.threads)

    def _sync_if(self, model: Any, sync: bool) -> Any:
        """Gradients are averaged across processes on the last backward of an update only."""
        return contextlib.nullcontext() if sync else self.acc.no_sync(model)

    def _optimizer_step(self, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Clip, step, advance the schedule, and free the gradients at once (memory)."""
        self.precision.step(optimizer, [p for p in model.parameters() if p.requires_grad], self.config.max_grad_norm)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        release_freed_memory()

    def _ptx_loss(self, iteration: int, update: int) -> tuple[Tensor, dict[str, Tensor]]:
        """PPO-ptx: the mean token NLL of this update's pretraining batch (temperature 1)."""
        cfg = self.config
        step = iteration * cfg.ppo_epochs * self.n_minibatches + update
        n, b = len(self.ptx), cfg.ptx_batch_size
        chosen, orders = [], {}
        for pos in range(step * b, (step + 1) * b):
            epoch = pos // n
            if epoch not in orders:
                orders[epoch] = epoch_order(n, cfg.seed + 1, epoch)
            chosen.append(orders[epoch][pos % n])
        rows = [self.ptx[i] for i in rank_slice(chosen, self.rank, self.world)]
        ids, attn = _right_pad(rows, _pad_id(self.tokenizer))
        ids, attn = ids.to(self.device), attn.to(self.device)
        logits = self.policy(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
        labels, mask = ids[:, 1:], attn[:, 1:].float()
        tokens = self._all_sum(mask.sum().double()).float() / self.world
        loss = ptx_loss(logits, labels, mask, token_count=tokens)
        return loss, {"ptx_loss_sum": loss.detach() * tokens, "ptx_tokens": mask.sum()}

    # -----------------------------------------------------------------------------------------
    # Forward passes

    @property
    def unwrapped_policy(self) -> Any:
        return self.acc.unwrap_model(self.policy)

    @property
    def unwrapped_value(self) -> ValueModel | None:
        return None if self.value is None else self.acc.unwrap_model(self.value)

    def _policy_logprobs(self, q, qm, r, mask) -> tuple[Tensor, Tensor]:
        t = self.config.generation.temperature
        return response_logprobs(self.unwrapped_policy, q, qm, r, t, response_mask=mask)

    def _ref_logprobs(self, q, qm, r, mask) -> tuple[Tensor, Tensor]:
        t = self.config.generation.temperature
        if self.ref is not None:
            return response_logprobs(self.ref, q, qm, r, t, response_mask=mask)
        with self.unwrapped_policy.disable_adapter():
            return response_logprobs(self.unwrapped_policy, q, qm, r, t, response_mask=mask)

    def _rollout_values(self, q, qm, r, mask) -> tuple[Tensor]:
        return self._values(q, qm, r, mask, model=self.unwrapped_value)  # no DDP hooks outside training

    def _values(self, q, qm, r, mask, model: Any = None) -> tuple[Tensor]:
        """V at the positions that predict each response token (the state before it)."""
        model = self.value if model is None else model
        ids = torch.cat([q, r], dim=1)
        attn = torch.cat([qm, torch.ones_like(r)], dim=1)
        values = model(
            input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), keep=r.shape[1] + 1
        )
        return (values[:, :-1] * mask,)

    def _micro(self, batch: Rollout) -> list[Rollout]:
        """Micro-batches of ``micro_batch_size`` rows, grouped by query length and trimmed of their
        common padding (fewer padded tokens through the models)."""
        return [batch.select(rows).trimmed() for rows in self._row_groups(batch.query_mask)]

    def _row_groups(self, query_mask: Tensor) -> list[Tensor]:
        n = query_mask.shape[0]
        size = self.config.micro_batch_size or n
        order = torch.argsort(query_mask.sum(1), descending=True, stable=True) if size < n else torch.arange(n)
        return [order[i : i + size].to(query_mask.device) for i in range(0, n, size)]

    def _chunked(self, fn: Callable[..., tuple[Tensor, ...]], q, qm, r, mask) -> tuple[Tensor, ...]:
        """``fn`` over micro-batches of rows trimmed of their common padding; per-token outputs are
        put back in row order at the full response width."""
        outs: list[Tensor] | None = None
        for rows in self._row_groups(qm):
            q_width = int(qm[rows].sum(1).max())
            r_width = max(1, int(mask[rows].sum(1).max()))
            part = fn(q[rows, -q_width:], qm[rows, -q_width:], r[rows, :r_width], mask[rows, :r_width])
            if outs is None:
                outs = [x.new_zeros((q.shape[0], r.shape[1])) for x in part]
            for out, x in zip(outs, part, strict=True):
                out[rows, :r_width] = x
        return tuple(outs or ())

    # -----------------------------------------------------------------------------------------
    # Sums over processes

    def _all_sum(self, t: Tensor) -> Tensor:
        return self.acc.reduce(t, "sum") if self.world > 1 else t

    def _moments(self, x: Tensor, mask: Tensor) -> Tensor:
        return self._all_sum(core.masked_moments(x, mask))

    # -----------------------------------------------------------------------------------------
    # PPO-ptx corpus

    def _tokenize_ptx(self, texts: Sequence[str] | None) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        rows = []
        for text in texts or []:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.ptx_max_length - 1]
            if ids:
                rows.append(ids + ([eos] if eos is not None else []))
        return rows

    # -----------------------------------------------------------------------------------------
    # Checkpoints and the saved policy

    def save_checkpoint(self) -> Path | None:
        """Everything exact resume needs: trainable weights, both optimizers and schedules, the KL
        controller, the score statistics, the iteration and every process's RNG states."""
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        rngs = gather_object([{"sampling": self.sampling.get_state(), "torch": torch.get_rng_state()}])
        weights = [  # collectives under FSDP; critic-free runs have no value model
            trainable_state(m) if m is not None else None for m in (self.unwrapped_policy, self.unwrapped_value)
        ]
        opt_states = [
            optimizer_state(m, o) if m is not None else None
            for m, o in ((self.policy, self.policy_opt), (self.value, self.value_opt))
        ]
        path = None
        if self.is_main:

            def save_model(folder: Path) -> None:
                folder.mkdir(parents=True, exist_ok=True)
                save_file(weights[0], str(folder / POLICY_WEIGHTS))
                if weights[1] is not None:  # critic-free runs have no value model
                    save_file(weights[1], str(folder / VALUE_WEIGHTS))

            extra = {
                "iteration": self.iteration,
                "world_size": self.world,
                "kl_controller": self.kl_ctl.state_dict(),
                "score_moments": self.score_moments,
                "rng_per_rank": rngs,
                "policy_optimizer": opt_states[0],
                "value_optimizer": opt_states[1],
                "value_scheduler": self.value_sched.state_dict() if self.value_sched is not None else None,
            }
            path = save_checkpoint(
                self.run_dir,
                self.iteration,
                save_model,
                scheduler=self.policy_sched,
                extra=extra,
                keep=self.config.keep_checkpoints,
            )
        self.acc.wait_for_everyone()
        return path

    def _load_weights(self, path: Path, policy: Any, value: Any) -> None:
        """The checkpoint's trainable weights, into the models before they are placed (and sharded)."""
        from safetensors.torch import load_file

        _load_trainable(policy, load_file(str(path / "model" / POLICY_WEIGHTS)), "policy")
        if value is not None:
            _load_trainable(value, load_file(str(path / "model" / VALUE_WEIGHTS)), "value")

    def _load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, scheduler=self.policy_sched)
        extra = state["extra"]
        load_optimizer_state(self.policy, self.policy_opt, extra.get("policy_optimizer") or state["optimizer"])
        if self.value is not None:
            load_optimizer_state(self.value, self.value_opt, extra["value_optimizer"])
            self.value_sched.load_state_dict(extra["value_scheduler"])
        self.kl_ctl.load_state_dict(extra["kl_controller"])
        self.score_moments = extra["score_moments"].clone()
        self.iteration = int(extra["iteration"])
        rngs = extra["rng_per_rank"]
        if len(rngs) == self.world:
            self.sampling.set_state(rngs[self.rank]["sampling"])
            torch.set_rng_state(rngs[self.rank]["torch"])
        else:
            self.notes.append(f"checkpoint from {len(rngs)} processes resumed on {self.world}: sampling reseeded")

    def save_policy(self, folder: str | os.PathLike[str]) -> Path | None:
        """The trained policy as a plain Hugging Face folder (LoRA adapters merged) with its tokenizer.
        With LoRA this ends training: the adapters are merged into the weights in place."""
        folder = Path(folder)
        model = gathered_model(self.unwrapped_policy)  # every process: a collective under FSDP
        if self.is_main:
            model.__dict__.pop("forward", None)  # the autocast wrapper (Precision.wrap) is not saved
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
            model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))
        self.acc.wait_for_everyone()
        return folder


def train_ppo(
    config: PPOConfig,
    policy: str | Any,
    reward: Scorer | str,
    prompts: Sequence[str],
    run_dir: str | os.PathLike[str] | None,
    **kwargs: Any,
) -> PPOResult:
    """Run PPO from start (or from the last checkpoint with ``resume=True``); see :class:`PPOTrainer`."""
    return PPOTrainer(config, policy, reward, prompts, run_dir, **kwargs).train()


# ---------------------------------------------------------------------------------------------
# Small helpers


def _join_generations(parts: Sequence[Generation], pad_id: int) -> Generation:
    """Generations of consecutive prompt slices as one batch: queries left-padded and responses
    right-padded to common widths."""
    q_width = max(g.query_ids.shape[1] for g in parts)
    r_width = max(g.response_ids.shape[1] for g in parts)

    def pad(t: Tensor, width: int, value: int, left: bool) -> Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value) if extra else t

    return Generation(
        query_ids=torch.cat([pad(g.query_ids, q_width, pad_id, True) for g in parts]),
        query_mask=torch.cat([pad(g.query_mask, q_width, 0, True) for g in parts]),
        response_ids=torch.cat([pad(g.response_ids, r_width, pad_id, False) for g in parts]),
        response_mask=torch.cat([pad(g.response_mask, r_width, 0, False) for g in parts]),
        texts=[t for g in parts for t in g.texts],
        has_eos=torch.cat([g.has_eos for g in parts]),
    )


def _block_params(model: Any) -> int:
    """Parameters a forward pass multiplies with, per token: all but the token embeddings."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _plan_lanes(
    policy: Any, value: ValueModel | None, rm: Any, lora_reference: bool, ratio: float = 0.5
) -> tuple[list[tuple[str, ...]], bool]:
    """How the experience passes split into lanes, and whether the update's two steps run side by side.

    Experience passes: policy, reference, value, reward (the RM and any extra scorers). The
    policy and a LoRA reference share weights, as do a shared value model and the RM, so each
    such pair stays in one lane. Of the allowed two-lane splits the one whose slower lane costs
    least (by parameters multiplied per token) is kept when its lanes are even (the cheaper
    >= ``ratio`` * the dearer); else all passes run in one lane on all cores. The update's steps
    are the policy step and the value step, even or not by the same rule."""

    def even(x: int, y: int) -> bool:
        return min(x, y) >= ratio * max(x, y)

    p, v = _block_params(policy), _block_params(value.trunk) if value is not None else 0
    r = _block_params(rm) if rm is not None else 0
    cost = {"policy": p, "reference": p, "value": v, "reward": r}
    if value is None:  # critic-free: no value pass
        del cost["value"]
    together = [{"policy", "reference"}] if lora_reference else []
    if value is not None and value.shares_trunk:
        together.append({"value", "reward"})
    names = tuple(cost)
    best: tuple[int, tuple[str, ...], tuple[str, ...]] | None = None
    for mask in range(1, 2 ** (len(names) - 1)):  # every split of the four passes into two non-empty lanes
        a = tuple(n for i, n in enumerate(names) if not mask >> i & 1)
        b = tuple(n for i, n in enumerate(names) if mask >> i & 1)
        if any(not (pair <= set(a) or pair <= set(b)) for pair in together):
            continue
        ca, cb = sum(cost[n] for n in a), sum(cost[n] for n in b)
        if even(ca, cb) and (best is None or max(ca, cb) < best[0]):
            best = (max(ca, cb), a, b)
    lanes = [best[1], best[2]] if best is not None else [names]
    return lanes, even(p, v)


def _accumulate(into: dict[str, Tensor], stats: Mapping[str, Tensor]) -> None:
    for k, v in stats.items():
        into[k] = into.get(k, 0) + v.detach()


def _targets(cfg: PPOConfig) -> str | list[str]:
    spec = cfg.lora_target_modules
    return spec if spec == "all-linear" else [s.strip() for s in spec.split(",") if s.strip()]


def _adamw(model: Any, lr: float, eps: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel (one pass per tensor, no temporaries)
    where the device and dtype allow it."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=0.0, fused=fused or None)


def _schedule(optimizer: torch.optim.Optimizer, kind: str, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, total)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)




def _load_trainable(model: Any, state: dict[str, Tensor], what: str) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise AlignloopError(
            f"checkpoint {what} weights do not fit the model ({len(missing)} missing, {len(unknown)} unknown)",
            "resume with the same policy, reward model and LoRA settings as the interrupted run",
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def release_freed_memory() -> None:
    """Hand memory freed by the last backward pass back to the OS. glibc keeps freed blocks of the
    activations and gradients in its heap, fragmented, so a process's memory would grow by their
    size on every step; ``malloc_trim`` returns them (Linux/glibc only; elsewhere a no-op)."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux") and not torch.cuda.is_available():  # GPU memory is not the heap
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def iterate_texts(path: str | os.PathLike[str]) -> Iterator[str]:
    """Documents of a plain-text pretraining corpus: a ``.jsonl`` file with a ``text`` field per line,
    or a text file whose documents are separated by blank lines."""
    import json

    p = Path(path)
    if not p.exists():
        raise AlignloopError(f"{p}: no such file", "give the pretraining corpus for PPO-ptx (.txt or .jsonl)")
    if p.suffix == ".jsonl":
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise AlignloopError(f"{p}:{lineno}: invalid JSON ({err.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise AlignloopError(f"{p}:{lineno}: expected an object with a string field 'text'")
                yield obj["text"]
        return
    for block in p.read_text(encoding="utf-8").split("\n\n"):
        if block.strip():
            yield block.strip()
