"""Alignment tax: perplexity of a known distribution, HellaSwag zero-shot accuracy, and the LM scorer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignloop.data.jsonl import DataFileError
from alignloop.evaluate import alignment_tax as tax
from alignloop.evaluate.likelihood import CausalLMLikelihood, perplexity


class CharTokenizer:
    """'a' -> 0, 'b' -> 1, 'c' -> 2; BOS 3, pad 4."""

    bos_token_id, eos_token_id, pad_token_id = 3, 3, 4

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": ["abc".index(ch) for ch in text if ch in "abc"]}


class FixedDistribution(torch.nn.Module):
    """Predicts the same next-token distribution everywhere: p(a) = 1/2, p(b) = p(c) = 1/4."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logp = torch.log(torch.tensor([0.5, 0.25, 0.25, 1e-9, 1e-9]))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        b, t = input_ids.shape
        return type("Out", (), {"logits": self.logp.expand(b, t, -1).clone()})()


def test_perplexity_of_a_known_distribution():
    lik = CausalLMLikelihood(FixedDistribution(), CharTokenizer(), batch_size=2)
    # "aab": p = 1/2 * 1/2 * 1/4 -> NLL = 4 ln 2 over 3 tokens -> PPL = 2^(4/3)
    r = lik.token_nll(["aab"])
    assert r.n_tokens == 3 and r.nll == pytest.approx(4 * math.log(2), rel=1e-6)
    assert r.perplexity == pytest.approx(2 ** (4 / 3), rel=1e-6)
    # two documents, and windows of 2 tokens: every token is still predicted exactly once
    both = lik.token_nll(["aab", "cc"])
    assert both.n_tokens == 5 and both.nll == pytest.approx(8 * math.log(2), rel=1e-6)
    lik.max_length = 2
    windowed = lik.token_nll(["aab", "cc"])
    assert windowed.n_tokens == 5 and windowed.nll == pytest.approx(both.nll, rel=1e-6)
    assert perplexity(both.nll, both.n_tokens) == pytest.approx(2 ** (8 / 5), rel=1e-6)


def test_loglik_of_continuations():
    lik = CausalLMLikelihood(FixedDistribution(), CharTokenizer())
    lps = lik(["ab", "", "c"], ["a", "bc", ""])
    assert lps == pytest.approx([math.log(0.5), 2 * math.log(0.25), 0.0], rel=1e-6)


def test_hellaswag_loader_and_accuracy(tmp_path):
    p = tmp_path / "hellaswag_val.jsonl"
    rows = [
        {
            "ind": 4,
            "activity_label": "Roof",
            "ctx_a": "A man is on a roof.",
            "ctx_b": "he",
            "ctx": "A man is on a roof. he",
            "endings": ["sits.", "removes the old shingles carefully.", "flies."],
            "label": 1,
            "split": "val",
        },
        {"ctx": "She opens the book", "endings": ["and reads.", "and eats it whole today."], "label": "0"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qs = tax.load_hellaswag_jsonl(p)
    assert [q.label for q in qs] == [1, 0] and qs[0].ctx == "A man is on a roof. he"

    # summed log-likelihood favours short endings; per-character normalisation does not
    table = {
        " sits.": -3.0,
        " removes the old shingles carefully.": -4.0,
        " flies.": -3.5,
        " and reads.": -2.0,
        " and eats it whole today.": -1.5,
    }

    def loglik(contexts, endings):
        return [table[e] for e in endings]

    res = tax.multiple_choice_accuracy(qs, loglik)
    assert res["acc"] == pytest.approx(0.0)  # q1 picks "sits.", q2 picks the long one
    assert res["acc_norm"] == pytest.approx(0.5)  # q1 right after normalising, q2 wrong (-1.5/24 > -2/10)
    assert res["n"] == 2


def test_hellaswag_errors_name_file_and_line(tmp_path):
    p = tmp_path / "hs.jsonl"
    p.write_text(
        json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0})
        + "\n"
        + json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 5})
        + "\n"
    )
    with pytest.raises(DataFileError, match=r"hs\.jsonl:2: field 'label': expected an index 0..1, got 5"):
        tax.load_hellaswag_jsonl(p)


def test_corpus_reader(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("First paragraph\nstill first.\n\n\nSecond.\n")
    assert tax.read_corpus(p) == ["First paragraph\nstill first.", "Second."]
    p.write_text("\n\n")
    with pytest.raises(DataFileError, match="no text"):
        tax.read_corpus(p)
    j = tmp_path / "corpus.jsonl"
    j.write_text(json.dumps({"text": "One doc."}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataFileError, match=r"corpus\.jsonl:2: field 'text'"):
        tax.read_corpus(j)
    j.write_text(json.dumps({"text": "One doc."}) + "\n\n" + json.dumps({"text": "Two."}) + "\n")
    assert tax.read_corpus(j) == ["One doc.", "Two."]


def test_tiny_model_scores_are_batch_invariant_and_consistent():
    lik = CausalLMLikelihood.from_name("tiny", batch_size=1)
    ctx = ["The cat sat on the", "Once upon a time", "Hello"]
    cont = [" mat.", " there was a small village by the sea.", " world"]
    one = lik(ctx, cont)
    lik.batch_size = 8  # right padding must not change any score
    assert lik(ctx, cont) == pytest.approx(one, abs=1e-4)
    # log p(a b) = log p(a) + log p(b | a) when the split falls on a token boundary
    whole = lik([""], ["Hello world"])[0]
    parts = lik([""], ["Hello"])[0] + lik(["Hello"], [" world"])[0]
    assert whole == pytest.approx(parts, abs=1e-4)
    assert lik.token_nll(["Hello world"]).nll == pytest.approx(-whole, abs=1e-4)
    res = tax.corpus_perplexity(["Hello world", "The cat sat on the mat."], lik)
    assert 1 < res["perplexity"] < 49152 * 10 and res["n_tokens"] > 5
