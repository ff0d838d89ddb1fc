"""Records: ranking expansion, validation, JSONL errors that name file/line/field, exports."""

from __future__ import annotations

import json
from itertools import permutations

import pytest

from alignloop.data import DataFileError, Prompt, Ranking, Rating, RuleViolations, read_jsonl, write_jsonl
from alignloop.data.export import rankings_to_comparisons, to_hf_dataset, to_trl_preference, to_trl_prompt_completion
from alignloop.data.records import Demonstration
from alignloop.schema import SchemaError, from_dict


def _ranking(k: int, order: list[int] | None = None, ties: list[list[int]] | None = None) -> Ranking:
    return Ranking(
        prompt_id="p1",
        prompt="Say hi",
        completions=[f"c{i}" for i in range(k)],
        order=order if order is not None else list(range(k)),
        labeler_id="L1",
        ties=ties or [],
    )


@pytest.mark.parametrize("k", range(2, 10))
def test_ranking_expands_to_k_choose_2_comparisons(k: int) -> None:
    r = _ranking(k, order=list(reversed(range(k))))
    r.validate()
    comps = r.comparisons()
    assert len(comps) == k * (k - 1) // 2
    assert len({(c.chosen, c.rejected) for c in comps}) == len(comps)
    # order is best first: the last completion beats every other one
    assert sum(c.chosen == f"c{k - 1}" for c in comps) == k - 1
    assert all(c.rejected != f"c{k - 1}" for c in comps)


def test_every_pair_is_consistent_with_the_order() -> None:
    for order in permutations(range(4)):
        r = _ranking(4, order=list(order))
        place = {c: i for i, c in enumerate(order)}
        for w, lo in r.pairs():
            assert place[w] < place[lo]


def test_tied_pairs_are_skipped() -> None:
    r = _ranking(4, order=[2, 0, 1, 3], ties=[[0, 1]])
    r.validate()
    pairs = set(r.pairs())
    assert len(pairs) == 6 - 1
    assert (0, 1) not in pairs and (1, 0) not in pairs
    assert r.ranks() == [1, 1, 0, 3]


def test_best_pick_is_a_degenerate_ranking() -> None:
    r = _ranking(5, order=[3, 0, 1, 2, 4], ties=[[0, 1, 2, 4]])
    r.validate()
    assert sorted(r.pairs()) == [(3, 0), (3, 1), (3, 2), (3, 4)]


def test_from_ranks_round_trips() -> None:
    r = Ranking.from_ranks("p", "x", ["a", "b", "c", "d"], [2, 0, 2, 1])
    r.validate()
    assert r.order[0] == 1 and r.ranks() == [2, 0, 2, 1]
    assert len(r.comparisons()) == 5


@pytest.mark.parametrize(
    ("order", "ties", "field", "needle"),
    [
        ([0, 1, 1, 3], [], "order", "permutation"),
        ([0, 1, 2], [], "order", "permutation"),
        ([0, 1, 2, 3], [[0, 2]], "ties", "adjacent"),
        ([0, 1, 2, 3], [[0]], "ties", "at least 2"),
        ([0, 1, 2, 3], [[0, 1], [1, 2]], "ties", "two tie groups"),
    ],
)
def test_malformed_ranking_names_the_field(order, ties, field, needle) -> None:
    data = {"prompt_id": "p", "prompt": "x", "completions": ["a", "b", "c", "d"], "order": order, "ties": ties}
    with pytest.raises(SchemaError) as err:
        from_dict(Ranking, data)
    assert err.value.field == field
    assert needle in str(err.value)


def test_rating_validates_likert_and_flags() -> None:
    ok = {"prompt_id": "p", "prompt": "x", "completion": "y", "likert": 7, "flags": {"hallucination": True}}
    assert from_dict(Rating, ok).likert == 7
    with pytest.raises(SchemaError, match="likert"):
        from_dict(Rating, {**ok, "likert": 8})
    with pytest.raises(SchemaError, match="unknown flag 'spicy'"):
        from_dict(Rating, {**ok, "flags": {"spicy": True}})


def test_rule_violations_need_one_list_per_completion() -> None:
    rv = {"prompt_id": "p", "prompt": "x", "completions": ["a", "b"], "violations": [["rude"]], "order": [1, 0]}
    with pytest.raises(SchemaError, match="violations"):
        from_dict(RuleViolations, rv)
    rv["violations"] = [["rude"], []]
    assert from_dict(RuleViolations, rv).ranking().comparisons()[0].chosen == "b"


def test_jsonl_round_trip(tmp_path) -> None:
    prompts = [
        Prompt(id=str(i), text=f"Write a poem about {i}", user_id=f"u{i % 3}", category="generation") for i in range(5)
    ]
    path = tmp_path / "p.jsonl"
    assert write_jsonl(path, prompts) == 5
    assert read_jsonl(path, Prompt) == prompts


def test_malformed_jsonl_names_file_line_and_field(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"id": "1", "text": "hello", "user_id": "u"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "user_id": 7}) + "\n")
    with pytest.raises(DataFileError) as err:
        read_jsonl(path, Prompt)
    assert f"{path}:3" in str(err.value) and "user_id" in str(err.value)

    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: invalid JSON"):
        read_jsonl(path, Prompt)

    path.write_text(json.dumps({"id": "1", "text": "hello"}) + "\n")
    with pytest.raises(DataFileError, match=r":1: field 'user_id': is required"):
        read_jsonl(path, Prompt)

    with pytest.raises(DataFileError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl", Prompt)


def test_unknown_category_is_rejected() -> None:
    with pytest.raises(SchemaError, match="category"):
        from_dict(Prompt, {"id": "1", "text": "hi", "user_id": "u", "category": "poetry"})


def test_exports_use_trl_columns_and_hf_datasets() -> None:
    rankings = [_ranking(4), _ranking(3, order=[2, 1, 0])]
    rows = to_trl_preference(rankings)
    assert len(rows) == 6 + 3 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert len(rankings_to_comparisons(rankings)) == 9
    demos = [Demonstration("p", "Say hi", "Hi!", "L1")]
    assert to_trl_prompt_completion(demos) == [{"prompt": "Say hi", "completion": "Hi!"}]
    ds = to_hf_dataset(rankings)
    assert ds.num_rows == 2 and ds[1]["order"] == [2, 1, 0]
