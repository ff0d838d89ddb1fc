"""The prompt pipeline (SPEC section 2): dedupe, per-user cap, user splits, disjoint datasets, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import DataConfig
from alignloop.data.builtin import builtin_prompts
from alignloop.data.jsonl import read_jsonl, write_jsonl
from alignloop.data.pipeline import (
    DATASETS,
    DROP_REASONS,
    KEPT,
    SPLITS,
    first_of_equal,
    normalize_prefix,
    prepare,
    user_split,
    write_prepared,
)
from alignloop.data.records import Prompt
from alignloop.errors import AlignloopError


def make(texts_users: list[tuple[str, str]]) -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=t, user_id=u) for i, (t, u) in enumerate(texts_users)]


def reasons(prepared) -> list[str]:
    return ["kept" if d == KEPT else DROP_REASONS[d] for d in prepared.drop]


def many_users(n_users: int = 300, per_user: int = 3) -> list[Prompt]:
    return [
        Prompt(id=f"{u}-{k}", text=f"Prompt number {k} from user {u} about topic {u * 7 + k}", user_id=f"user-{u}")
        for u in range(n_users)
        for k in range(per_user)
    ]


# --- dedupe -------------------------------------------------------------------------------


def test_normalize_prefix_folds_case_and_whitespace():
    assert normalize_prefix("  Write\t a   POEM\nabout the sea  ", 12) == "write a poem"
    assert normalize_prefix("Hi  there", 64) == "hi there"  # shorter than N: the whole normalised text
    long_gap = "word" + " " * 1000 + "next part of the text"
    assert normalize_prefix(long_gap, 10) == "word next "  # a whitespace run longer than the raw window


def test_dedupe_catches_shared_prefix_duplicates_not_adjacent():
    prompts = make(
        [
            ("Write a poem about the sea and the sky", "u1"),  # 0 kept
            ("Tell me a joke about cats", "u2"),  # 1 kept
            ("write a poem about the sea, please", "u3"),  # 2 shares 24 chars with 0
            ("Write a poem about the moon", "u4"),  # 3 shares only 23 chars with 0: kept
            ("WRITE   a POEM about   the sea and the sky", "u5"),  # 4 same as 0 after normalising
            ("Tell me a joke", "u6"),  # 5 shorter than N: kept
            ("tell me a  JOKE", "u7"),  # 6 identical to 5 after normalising
            ("Tell me a joke about dogs", "u8"),  # 7 shares 21 chars with 1: kept
        ]
    )
    out = prepare(prompts, DataConfig(dedupe_prefix_chars=24, max_prompts_per_user=10))
    assert reasons(out) == ["kept", "kept", "duplicate", "kept", "duplicate", "kept", "duplicate", "kept"]
    assert out.duplicate_of.tolist() == [-1, -1, 0, -1, 0, -1, 5, -1]
    assert out.report.dropped == {"invalid": 0, "duplicate": 3, "over_user_cap": 0}


def test_dedupe_first_occurrence_wins_even_when_it_sorts_later():
    # "zzz ..." sorts after "ZZZ ..." byte-wise, but it comes first in the input, so it is kept.
    prompts = make([("zzz same long prefix here one", "a"), ("ZZZ SAME LONG PREFIX HERE two", "b")])
    out = prepare(prompts, DataConfig(dedupe_prefix_chars=20))
    assert reasons(out) == ["kept", "duplicate"]
    assert out.duplicate_of[1] == 0


@pytest.mark.parametrize(("n_chars", "expected"), [(10, "duplicate"), (11, "kept")])
def test_dedupe_prefix_length_is_the_threshold(n_chars, expected):
    prompts = make([("abcdefghij one", "a"), ("abcdefghijXtwo", "b")])  # they share exactly 10 characters
    out = prepare(prompts, DataConfig(dedupe_prefix_chars=n_chars))
    assert reasons(out)[1] == expected


def test_first_of_equal_survives_fingerprint_collisions():
    keys = ["b", "a", "bb", "a", "cc", "b", "dd", "cc"]
    # fingerprint = length: every key of equal length collides, so the exact check must regroup them
    heads = first_of_equal(np.arange(len(keys)), keys.__getitem__, fingerprint=len)
    assert heads.tolist() == [0, 1, 2, 1, 4, 0, 6, 4]


def test_invalid_prompts_are_dropped_and_reported():
    prompts = make([("fine prompt", "u1"), ("   ", "u1"), ("no user", " "), ("another prompt", "u2")])
    prompts[3].id = prompts[0].id  # a repeated id
    out = prepare(prompts)
    assert reasons(out) == ["kept", "invalid", "invalid", "invalid"]
    assert out.report.n_kept == 1


# --- per-user cap ------------------------------------------------------------------------


def test_user_cap_keeps_exactly_max_first_in_input_order():
    rows = []
    for k in range(7):
        rows.append((f"alice distinct question number {k}", "alice"))
        if k < 3:
            rows.append((f"bob distinct question number {k}", "bob"))
    rows.insert(4, ("ALICE distinct question number 0", "alice"))  # a duplicate, dropped before the cap
    out = prepare(make(rows), DataConfig(max_prompts_per_user=5, dedupe_prefix_chars=40))
    kept = out.kept()
    alice = [p.text for p in kept if p.user_id == "alice"]
    assert alice == [f"alice distinct question number {k}" for k in range(5)]
    assert len([p for p in kept if p.user_id == "bob"]) == 3
    assert out.report.dropped == {"invalid": 0, "duplicate": 1, "over_user_cap": 2}
    assert out.report.users_over_cap == 1


# --- splits and datasets -----------------------------------------------------------------


def test_no_user_spans_two_splits_and_all_splits_used():
    prompts = many_users(300, 3)
    out = prepare(prompts, DataConfig())
    split_of_user = defaultdict(set)
    for p, s in zip(prompts, out.split, strict=True):
        split_of_user[p.user_id].add(int(s))
    assert all(len(s) == 1 for s in split_of_user.values())
    n_users = {name: sum(1 for s in split_of_user.values() if s == {k}) for k, name in enumerate(SPLITS)}
    assert sum(n_users.values()) == 300
    assert 200 <= n_users["train"] <= 280 and n_users["val"] >= 15 and n_users["test"] >= 15
    for p, s in zip(prompts[::50], out.split[::50], strict=True):
        assert SPLITS[s] == user_split(p.user_id, DataConfig())


def test_datasets_are_disjoint_and_their_union_is_the_kept_prompts():
    prompts = many_users(200, 4) + make([("Prompt number 0 from user 0 about topic 0", "dup-user")])
    out = prepare(prompts, DataConfig(max_prompts_per_user=3))
    seen: dict[str, tuple[str, str]] = {}
    for d in DATASETS:
        for s in SPLITS:
            for p in out.get(d, s):
                assert p.id not in seen, f"{p.id} in {seen[p.id]} and {(d, s)}"
                seen[p.id] = (d, s)
    assert set(seen) == {p.id for p in out.kept()}
    assert len(seen) == 200 * 3
    sizes = {d: sum(len(out.get(d, s)) for s in SPLITS) for d in DATASETS}
    assert all(0.2 * 600 <= sizes[d] <= 0.5 * 600 for d in DATASETS)  # 0.4 / 0.3 / 0.3 by prompt hash


def test_same_seed_same_result_other_seed_other_split(tmp_path):
    prompts = many_users(100, 3)
    a, b = prepare(prompts, DataConfig(seed=3)), prepare(prompts, DataConfig(seed=3))
    for field in ("drop", "duplicate_of", "split", "dataset"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    write_prepared(a, tmp_path / "a")
    write_prepared(b, tmp_path / "b")
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    c = prepare(prompts, DataConfig(seed=4))
    assert not np.array_equal(a.split, c.split)


def test_result_does_not_depend_on_the_process_hash_salt():
    code = (
        "import hashlib; from alignloop.data.builtin import builtin_prompts;"
        "from alignloop.data.pipeline import prepare;"
        "r = prepare(builtin_prompts(), None);"
        "print(hashlib.sha1(r.drop.tobytes() + r.duplicate_of.tobytes() + r.split.tobytes()"
        " + r.dataset.tobytes()).hexdigest())"
    )
    digests = set()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        digests.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
    assert len(digests) == 1 and len(next(iter(digests))) == 41


def test_bad_config_is_a_user_error():
    with pytest.raises(AlignloopError, match="split_fractions"):
        prepare(make([("x", "u")]), DataConfig(split_fractions=(0.5, 0.5, 0.5)))


def test_write_prepared_files_match_the_report(tmp_path):
    prompts = builtin_prompts()
    out = prepare(prompts)
    paths = write_prepared(out, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for d in DATASETS:
        for s in SPLITS:
            records = read_jsonl(tmp_path / f"{d}_{s}.jsonl", Prompt)
            assert len(records) == summary["counts"][d][s]["prompts"]
            assert len({r.user_id for r in records}) == summary["counts"][d][s]["users"]
            assert records == out.get(d, s)  # records keep user_id and every other field
    dropped = [json.loads(line) for line in paths["dropped"].read_text().splitlines()]
    assert len(dropped) == sum(summary["dropped"].values()) == len(prompts) - summary["n_kept"]
    by_id = {p.id: p for p in prompts}
    for row in dropped:
        if row["reason"] == "duplicate":
            assert normalize_prefix(row["text"], 64) == normalize_prefix(by_id[row["duplicate_of"]].text, 64)


# --- CLI ---------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_builtin_then_prepare_prints_table_and_writes_files(tmp_path):
    src = tmp_path / "prompts.jsonl"
    res = runner.invoke(app, ["data", "builtin", "--out", str(src)])
    assert res.exit_code == 0, res.output
    n = len(src.read_text().splitlines())
    assert f"wrote {n} prompts from 60 users" in res.output

    res = runner.invoke(app, ["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--max-per-user", "100"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["max_prompts_per_user"] == 100
    for label in ("dropped: duplicate", "dropped: over per-user cap", "kept", "sft", "rm", "ppo", "users"):
        assert label in res.output
    assert "│ kept" in res.output and str(summary["n_kept"]) in res.output
    assert "2 users had more than 100 prompts" in res.output
    assert (
        f"{summary['counts']['ppo']['train']['prompts']} ({summary['counts']['ppo']['train']['users']})" in res.output
    )
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([f"{d}_{s}.jsonl" for d in DATASETS for s in SPLITS] + ["dropped.jsonl", "summary.json"])


def test_cli_reads_data_section_of_a_loop_config(tmp_path):
    src = tmp_path / "p.jsonl"
    write_jsonl(src, make([("the same long prompt text A", "u1"), ("the same long prompt text B", "u2")]))
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("rounds: 2\ndata:\n  dedupe_prefix_chars: 20\n")
    res = runner.invoke(app, ["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["dropped"]["duplicate"] == 1
    res = runner.invoke(app, ["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--prefix-chars", "30"])
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["dropped"]["duplicate"] == 0


def test_cli_malformed_line_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine", "user_id": "u"}\n{"id": "b", "text": 5, "user_id": "u"}\n')
    res = runner.invoke(app, ["data", "prepare", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, AlignloopError)
    assert f"{bad}:2: field 'text'" in str(res.exception)
    assert not (tmp_path / "o").exists()


def test_cli_error_is_one_line_from_the_console_script(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine", "user_id": "u"}\nnot json\n')
    exe = Path(sys.executable).with_name("alignloop")
    res = subprocess.run([str(exe), "data", "prepare", str(bad), "--out", str(tmp_path / "o")], capture_output=True)
    assert res.returncode == 2
    err = res.stderr.decode().strip()
    assert err.startswith(f"error: {bad}:2: invalid JSON") and "\n" not in err
