"""``alignloop compare`` on the tiny model with two methods: the table, the plot, the intervals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import CompareConfig
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Prompt, Ranking
from alignloop.errors import AlignloopError

ANSWERS = ["Yes, gladly.", "Sure.", "Maybe later.", "No."]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_compare_two_methods_writes_the_table_and_the_plot(tmp_path) -> None:
    rankings = [
        Ranking.from_ranks(f"p{i}", f"Question {i}?", ANSWERS[:3] if i % 2 else ANSWERS[1:], [0, 1, 2])
        for i in range(8)
    ]
    write_jsonl(tmp_path / "rankings.jsonl", rankings)
    write_jsonl(tmp_path / "prompts.jsonl", [Prompt(f"q{i}", f"Tell me about {i}.", "u") for i in range(4)])
    write_jsonl(tmp_path / "eval.jsonl", [Prompt(f"e{i}", f"Say something nice about {i}.", "h") for i in range(3)])
    (tmp_path / "ptx.txt").write_text("The cat sat on the mat.\n\nRain falls in spring.\n")
    (tmp_path / "compare.yaml").write_text(
        f"""
policy: tiny
rankings: {tmp_path / "rankings.jsonl"}
prompts: {tmp_path / "prompts.jsonl"}
eval_prompts: {tmp_path / "eval.jsonl"}
ptx_corpus: {tmp_path / "ptx.txt"}
methods: [rloo, dpo, bon2]
rm: {{model: {{name: tiny}}, lr: 0.01, val_fraction: 0.25}}
ppo: {{total_episodes: 4, batch_size: 4, minibatch_size: 4, ppo_epochs: 1, group_size: 2, lr: 0.01,
      generation: {{max_new_tokens: 4}}}}
dpo: {{lr: 0.01, val_fraction: 0.25}}
eval: {{samples_per_prompt: 2, bootstrap: 50, generation: {{max_new_tokens: 4}}}}
"""
    )
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "compare.md").read_text()
    for method in ("rloo", "dpo", "bon2", "sft"):
        assert f"| {method} |" in table
    assert "gold win rate vs SFT [95 % CI]" in result.output
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]}
    for method in ("rloo", "dpo", "bon2"):
        r = rows[method]
        for judge in ("gold", "rm"):
            lo, hi = r[f"{judge}_ci"]
            assert 0 <= lo <= r[f"{judge}_win_rate"] <= hi <= 1
        assert r["perplexity"] > 1
    assert rows["bon2"]["kl"] == pytest.approx(0.6931 - 0.5, abs=1e-4) and rows["bon2"]["samples"] == 2 * 3 * 2
    assert rows["rloo"]["samples"] == 4 and rows["dpo"]["samples"] == 0 and rows["dpo"]["kl"] != 0
    assert (tmp_path / "out" / "rloo" / "policy").is_dir() and (tmp_path / "out" / "dpo" / "policy").is_dir()


def test_compare_config_errors_name_the_key(tmp_path) -> None:
    from alignloop.compare import run_compare

    with pytest.raises(AlignloopError, match="methods: unknown method 'sac'"):
        run_compare(CompareConfig(policy="tiny", rankings="r", eval_prompts="e", methods=["sac"]), tmp_path)
    with pytest.raises(AlignloopError, match="ptx_corpus"):
        run_compare(
            CompareConfig(policy="tiny", rankings="r", eval_prompts="e", prompts="p", methods=["ppo_ptx"]), tmp_path
        )
