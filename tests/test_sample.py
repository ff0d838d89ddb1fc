"""``alignloop sample``: K completions per prompt from the shared sampler, ready for ``feedback push``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignloop.cli.feedback import item_from_row
from alignloop.cli.main import app
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Prompt
from alignloop.errors import AlignloopError

runner = CliRunner()


def test_sample_writes_k_completions_keeping_every_prompt_field(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(
        prompts, [Prompt(f"p{i}", f"Name a fruit number {i}.", f"u{i}", "brainstorming", "builtin") for i in range(3)]
    )
    out = tmp_path / "items.jsonl"
    args = [
        "sample",
        "--policy",
        "tiny",
        "--prompts",
        str(prompts),
        "--k",
        "4",
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 prompts x 4 completions" in result.output
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
    first = rows[0]
    assert first["prompt"] == "Name a fruit number 0." and first["category"] == "brainstorming"
    assert first["user_id"] == "u0" and first["source"] == "builtin"  # every prompt field kept
    assert len(first["completions"]) == 4 and first["sources"] == ["tiny"] * 4
    assert "id" not in first and "text" not in first  # read by push as an item, not as a bare prompt
    item = item_from_row(first, "x")
    assert item["completions"] == first["completions"] and item["category"] == "brainstorming"
    again = tmp_path / "again.jsonl"
    assert runner.invoke(app, [*args[:-3], str(again), "--max-new-tokens", "6"]).exit_code == 0
    assert again.read_text() == out.read_text()  # seeded: the same completions


def test_sample_refuses_bad_prompts_and_k(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "category": "poetry", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(AlignloopError, match=r"bad.jsonl:2: field 'category'"):
        runner.invoke(app, ["sample", "--policy", "tiny", "--prompts", str(bad), "--out", str(tmp_path / "o")],
                      catch_exceptions=False)  # fmt: skip
    result = runner.invoke(app, ["sample", "--policy", "tiny", "--prompts", str(bad), "--k", "12", "--out", "o"])
    assert "k: completions per prompt must be 2..9" in str(result.exception)
