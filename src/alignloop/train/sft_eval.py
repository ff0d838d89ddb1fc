"""Evaluating an SFT policy during training: validation loss and the reward of its samples.

The paper finds validation loss overfits after one epoch while the RM score of samples keeps
rising, so SFT keeps the epoch with the best sample score when a scorer is given (else the lowest
validation loss). Both functions shard the work across ranks and return the global figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from alignloop.config import SFTConfig
from alignloop.models.generation import generate
from alignloop.models.scoring import Scorer, score_all
from alignloop.train.distributed import is_sharded, rank_seed, rank_slice
from alignloop.train.sft_data import SFTExample, collate, response_logits, response_only_loss


@torch.no_grad()
def validation_loss(model: Any, examples: Sequence[SFTExample], batch_size: int, pad_id: int, accelerator: Any):
    """Mean response-token NLL over ``examples`` (sharded across ranks, dropout off)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    mine = rank_slice(range(len(examples)), accelerator.process_index, accelerator.num_processes)
    n_batches = math.ceil(len(mine) / batch_size)
    if is_sharded(model):  # every process must run as many forwards (each gathers the shards)
        n_batches = math.ceil(math.ceil(len(examples) / accelerator.num_processes) / batch_size)
    for i in range(0, n_batches * batch_size, batch_size):
        rows = mine[i : i + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[j] for j in rows or [0]], pad_id).items()}
        nll, n = response_only_loss(*response_logits(model, batch))
        if rows:
            total += torch.stack([nll.double(), n.double()])
    model.train(was_training)
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    return float(total[0] / total[1].clamp(min=1))


def sample_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], scorer: Scorer, cfg: SFTConfig, accelerator: Any
) -> tuple[float, list[dict[str, Any]]]:
    """Mean scorer score of samples on validation prompts (same seed at every evaluation, so epochs
    are compared on the same random stream), plus this rank's samples for the run folder."""
    mine = rank_slice(list(prompts), accelerator.process_index, accelerator.num_processes)
    model = accelerator.unwrap_model(model)
    share = math.ceil(len(prompts) / accelerator.num_processes) if is_sharded(model) else len(mine)
    filler = [prompts[0]] * (share - len(mine))  # equal sampling work per process under FSDP, then dropped
    gen = generate(model, tokenizer, mine + filler, cfg.generation, seed=rank_seed(cfg.seed, accelerator.process_index))
    scores = score_all(scorer, mine, gen.texts[: len(mine)]) if mine else []
    total = torch.tensor([sum(scores), len(scores)], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    samples = [{"prompt": p, "completion": c, "score": s} for p, c, s in zip(mine, gen.texts, scores, strict=False)]
    return float(total[0] / total[1].clamp(min=1)), samples
