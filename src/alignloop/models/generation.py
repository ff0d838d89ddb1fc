"""The one batched sampler of the loop: SFT evaluation, best-of-N, PPO rollouts and evaluation.

A plain decoding loop over steps with the KV cache, written out so that every detail PPO
depends on (SPEC section 6, Huang et al.) is visible and tested:

* queries are LEFT-padded, with position ids counted from each query's first real token, so
  a padded prompt decodes exactly as it would alone;
* each sequence stops at its own EOS; tokens after it are the pad id (distinct from EOS) and
  the response mask is 1 up to and including the first EOS;
* the sampling distribution is softmax(logits / temperature), optionally truncated to the
  nucleus ``top_p``; ``temperature == 0`` is greedy;
* a ``torch.Generator`` makes sampling reproducible without touching the global RNG (so
  evaluating in the middle of training does not change the training run);
* :func:`response_logprobs` recomputes log pi(y_t | x, y_<t) at the same temperature in one
  forward pass, the quantity PPO's ratio and KL penalty use.

Prompts are the raw instructions; they are formatted with the chat template
(:func:`~alignloop.models.loading.format_prompt`) here. Chat prompts contain the EOS token
(``<|im_end|>``) themselves, so EOS is only ever looked for in the response, never in the query.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignloop.config import GenerationConfig
from alignloop.models.loading import format_prompt
from alignloop.models.padding import left_pad, pad_token_id


@dataclass
class Generation:
    """A batch of sampled responses, aligned row by row with the prompts.

    ``query_ids``/``query_mask`` are left-padded; ``response_ids`` hold the pad id after the
    first EOS; ``response_mask`` is 1 up to and including the first EOS (all ones up to
    ``max_new_tokens`` when the response never ended); ``logprobs`` are log-probabilities of the
    sampled tokens under softmax(logits / temperature) and ``entropy`` that distribution's entropy
    at each sampled position (both 0 where masked), when requested.
    """

    query_ids: torch.Tensor  # (B, Lq) long
    query_mask: torch.Tensor  # (B, Lq) long
    response_ids: torch.Tensor  # (B, Lr) long
    response_mask: torch.Tensor  # (B, Lr) long
    texts: list[str]
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor | None = None  # (B, Lr) float
    entropy: torch.Tensor | None = None  # (B, Lr) float

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def response_lengths(self) -> torch.Tensor:
        """Tokens per response, EOS included."""
        return self.response_mask.sum(-1)


def query_token_ids(tokenizer: Any, prompt: str, *, formatted: bool = True) -> list[int]:
    """Token ids of one query exactly as generation and SFT see it: the chat-formatted prompt with
    no extra special tokens (the template already holds them). SFT uses this too, so the model
    is trained on the very prefix it is sampled from."""
    text = format_prompt(tokenizer, prompt) if formatted else prompt
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding gets position 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_next_token(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token per row from softmax(logits / temperature) restricted to the top-p nucleus.

    ``temperature <= 0`` is greedy. The nucleus keeps the most probable tokens whose cumulative
    probability first reaches ``top_p`` (always at least one token), so a tiny ``top_p`` is greedy.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p  # the tokens before already hold top_p
        drop[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    return _inverse_cdf_draw(scaled.softmax(-1), generator)


def _inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One exact draw per row from ``probs`` by inverting its cumulative distribution.

    Why not ``torch.multinomial``: on the CPU it costs ~30 ms for 16 rows of a 49k vocabulary, 17x
    this cumsum + binary search, and sampling calls it once per generated token. ``right=True``
    never lands on a zero-probability token (its CDF equals its predecessor's); a uniform draw
    that rounds up to the row's total is clamped to the last token with positive probability."""
    cdf = probs.cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=probs.dtype) * total
    index = torch.searchsorted(cdf, u, right=True).clamp_max(probs.shape[-1] - 1)
    rounded_up = probs.gather(-1, index) == 0  # rare: only past the last token with probability
    if rounded_up.any():
        index = torch.where(rounded_up, (cdf < total).sum(-1, keepdim=True), index)
    return index.squeeze(-1)


def _all_finished(model: Any, finished: torch.Tensor) -> bool:
    """Whether every row has ended. Under FSDP every process must run the same number of forward
    passes (each gathers the shards), so decoding stops when all rows of every process have ended."""
    from alignloop.train.distributed import is_sharded

    done = finished.all()
    if is_sharded(model):
        import torch.distributed as dist

        flag = done.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        done = flag.bool()
    return bool(done)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _unwrap(model: Any) -> Any:
    """Sampling needs no gradient sync: step past a DistributedDataParallel wrapper."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model (under any PEFT or DDP wrapper) projects only the last positions on request."""
    inner = _unwrap(model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def new_kv_cache(model: Any) -> Any:
    """An empty KV cache for ``model``, created here and passed to every forward as ``cache=``.

    This is transformers' current cache API (``Cache`` objects, the ``cache`` keyword): the sampler
    owns the cache, so it never reads a cache back from a model output and never passes the
    ``past_key_values`` keyword that transformers 5.2x deprecates (removed in 5.40). The model's
    config tells :class:`~transformers.DynamicCache` which layers use a sliding window, as the model
    itself would if it built the cache."""
    from transformers import DynamicCache

    config = getattr(_unwrap(model), "config", None)
    return DynamicCache(config=config) if config is not None else DynamicCache()


def _forward(model: Any, **inputs: Any) -> Any:
    """One forward pass projecting only the last position onto the vocabulary (``logits_to_keep``):
    on a 49k-token vocabulary the prefill's full projection would cost more than the decoding."""
    if accepts_logits_to_keep(model):
        return model(**inputs, logits_to_keep=1)
    return model(**inputs)


def _prefill(model: Any, query_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, cache: Any):
    """The prefill pass into ``cache``, run once per distinct query: K samples of one prompt
    (rankings, best-of-N, evaluation) share it, and the cache's rows are then gathered out to every
    sample with :meth:`~transformers.Cache.reorder_cache` (an index_select on the batch dimension that
    every cache layer type implements, recurrent and quantized ones included; ``batch_select_indices``
    skips the recurrent states). On a CPU the prefill of a 50-token prompt costs about as much as
    decoding 32 tokens. Returns the last position's logits, one row per query."""
    rows = torch.cat([query_ids, attention], dim=1)
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if uniq.shape[0] < rows.shape[0]:
        width = query_ids.shape[1]
        mask = uniq[:, width:]
        out = _forward(
            model,
            input_ids=uniq[:, :width],
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            cache=cache,
            use_cache=True,
        )
        cache.reorder_cache(inverse)
        return out.logits[:, -1, :][inverse]
    out = _forward(
        model, input_ids=query_ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True
    )
    return out.logits[:, -1, :]


@torch.no_grad()
def _sample_micro_batch(
    model: Any,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    config: GenerationConfig,
    eos_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None,
    want_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Decode one micro-batch step by step with the KV cache; returns (tokens, mask, has_eos,
    logprobs, entropy)."""
    batch = query_ids.shape[0]
    device = query_ids.device
    attention = query_mask
    positions = position_ids_from_mask(query_mask)
    # 1. prefill: the whole query in one pass; only the last position's logits are needed
    cache = new_kv_cache(model)
    logits = _prefill(model, query_ids, attention, positions, cache)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, masks, logps, ents = [], [], [], []
    lp_temperature = config.temperature if config.temperature > 0 else 1.0
    for t in range(config.max_new_tokens):
        next_tok = sample_next_token(logits, config.temperature, config.top_p, generator)
        next_tok = torch.where(finished, torch.full_like(next_tok, pad_id), next_tok)
        masks.append((~finished).long())
        if want_logprobs:
            lp_all = F.log_softmax(logits.float() / lp_temperature, -1)
            lp = lp_all.gather(-1, next_tok[:, None]).squeeze(-1)
            ent = -(lp_all.exp() * lp_all).sum(-1)
            logps.append(torch.where(finished, torch.zeros_like(lp), lp))
            ents.append(torch.where(finished, torch.zeros_like(ent), ent))
        tokens.append(next_tok)
        finished = finished | torch.isin(next_tok, eos_ids)
        if _all_finished(model, finished) or t == config.max_new_tokens - 1:
            break
        # 2. decode: feed the new token; finished rows keep decoding pads that nothing reads
        attention = torch.cat([attention, attention.new_ones(batch, 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = _forward(
            model,
            input_ids=next_tok[:, None],
            attention_mask=attention,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
    resp = torch.stack(tokens, 1) if tokens else query_ids.new_zeros(batch, 0)
    mask = torch.stack(masks, 1) if masks else query_ids.new_zeros(batch, 0)
    logprobs = entropy = None
    if want_logprobs:
        logprobs = torch.stack(logps, 1) if logps else torch.zeros(batch, 0, device=device)
        entropy = torch.stack(ents, 1) if ents else torch.zeros(batch, 0, device=device)
    return resp, mask, finished, logprobs, entropy


def decode_responses(tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor, has_eos: torch.Tensor):
    """Response texts truncated before the first EOS, special tokens stripped.

    NUL characters are dropped: a byte-level BPE can decode a sampled byte 0 (a random or badly
    trained model does), and no store or labeling page should receive it (PostgreSQL refuses NUL in
    text, and the feedback service rejects it with a 422)."""
    texts = []
    for ids, n, eos in zip(response_ids.tolist(), response_mask.sum(-1).tolist(), has_eos.tolist(), strict=True):
        keep = ids[: n - 1] if eos else ids[:n]
        texts.append(tokenizer.decode(keep, skip_special_tokens=True).replace("\x00", ""))
    return texts


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    formatted: bool = True,
    stop_token_ids: Sequence[int] | None = None,
    progress: str | None = None,
) -> Generation:
    """Sample one response per prompt, in micro-batches of ``config.batch_size``.

    ``prompts`` are raw instructions, chat-formatted here (``formatted=False`` sends them as
    they are). Sampling draws from ``generator`` (or a new one seeded with ``seed``; neither =
    the global RNG). Dropout is off while sampling and the model's train/eval mode is restored.
    ``progress`` names a progress bar over the micro-batches (none when None).
    """
    from alignloop.train.runlog import track

    config = config or GenerationConfig()
    model = _unwrap(model)
    device = _device(model)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    pad_id = pad_token_id(tokenizer)
    eos_list = list(stop_token_ids) if stop_token_ids is not None else [tokenizer.eos_token_id]
    eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)
    rows = [query_token_ids(tokenizer, p, formatted=formatted) for p in prompts]
    was_training = model.training
    model.eval()
    parts = []
    try:
        starts = range(0, len(rows), max(1, config.batch_size))
        for i in track(starts, progress or "", enabled=progress is not None):
            q_ids, q_mask = left_pad(rows[i : i + config.batch_size], pad_id)
            q_ids, q_mask = q_ids.to(device), q_mask.to(device)
            r_ids, r_mask, eos, lps, ents = _sample_micro_batch(
                model, q_ids, q_mask, config, eos_ids, pad_id, generator, return_logprobs
            )
            parts.append((q_ids, q_mask, r_ids, r_mask, eos, lps, ents))
    finally:
        model.train(was_training)
    return _concat(parts, tokenizer, pad_id, device, return_logprobs)


def _concat(parts: list, tokenizer: Any, pad_id: int, device: torch.device, with_logprobs: bool) -> Generation:
    """Join micro-batches: queries left-padded and responses right-padded to common widths."""
    lq = max((p[0].shape[1] for p in parts), default=0)
    lr = max((p[2].shape[1] for p in parts), default=0)

    def pad(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
        extra = width - t.shape[1]
        return F.pad(t, (extra, 0) if left else (0, extra), value=value) if extra else t

    q_ids = torch.cat([pad(p[0], lq, pad_id, True) for p in parts]) if parts else torch.zeros(0, 0, dtype=torch.long)
    q_mask = torch.cat([pad(p[1], lq, 0, True) for p in parts]) if parts else torch.zeros(0, 0, dtype=torch.long)
    r_ids = torch.cat([pad(p[2], lr, pad_id, False) for p in parts]) if parts else torch.zeros(0, 0, dtype=torch.long)
    r_mask = torch.cat([pad(p[3], lr, 0, False) for p in parts]) if parts else torch.zeros(0, 0, dtype=torch.long)
    has_eos = torch.cat([p[4] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
    logprobs = entropy = None
    if with_logprobs:
        logprobs = torch.cat([pad(p[5], lr, 0.0, False) for p in parts]) if parts else torch.zeros(0, 0)
        entropy = torch.cat([pad(p[6], lr, 0.0, False) for p in parts]) if parts else torch.zeros(0, 0)
    texts = decode_responses(tokenizer, r_ids, r_mask, has_eos)
    return Generation(q_ids, q_mask, r_ids, r_mask, texts, has_eos, logprobs, entropy)


def forward_last_logits(model: Any, keep: int, **inputs: Any) -> torch.Tensor:
    """Logits of the last ``keep`` positions only (the vocabulary projection dominates memory)."""
    if accepts_logits_to_keep(model):
        return model(**inputs, logits_to_keep=keep).logits[:, -keep:]
    return model(**inputs).logits[:, -keep:]


def response_logprobs(
    model: Any,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
    *,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) and the entropy of pi(. | x, y_<t) for every response token, one forward pass.

    The distribution is softmax(logits / temperature), the one :func:`generate` samples from
    (``temperature <= 0`` means 1: greedy decoding has no temperature to divide by). Gradients
    flow when called outside ``no_grad`` (PPO's policy loss). With ``response_mask`` given,
    positions after the first EOS are 0 in both outputs.
    """
    temperature = temperature if temperature > 0 else 1.0
    width = response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention = torch.cat([query_mask, torch.ones_like(response_ids)], dim=1)
    logits = forward_last_logits(
        model,
        width + 1,
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
        use_cache=False,
    )[:, :-1]  # logits at position t predict token t + 1
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = logp_all.gather(-1, response_ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    if response_mask is not None:
        m = response_mask.to(logprobs.dtype)
        logprobs, entropy = logprobs * m, entropy * m
    return logprobs, entropy
