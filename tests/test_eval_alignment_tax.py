"""Alignment tax: perplexity of a known distribution, HellaSwag zero-shot accuracy, and the LM scorer."""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
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
    assert [q.label for q in qs] == [1, 0] and qs[0].ctx == "Roof: A man is on a roof. He"

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


# Items in the official layout with every case the real validation file has: a WikiHow item with its
# [header] / [title] / [step] markup, an ActivityNet item whose ctx_b starts in lower case, a ctx_b with
# capitals inside (the reference's str.capitalize lowers them), an empty ctx_b, and labels as strings.
HELLASWAG_REAL = [
    {
        "ind": 24,
        "activity_label": "Personal Care and Style",
        "ctx_a": "[header] How to dye your hair [title] Buy the dye. [step] Pick a shade close to yours.",
        "ctx_b": "",
        "ctx": "[header] How to dye your hair [title] Buy the dye. [step] Pick a shade close to yours. ",
        "endings": [
            "[substeps] Test it on one strand first.",
            "Paint the walls of the house.",
            "[title] Eat the dye. [step] It tastes bad.",
            "Leave it in for a week.",
        ],
        "source_id": "wikihow~40",
        "split": "val",
        "split_type": "indomain",
        "label": "0",
    },
    {
        "ind": 7,
        "activity_label": "Washing dishes",
        "ctx_a": "A woman stands at a sink full of plates.",
        "ctx_b": "she",
        "ctx": "A woman stands at a sink full of plates. she",
        "endings": ["scrubs them with a sponge.", "flies away.", "eats the sink.", "sings to the TV quietly."],
        "source_id": "activitynet~v_x",
        "split": "val",
        "split_type": "zeroshot",
        "label": "0",
    },
    {
        "ind": 9,
        "activity_label": "Watching TV",
        "ctx_a": "A boy sits on the sofa.",
        "ctx_b": "the boy turns on the TV and",
        "ctx": "A boy sits on the sofa. the boy turns on the TV and",
        "endings": ["watches cartoons.", "cooks dinner on it.", "swims."],
        "source_id": "activitynet~v_y",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
]


def hellaswag_reference(rows, score):
    """HellaSwag zero-shot accuracy as lm-evaluation-harness computes it, written from its description:
    query = clean(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices = clean(endings),
    acc = argmax of log p(" " + choice | query), acc_norm = argmax of that divided by len(choice)."""

    def clean(text):
        text = text.strip().replace(" [title]", ". ")
        text = re.sub("\\[.*?\\]", "", text)
        return text.replace("  ", " ")

    acc = acc_norm = 0
    for row in rows:
        query = clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        choices = [clean(e) for e in row["endings"]]
        lls = [score(query, " " + c) for c in choices]
        gold = int(row["label"])
        acc += int(np.argmax(lls)) == gold
        acc_norm += int(np.argmax([ll / len(c) for ll, c in zip(lls, choices, strict=True)])) == gold
    return acc / len(rows), acc_norm / len(rows)


def _made_up_loglik(context, continuation):
    return -0.1 * len(continuation) + (zlib.crc32((context + "|" + continuation).encode()) % 97) / 10


def test_hellaswag_accuracy_matches_the_reference(tmp_path):
    p = tmp_path / "hellaswag_val.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_REAL))
    qs = tax.load_hellaswag_jsonl(p)
    assert qs[0].ctx == "Personal Care and Style: How to dye your hair. Buy the dye. Pick a shade close to yours."
    assert qs[0].endings[2] == " Eat the dye. It tastes bad."  # the reference keeps the space left by "[title]"
    assert qs[2].ctx == "Watching TV: A boy sits on the sofa. The boy turns on the tv and"

    res = tax.multiple_choice_accuracy(
        qs, lambda ctxs, conts: [_made_up_loglik(c, e) for c, e in zip(ctxs, conts, strict=True)]
    )
    acc, acc_norm = hellaswag_reference(HELLASWAG_REAL, _made_up_loglik)
    assert (res["acc"], res["acc_norm"]) == pytest.approx((acc, acc_norm))
    assert acc != acc_norm  # the fixture tells the two apart


def test_hellaswag_layout_variants(tmp_path):
    official = tmp_path / "official.jsonl"
    official.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_REAL))
    want = tax.load_hellaswag_jsonl(official)
    # exports that keep only the joined context, named "context" (or "ctx")
    for name in ("context", "ctx"):
        p = tmp_path / f"{name}.jsonl"
        rows = [
            {
                "activity_label": r["activity_label"],
                name: r["ctx_a"] + " " + r["ctx_b"].capitalize(),
                "endings": r["endings"],
                "label": int(r["label"]),
            }
            for r in HELLASWAG_REAL
        ]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert tax.load_hellaswag_jsonl(p) == want
    # lm-evaluation-harness documents: query / choices / gold, already cleaned
    harness = tmp_path / "harness.jsonl"
    harness.write_text(
        "".join(json.dumps({"query": q.ctx, "choices": q.endings, "gold": q.label}) + "\n" for q in want)
    )
    assert tax.load_hellaswag_jsonl(harness) == want
    test_split = tmp_path / "test.jsonl"
    test_split.write_text(json.dumps({**HELLASWAG_REAL[0], "label": ""}) + "\n")
    with pytest.raises(DataFileError, match=r"test\.jsonl:1: field 'label' is empty.*validation file"):
        tax.load_hellaswag_jsonl(test_split)
    test_split.write_text(json.dumps({"text": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(DataFileError, match=r"test\.jsonl:1: no context field \(one of ctx, context, query"):
        tax.load_hellaswag_jsonl(test_split)


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
    # U+2028 is a line break to str.splitlines but a plain character inside a JSON string
    j.write_text(json.dumps({"text": "One\u2028doc."}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert tax.read_corpus(j) == ["One\u2028doc."]


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
