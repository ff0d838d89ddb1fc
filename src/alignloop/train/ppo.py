"""PPO against the reward model: the RL step of InstructGPT (paper section 3.5, SPEC section 6).

    objective(phi) = E_{(x,y) ~ pi_phi}[ r_theta(x, y) - beta * log(pi_phi(y|x) / pi_SFT(y|x)) ]
                     + gamma * E_{x ~ D_pretrain}[ log pi_phi(x) ]

One iteration of :meth:`PPOTrainer.train`, each step in a module of its own:

1.-2. :mod:`~alignloop.train.rollout`: the next global batch of prompts (each process takes its
   share) and one sampled response per prompt, with the sampler's log pi_old(y_t);
3.-5. :mod:`~alignloop.train.experience`: RM scores (fixed penalty without EOS), log pi_SFT and
   V(y_<t), rewards r_t = -beta * KL_t (k1) with the score on the last token, GAE(gamma = 1,
   lambda = 0.95), whitened advantages (arithmetic in :mod:`~alignloop.train.ppo_core`);
6. :mod:`~alignloop.train.update`: PPO epochs over shuffled minibatches, one policy step on
   :func:`~alignloop.train.update.policy_objective` (clipped surrogate + gamma * pretraining loss)
   and one clipped value step each;
7. the KL controller moves beta; 8. metrics are logged; 9. a checkpoint is written
   (:mod:`~alignloop.train.ppo_checkpoint`).

The models are built by :mod:`~alignloop.train.ppo_models`. Critic-free RL (``algorithm: rloo |
grpo``, issue 14) runs the same loop without a value model: step 1 takes batch_size / group_size
prompts, each sampled group_size times; step 5's advantages come from the other samples of the
same prompt; step 6 has no value step.

Dropout is off in every model. Under ``accelerate launch`` each process works on its share of
the batch: statistics that need the whole batch (whitening, KL, token counts) are summed across
processes, so N processes compute what one process would with the same global batch. On a CPU,
independent passes may run side by side on the free cores (:mod:`~alignloop.train.cpu_lanes`),
with exactly the numbers of running them one after another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignloop.config import PPOConfig
from alignloop.errors import AlignloopError
from alignloop.models.generation import Generation
from alignloop.models.padding import pad_token_id, right_pad
from alignloop.models.scoring import Scorer
from alignloop.models.value import ValueModel
from alignloop.train import ppo_checkpoint, ppo_core, rollout, update
from alignloop.train.checkpoint import budget_active, budget_spent, interrupt_point, stop_requested
from alignloop.train.cpu_lanes import CpuLanes, block_params, even, release_freed_memory
from alignloop.train.distributed import (
    Precision,
    build_accelerator,
    enable_gradient_checkpointing,
    place_model,
    rank_seed,
    seed_everything,
    shard_model,
)
from alignloop.train.experience import Rollout, experience_lanes, make_experience
from alignloop.train.kl_controller import make_kl_controller
from alignloop.train.ppo_models import build_models
from alignloop.train.run_folder import open_run
from alignloop.train.runlog import RunLog, Timer, track
from alignloop.train.schedule import build_optimizer, constant_or_linear

__all__ = ["OUTPUTS", "PPOResult", "PPOTrainer", "Rollout", "release_freed_memory", "train_ppo"]

OUTPUTS = ("policy",)  # what a PPO run writes besides the common run-folder layout


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
    ``run_dir`` is opened by :func:`~alignloop.train.run_folder.open_run`: a fresh run needs an
    empty folder (``overwrite`` replaces an old PPO run), ``resume`` a checkpoint and the same config.
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
        overwrite: bool = False,
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
        folder = None
        if self.run_dir is not None:  # before anything is written; never mixes two runs in one folder
            folder = open_run(self.run_dir, cfg, stage="PPO", resume=resume, overwrite=overwrite, outputs=OUTPUTS)
        self.progress, self.on_iteration = progress, on_iteration
        self.n_iterations = cfg.total_episodes // cfg.batch_size
        self.local_minibatch = cfg.minibatch_size // self.world
        self.n_minibatches = cfg.batch_size // cfg.minibatch_size
        seed_everything(rank_seed(cfg.seed, self.rank))
        self.sampling = torch.Generator(device=self.device).manual_seed(rank_seed(cfg.seed, self.rank))
        self.lanes = CpuLanes(cfg.concurrent_passes and self.world == 1 and self.device.type == "cpu")
        self.precision = Precision(cfg.distributed.dtype, self.device)
        sharded = cfg.distributed.strategy == "fsdp" and self.world > 1

        models = build_models(cfg, policy, reward, tokenizer, reference, self.device, sharded)
        self.tokenizer, self.scorer, self.rm, self.ref = models.tokenizer, models.scorer, models.rm, models.ref
        self.extra_scorers = dict(extra_scorers or {})
        self.notes = models.notes
        policy_model, value_model = models.policy, models.value
        self.experience_lanes = experience_lanes(
            policy_model, value_model, self.rm, self.ref is None, policy_pass=not cfg.pi_old_from_sampler
        )
        value_cost = block_params(value_model.trunk) if value_model is not None else 0
        self.balanced_update = even(block_params(policy_model), value_cost)

        # Trainable weights of a checkpoint are loaded into the whole models, before placement;
        # under FSDP the optimizers are built on the shards, after it. One optimizer per model,
        # so the policy step and the value step are independent.
        resume_from = folder.checkpoint if folder is not None else None
        if resume_from is not None:
            ppo_checkpoint.load_weights(resume_from, policy_model, value_model)
        if cfg.distributed.gradient_checkpointing:
            for model in (policy_model, value_model):
                if model is not None:
                    enable_gradient_checkpointing(model)
        self.policy, _ = place_model(policy_model, self.acc, cfg.distributed.strategy, self.precision)
        self.value = None
        if value_model is not None:
            self.value, _ = place_model(value_model, self.acc, cfg.distributed.strategy, self.precision)
        if self.ref is not None:
            self.ref = shard_model(self.ref, self.device) if sharded else self.ref.to(self.device)
            self.precision.wrap(self.ref)
        n_updates = self.n_iterations * cfg.ppo_epochs * self.n_minibatches
        self.policy_opt, self.policy_sched = self._optimizer(self.policy, cfg.lr, n_updates)
        self.value_opt = self.value_sched = None  # critic-free (rloo / grpo): no value model, no value step
        if self.value is not None:
            self.value_opt, self.value_sched = self._optimizer(self.value, cfg.value_lr or cfg.lr, n_updates)
        self.kl_ctl = make_kl_controller(cfg.beta, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon)
        self.score_moments = torch.zeros(3, dtype=torch.float64)  # running [sum, sum sq, count] of RM scores
        self.ptx = self._tokenize_ptx(ptx_texts) if cfg.gamma_ptx > 0 else []
        if cfg.gamma_ptx > 0 and not self.ptx:
            raise AlignloopError("gamma_ptx > 0 needs a pretraining corpus", "pass --ptx FILE or set gamma_ptx: 0")

        self.iteration = 0
        if resume_from is not None:
            ppo_checkpoint.load_state(self, resume_from)
        self.log = RunLog(
            self.run_dir or ".",
            cfg,
            resume_step=self.iteration if resume_from is not None else None,
            enabled=self.is_main and self.run_dir is not None,
        )
        self.history: list[dict[str, float]] = []

    # -----------------------------------------------------------------------------------------
    # The loop

    def train(self) -> PPOResult:
        """Run the remaining iterations; save the final policy to ``RUN_DIR/policy``. Torch's thread
        count is as before afterwards, however busy the machine was (what runs next plans by it)."""
        try:
            return self._train()
        finally:
            self.lanes.close()

    def _train(self) -> PPOResult:
        cfg = self.config
        for note in self.notes if self.is_main else []:
            print(f"[ppo] {note}")
        for iteration in track(range(self.iteration, self.n_iterations), "PPO", enabled=self.progress and self.is_main):
            timer = Timer()
            prompts = self.batch_prompts(iteration)  # 1. this process's share of the global batch
            with timer.phase("generate"):
                gen = self.rollout(prompts)  # 2. one sampled response per prompt
            experience = self.make_experience(prompts, gen, timer)  # 3.-5. scores, KL, values, advantages
            with timer.phase("train"):
                train_metrics = self.ppo_update(experience, iteration)  # 6. PPO epochs over minibatches
            self.kl_ctl.update(experience.metrics["kl"], cfg.batch_size)  # 7. the batch's mean KL per sequence
            self.iteration = iteration + 1
            metrics = {  # 8. under stable names
                "episodes": self.iteration * cfg.batch_size,
                **experience.metrics,
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
            every = cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0
            if self.run_dir is not None and (last or interrupted or every):
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
        return bool(self.all_sum(torch.tensor(float(budget_spent()), device=self.acc.device)) > 0)

    def batch_prompts(self, iteration: int) -> list[str]:
        """This process's prompts of ``iteration`` (critic-free: each repeated group_size times)."""
        cfg = self.config
        k = cfg.group_size if cfg.algorithm != "ppo" else 1
        return rollout.batch_prompts(self.prompts, iteration, cfg.batch_size, cfg.seed, self.rank, self.world, k)

    def rollout(self, prompts: list[str]) -> Generation:
        """One sampled response per prompt from the current policy; on a CPU split into one part
        per planned core (each part seeded from this process's sampling generator)."""
        parts = self.lanes.threads if self.lanes.enabled else 1
        policy, config = self.unwrapped_policy, self.config.generation
        with self.frozen_casts():
            return rollout.sample(policy, self.tokenizer, prompts, config, self.sampling, parts, self.lanes.run)

    def make_experience(self, prompts: list[str], gen: Generation, timer: Timer | None = None) -> Rollout:
        """Steps 3-5: see :func:`alignloop.train.experience.make_experience`."""
        with self.frozen_casts():
            return make_experience(self, prompts, gen, timer)

    def ppo_update(self, experience: Rollout, iteration: int | None = None) -> dict[str, float]:
        """Step 6: see :func:`alignloop.train.update.ppo_update`."""
        with self.frozen_casts():
            return update.ppo_update(self, experience, self.iteration if iteration is None else iteration)

    def save_checkpoint(self) -> Path | None:
        return ppo_checkpoint.save(self)

    def save_policy(self, folder: str | os.PathLike[str]) -> Path | None:
        return ppo_checkpoint.save_policy(self, folder)

    # -----------------------------------------------------------------------------------------
    # Helpers the steps share

    def frozen_casts(self) -> AbstractContextManager[int]:
        """The frozen weights of policy, value and reference held in the compute dtype during a phase
        (:meth:`~alignloop.train.distributed.Precision.frozen_weights_cast`: the same numbers, no re-cast
        at each forward); fp32 again between phases, where checkpoints are saved. The reward model is
        left alone: it scores outside autocast, and a shared value model is its trunk."""
        return self.precision.frozen_weights_cast(self.policy, self.value, self.ref, keep=self.rm)

    @property
    def unwrapped_policy(self) -> Any:
        return self.acc.unwrap_model(self.policy)

    @property
    def unwrapped_value(self) -> ValueModel | None:
        return None if self.value is None else self.acc.unwrap_model(self.value)

    def all_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over processes."""
        return self.acc.reduce(t, "sum") if self.world > 1 else t

    def moments(self, x: Tensor, mask: Tensor) -> Tensor:
        """Masked moments of ``x`` over the global batch (see :func:`ppo_core.masked_moments`)."""
        return self.all_sum(ppo_core.masked_moments(x, mask))

    def right_pad(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        return right_pad(rows, pad_token_id(self.tokenizer))

    def _optimizer(self, model: Any, lr: float, n_updates: int) -> tuple[Any, Any]:
        cfg = self.config
        optimizer = build_optimizer(model, lr, weight_decay=0.0, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)
        return optimizer, constant_or_linear(optimizer, cfg.lr_schedule, n_updates)

    def _tokenize_ptx(self, texts: Sequence[str] | None) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        rows = []
        for text in texts or []:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.ptx_max_length - 1]
            if ids:
                rows.append(ids + ([eos] if eos is not None else []))
        return rows


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
