"""Rollout, PPO step 1-2: the iteration's prompts and one sampled response per prompt.

The prompts of an iteration are the next positions of an endless sequence of shuffled epochs
over the prompt set (the data seed is shared by every process; each takes its stride). The
policy samples them with the shared generator (left-padded queries, stop at the first EOS,
softmax(logits / temperature)), which also returns log pi_old(y_t) and the entropy at every
sampled position: the sampler's log-probabilities are pi_old, as in TRL, so no extra forward
pass over the policy is needed before the PPO epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from alignloop.config import GenerationConfig
from alignloop.models.generation import Generation, generate
from alignloop.models.padding import pad_token_id
from alignloop.train.distributed import epoch_order, rank_slice


def endless_epochs(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``[start, start + count)`` of the endless sequence of shuffled epochs over ``n`` items:
    epoch e is the permutation ``epoch_order(n, seed, e)``."""
    chosen, orders = [], {}
    for pos in range(start, start + count):
        epoch = pos // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        chosen.append(orders[epoch][pos % n])
    return chosen


def batch_prompts(
    prompts: Sequence[str], iteration: int, batch_size: int, seed: int, rank: int, world: int, samples: int = 1
) -> list[str]:
    """This process's prompts of ``iteration``: ``batch_size / samples`` positions of the endless
    epochs (shared data seed), strided over processes, each repeated ``samples`` times
    (critic-free RL samples a group per prompt)."""
    b = batch_size // samples
    chosen = endless_epochs(len(prompts), seed, iteration * b, b)
    return [prompts[i] for i in rank_slice(chosen, rank, world) for _ in range(samples)]


def sample(
    policy: Any,
    tokenizer: Any,
    prompts: list[str],
    config: GenerationConfig,
    generator: torch.Generator,
    parts: int,
    run: Callable[..., list[Any]],
) -> Generation:
    """One sampled response per prompt, with the log-probabilities and entropies of its tokens.

    With ``parts`` > 1 the batch is split into that many slices, each sampled with its own seed
    drawn from ``generator`` and handed to ``run`` (which may put them on their own cores:
    token-by-token decoding parallelises poorly); the number of parts alone decides the samples."""
    n_parts = min(len(prompts), parts)
    if n_parts <= 1:
        return generate(policy, tokenizer, prompts, config, generator=generator, return_logprobs=True)
    bounds = [len(prompts) * i // n_parts for i in range(n_parts + 1)]
    seeds = torch.randint(0, 2**62, (n_parts,), generator=generator).tolist()
    slices = run(
        *(
            partial(generate, policy, tokenizer, prompts[a:b], config, seed=seed, return_logprobs=True)
            for a, b, seed in zip(bounds, bounds[1:], seeds, strict=False)
        )
    )
    return join_generations(slices, pad_token_id(tokenizer))


def join_generations(parts: Sequence[Generation], pad_id: int) -> Generation:
    """Generations of consecutive prompt slices as one batch: queries left-padded and responses
    right-padded to common widths (log-probabilities and entropies padded with 0)."""
    q_width = max(g.query_ids.shape[1] for g in parts)
    r_width = max(g.response_ids.shape[1] for g in parts)

    def pad(t: Tensor, width: int, value: float, left: bool) -> Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value) if extra else t

    def joined(name: str) -> Tensor | None:
        if any(getattr(g, name) is None for g in parts):
            return None
        return torch.cat([pad(getattr(g, name), r_width, 0.0, False) for g in parts])

    return Generation(
        query_ids=torch.cat([pad(g.query_ids, q_width, pad_id, True) for g in parts]),
        query_mask=torch.cat([pad(g.query_mask, q_width, 0, True) for g in parts]),
        response_ids=torch.cat([pad(g.response_ids, r_width, pad_id, False) for g in parts]),
        response_mask=torch.cat([pad(g.response_mask, r_width, 0, False) for g in parts]),
        texts=[t for g in parts for t in g.texts],
        has_eos=torch.cat([g.has_eos for g in parts]),
        logprobs=joined("logprobs"),
        entropy=joined("entropy"),
    )
