"""The shared sampler: per-sequence EOS, left padding, temperature/top-p, logprob consistency."""

from __future__ import annotations

import contextlib
import logging
import warnings
from types import SimpleNamespace

import pytest
import torch

from alignloop.config import GenerationConfig
from alignloop.models import load_policy
from alignloop.models.generation import (
    generate,
    left_pad,
    position_ids_from_mask,
    response_logprobs,
    sample_next_token,
)

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny")


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM that emits a fixed token script per row, chosen by the query's real
    length: query of n real tokens -> script[n]. It checks the decoding loop, not a network.

    It keeps its state where a real model does, in the transformers ``Cache`` the sampler passes as
    ``cache=``: one cached entry per fed token holding the row's real query length, so the shared
    prefill's row gathering moves each script with its row, and the step is read from the positions."""

    def __init__(self, scripts: dict[int, list[int]], vocab: int = 50) -> None:
        super().__init__()
        self.scripts, self.vocab = scripts, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fed: list[torch.Tensor] = []

    def _logits(self, rows: list[list[int]], step: int) -> torch.Tensor:
        out = torch.full((len(rows), 1, self.vocab), -1e4)
        for i, script in enumerate(rows):
            out[i, 0, script[min(step, len(script) - 1)]] = 0.0
        return out

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache=True):
        if cache.get_seq_length() == 0:  # prefill: pick each row's script from its real length
            real, step = attention_mask.sum(-1), 0
        else:
            self.fed.append(input_ids[:, 0].clone())
            real = cache.layers[0].keys[:, 0, 0, 0].long()
            step = int(position_ids[0, -1] - real[0]) + 1  # decode step s feeds position n - 1 + s
        entry = real.float()[:, None, None, None].expand(-1, 1, input_ids.shape[1], 1)
        cache.update(entry, entry, 0)
        return SimpleNamespace(logits=self._logits([self.scripts[int(n)] for n in real], step))


class FakeTokenizer:
    """Just enough tokenizer for :func:`generate` with ``formatted=False``: one id per character."""

    pad_token_id, eos_token_id = PAD, EOS

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + (ord(c) % 30) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (PAD, EOS)))


def test_each_sequence_stops_at_its_own_eos_and_is_padded_after() -> None:
    scripts = {1: [5, 6, EOS, 7], 2: [8, EOS, 9], 3: [11, 12, 13, 14, 15, 16]}
    model = ScriptedLM(scripts)
    out = generate(model, FakeTokenizer(), ["a", "bb", "ccc"], GenerationConfig(max_new_tokens=5, temperature=0),
                   formatted=False)  # fmt: skip
    assert out.response_ids.tolist() == [[5, 6, EOS, PAD, PAD], [8, EOS, PAD, PAD, PAD], [11, 12, 13, 14, 15]]
    assert out.response_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert out.has_eos.tolist() == [True, True, False]
    assert out.texts == ["5 6", "8", "11 12 13 14 15"]
    assert out.response_lengths.tolist() == [3, 2, 5]
    # left padding of the queries; finished rows are fed the pad id, never their script again
    assert out.query_mask.tolist() == [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert model.fed[-1].tolist() == [PAD, PAD, 14]


def test_decoding_stops_early_when_every_row_has_ended() -> None:
    model = ScriptedLM({1: [5, EOS], 2: [EOS]})
    out = generate(model, FakeTokenizer(), ["a", "bb"], GenerationConfig(max_new_tokens=50, temperature=0),
                   formatted=False)  # fmt: skip
    assert out.response_ids.tolist() == [[5, EOS], [EOS, PAD]]
    assert len(model.fed) == 1  # two steps, not fifty


def test_micro_batches_are_joined_with_common_padding() -> None:
    scripts = {1: [5, EOS], 2: [6, 7, 8, EOS], 4: [9, EOS]}
    out = generate(ScriptedLM(scripts), FakeTokenizer(), ["a", "bb", "dddd"],
                   GenerationConfig(max_new_tokens=6, temperature=0, batch_size=2), formatted=False)  # fmt: skip
    assert out.response_ids.tolist() == [[5, EOS, PAD, PAD], [6, 7, 8, EOS], [9, EOS, PAD, PAD]]
    assert out.query_mask.tolist() == [[0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]]


def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[7, 8, 9], [5]], PAD)
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 5]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_left_padded_batch_decodes_like_each_prompt_alone(tiny) -> None:
    model, tok = tiny
    prompts = ["Hi", "Write a poem about the sea, the sky and the long road home.", "Name three fruits."]
    cfg = GenerationConfig(max_new_tokens=8, temperature=0)
    batch = generate(model, tok, prompts, cfg)
    assert batch.query_mask[0].tolist().count(0) > 0  # the short prompt really was padded
    for i, p in enumerate(prompts):
        alone = generate(model, tok, [p], cfg)
        assert batch.response_ids[i].tolist() == alone.response_ids[0].tolist()


def test_sampling_is_seedable_and_does_not_touch_the_global_rng(tiny) -> None:
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0)
    before = torch.get_rng_state()
    a = generate(model, tok, ["Hi", "Tell me a story."], cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(model, tok, ["Hi", "Tell me a story."], cfg, seed=3)
    c = generate(model, tok, ["Hi", "Tell me a story."], cfg, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_tiny_top_p_and_tiny_temperature_are_greedy(tiny) -> None:
    model, tok = tiny
    prompts = ["Hi", "Tell me a story."]
    greedy = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=0))
    nucleus = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6), seed=1)
    cold = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=1e-4), seed=1)
    hot = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=1.0), seed=1)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    assert torch.equal(cold.response_ids, greedy.response_ids)
    assert not torch.equal(hot.response_ids, greedy.response_ids)


def test_temperature_sets_the_sampling_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0):
        draws = sample_next_token(logits, temperature, 1.0, g)
        freq = torch.bincount(draws, minlength=3).float() / len(draws)
        expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / temperature, -1)
        assert torch.allclose(freq, expected, atol=0.015), (temperature, freq, expected)


def test_top_p_keeps_the_smallest_nucleus_reaching_p() -> None:
    # probabilities 0.5, 0.3, 0.2: top_p = 0.6 keeps {0, 1} (0.5 < 0.6, 0.8 >= 0.6) renormalised to 5/8, 3/8
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(20000, 1)
    draws = sample_next_token(logits, 1.0, 0.6, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert freq[2] == 0
    assert abs(freq[0] - 5 / 8) < 0.015
    only_best = sample_next_token(logits[:100], 1.0, 0.5, torch.Generator().manual_seed(0))
    assert only_best.eq(0).all()  # 0.5 alone reaches top_p = 0.5


def test_tokens_without_probability_are_never_drawn() -> None:
    # -inf logits (a masked vocabulary) at the ends and in the middle, and uniform draws next to 0 and 1
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]]).repeat(50000, 1)
    draws = sample_next_token(logits, 1.0, 1.0, torch.Generator().manual_seed(3))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[0] == freq[2] == freq[4] == 0
    assert abs(freq[1] - 0.5) < 0.01
    one_token = sample_next_token(torch.tensor([[float("-inf")] * 7 + [0.0]]).repeat(1000, 1), 1.0)
    assert one_token.eq(7).all()


def test_a_uniform_draw_rounded_up_to_the_total_takes_the_last_token_with_probability(monkeypatch) -> None:
    from alignloop.models import generation

    monkeypatch.setattr(generation.torch, "rand", lambda shape, **kw: torch.ones(shape))  # the float edge u == 1
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    assert generation._inverse_cdf_draw(probs, None).tolist() == [1, 2]


def test_response_logprobs_match_the_sampled_tokens(tiny) -> None:
    model, tok = tiny
    for temperature in (0.7, 1.3):
        cfg = GenerationConfig(max_new_tokens=10, temperature=temperature, batch_size=2)
        out = generate(model, tok, ["Hi", "Tell me a long story.", "Why?"], cfg, seed=0, return_logprobs=True)
        lp, entropy = response_logprobs(
            model, out.query_ids, out.query_mask, out.response_ids, temperature, response_mask=out.response_mask
        )
        assert torch.allclose(lp, out.logprobs, atol=1e-4)
        assert (out.logprobs < 0).all()  # every position is a real sampled token here (no EOS from tiny)
        # entropy of a distribution over the 49152-token vocabulary: positive, at most log(V)
        assert (entropy > 0).all() and (entropy <= torch.log(torch.tensor(49152.0)) + 1e-3).all()


def test_response_logprobs_carry_gradients_and_respect_the_mask(tiny) -> None:
    model, tok = tiny
    out = generate(model, tok, ["Hi"], GenerationConfig(max_new_tokens=4, temperature=1.0), seed=0)
    mask = torch.tensor([[1, 1, 0, 0]])
    lp, ent = response_logprobs(model, out.query_ids, out.query_mask, out.response_ids, 1.0, response_mask=mask)
    assert lp[0, 2:].eq(0).all() and ent[0, 2:].eq(0).all() and lp[0, :2].lt(0).all()
    lp.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad()


def test_model_mode_is_restored(tiny) -> None:
    model, tok = tiny
    model.train()
    generate(model, tok, ["Hi"], GenerationConfig(max_new_tokens=2))
    assert model.training
    model.eval()


def test_samples_of_one_prompt_share_its_prefill(tiny) -> None:
    model, tok = tiny
    prompts = ["Tell me a long story.", "Hi", "Tell me a long story.", "Tell me a long story.", "Hi"]
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        cfg = GenerationConfig(max_new_tokens=6, temperature=0.9, batch_size=8)
        out = generate(model, tok, prompts, cfg, seed=0, return_logprobs=True)
    finally:
        hook.remove()
    assert widths[0][0] == 2  # the prefill ran on the two distinct queries only
    assert all(w[0] == 5 and w[1] == 1 for w in widths[1:])  # then every row decodes on its own
    # each row's cache is its own prompt's: greedy rows equal the prompt decoded alone, and the
    # sampled tokens' log-probabilities equal a fresh forward pass over the whole sequence
    lp, _ = response_logprobs(
        model, out.query_ids, out.query_mask, out.response_ids, 0.9, response_mask=out.response_mask
    )
    assert torch.allclose(lp, out.logprobs, atol=1e-4)
    greedy = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, temperature=0))
    for i, p in enumerate(prompts):
        alone = generate(model, tok, [p], GenerationConfig(max_new_tokens=6, temperature=0))
        assert greedy.response_ids[i].tolist() == alone.response_ids[0].tolist()


def test_decoded_responses_never_hold_nul(tiny) -> None:
    """A sampled byte 0 (byte-level BPE) is dropped: the feedback service and PostgreSQL refuse NUL."""
    from alignloop.models.generation import decode_responses

    tok = tiny[1]
    nul = next(i for i in range(tok.vocab_size) if tok.decode([i]) == "\x00")
    word = tok.encode("ok", add_special_tokens=False)
    ids = torch.tensor([word + [nul] + word])
    mask = torch.ones_like(ids)
    assert tok.decode(ids[0].tolist()) == "ok\x00ok"  # what the tokenizer alone gives
    assert decode_responses(tok, ids, mask, torch.tensor([False])) == ["okok"]


def test_shared_prefill_moves_each_rows_cache_with_it() -> None:
    """Repeated queries are prefilled once and the cache's rows gathered back: each sample keeps its
    own prompt's state (here the script its cache entries select)."""
    scripts = {1: [5, 6, EOS], 2: [8, EOS]}
    out = generate(ScriptedLM(scripts), FakeTokenizer(), ["bb", "a", "bb", "a", "a"],
                   GenerationConfig(max_new_tokens=4, temperature=0), formatted=False)  # fmt: skip
    assert out.response_ids.tolist() == [[8, EOS, PAD], [5, 6, EOS], [8, EOS, PAD], [5, 6, EOS], [5, 6, EOS]]


@contextlib.contextmanager
def transformers_cache_deprecations():
    """Collect every cache deprecation transformers reports, both ways it reports them: a Python
    FutureWarning from ``deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`` and a
    ``logger.warning_once("`past_key_values`/`cache_params` are deprecated...")`` (whose once-only
    memory is cleared first, so an earlier test cannot hide it)."""
    from transformers.utils import logging as hf_logging

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    hf_logger = hf_logging.get_logger()  # the library's root logger: it does not propagate to pytest's
    hf_logging.warning_once.cache_clear()
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
        seen.extend(str(w.message) for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning))
    finally:
        hf_logger.removeHandler(handler)
    seen[:] = [m for m in seen if "deprecated" in m and ("cache" in m or "past_key_values" in m)]


def test_sampler_uses_the_current_cache_api_without_deprecation_warnings(tiny) -> None:
    """transformers 5.2x deprecates ``past_key_values`` (gone in 5.40): the sampler passes its own
    ``Cache`` as ``cache=`` and reads nothing back under the old name, plain and under LoRA (PPO)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache

    model, tok = tiny
    ids = torch.tensor([[1, 2, 3]])
    with transformers_cache_deprecations() as old_api:  # the check itself can see the deprecation
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    assert old_api and any("past_key_values" in m for m in old_api)

    lora = get_peft_model(load_policy("tiny")[0], LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    cfg = GenerationConfig(max_new_tokens=4, temperature=1.0, batch_size=4)
    prompts = ["Hi", "Tell me a story.", "Hi"]  # a repeated prompt takes the shared-prefill path
    with transformers_cache_deprecations() as seen:
        generate(model, tok, prompts, cfg, seed=0, return_logprobs=True)
        generate(lora, tok, prompts, cfg, seed=0)
    assert seen == []
