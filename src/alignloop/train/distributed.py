"""The thin layer over Accelerate that every trainer shares: one process or many, CPU or GPUs.

Two seeds, as the RLHF implementation notes ask (SPEC section 6): the DATA seed is shared by
all ranks, so every rank computes the same shuffled order and takes its own slice of it; the
SAMPLING seed (dropout, generation) differs per rank, so ranks do not draw identical samples.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def build_accelerator(mixed_precision: str = "no", cpu: bool = False) -> Any:
    """An ``accelerate.Accelerator`` (single process when not launched with ``accelerate launch``/torchrun)."""
    os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def rank_seed(seed: int, process_index: int) -> int:
    """The per-rank sampling seed: distinct per rank, reproducible across runs."""
    return seed + 1000003 * process_index


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, data_seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: the same on every rank, different per epoch."""
    g = torch.Generator().manual_seed(data_seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(order: Sequence[int], step: int, global_batch: int, world: int) -> list[int]:
    """Indices of optimizer step ``step`` within an epoch's ``order``. The last step of an epoch
    may be short; with several ranks it is topped up from the epoch's start so every rank gets
    the same number of examples (DistributedSampler does the same)."""
    chunk = list(order[step * global_batch : (step + 1) * global_batch])
    if world > 1 and len(chunk) % world:
        need = world - len(chunk) % world
        chunk += list(order[:need])
    return chunk


def rank_slice(indices: Sequence[int], process_index: int, world: int) -> list[int]:
    """This rank's share of a global list of indices (strided, so shares differ by at most one)."""
    return list(indices[process_index::world])
