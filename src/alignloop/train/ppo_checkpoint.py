"""PPO's checkpoints (exact resume) and the saved policy.

A checkpoint holds everything an exact resume needs: the trainable weights of the policy and the
value model, both optimizers and schedules, the KL controller, the running score statistics, the
iteration and every process's RNG states. The layout is :mod:`alignloop.train.checkpoint`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignloop.errors import AlignloopError
from alignloop.train.checkpoint import load_checkpoint, save_checkpoint
from alignloop.train.distributed import gathered_model, load_optimizer_state, optimizer_state, trainable_state

if TYPE_CHECKING:
    from alignloop.train.ppo import PPOTrainer

POLICY_WEIGHTS = "policy.safetensors"
VALUE_WEIGHTS = "value.safetensors"


def save(t: PPOTrainer) -> Path | None:
    """Write a checkpoint of the run's state (every process calls it: collectives under FSDP)."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    rngs = gather_object([{"sampling": t.sampling.get_state(), "torch": torch.get_rng_state()}])
    weights = [  # collectives under FSDP; critic-free runs have no value model
        trainable_state(m) if m is not None else None for m in (t.unwrapped_policy, t.unwrapped_value)
    ]
    opt_states = [
        optimizer_state(m, o) if m is not None else None for m, o in ((t.policy, t.policy_opt), (t.value, t.value_opt))
    ]
    path = None
    if t.is_main:

        def save_model(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(weights[0], str(folder / POLICY_WEIGHTS))
            if weights[1] is not None:  # critic-free runs have no value model
                save_file(weights[1], str(folder / VALUE_WEIGHTS))

        extra = {
            "iteration": t.iteration,
            "world_size": t.world,
            "kl_controller": t.kl_ctl.state_dict(),
            "score_moments": t.score_moments,
            "rng_per_rank": rngs,
            "policy_optimizer": opt_states[0],
            "value_optimizer": opt_states[1],
            "value_scheduler": t.value_sched.state_dict() if t.value_sched is not None else None,
        }
        path = save_checkpoint(
            t.run_dir, t.iteration, save_model, scheduler=t.policy_sched, extra=extra, keep=t.config.keep_checkpoints
        )
    t.acc.wait_for_everyone()
    return path


def load_weights(path: Path, policy: Any, value: Any) -> None:
    """The checkpoint's trainable weights, into the models before they are placed (and sharded)."""
    from safetensors.torch import load_file

    _load_trainable(policy, load_file(str(path / "model" / POLICY_WEIGHTS)), "policy")
    if value is not None:
        _load_trainable(value, load_file(str(path / "model" / VALUE_WEIGHTS)), "value")


def load_state(t: PPOTrainer, path: Path) -> None:
    """Optimizers, schedules, KL controller, score statistics, iteration and RNG states."""
    state = load_checkpoint(path, scheduler=t.policy_sched)
    extra = state["extra"]
    load_optimizer_state(t.policy, t.policy_opt, extra.get("policy_optimizer") or state["optimizer"])
    if t.value is not None:
        load_optimizer_state(t.value, t.value_opt, extra["value_optimizer"])
        t.value_sched.load_state_dict(extra["value_scheduler"])
    t.kl_ctl.load_state_dict(extra["kl_controller"])
    t.score_moments = extra["score_moments"].clone()
    t.iteration = int(extra["iteration"])
    rngs = extra["rng_per_rank"]
    if len(rngs) == t.world:
        t.sampling.set_state(rngs[t.rank]["sampling"])
        torch.set_rng_state(rngs[t.rank]["torch"])
    else:
        t.notes.append(f"checkpoint from {len(rngs)} processes resumed on {t.world}: sampling reseeded")


def save_policy(t: PPOTrainer, folder: str | os.PathLike[str]) -> Path:
    """The trained policy as a plain Hugging Face folder (LoRA adapters merged) with its tokenizer.
    With LoRA this ends training: the adapters are merged into the weights in place."""
    folder = Path(folder)
    model = gathered_model(t.unwrapped_policy)  # every process: a collective under FSDP
    if t.is_main:
        model.__dict__.pop("forward", None)  # the autocast wrapper (Precision.wrap) is not saved
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(str(folder))
        t.tokenizer.save_pretrained(str(folder))
    t.acc.wait_for_everyone()
    return folder


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
