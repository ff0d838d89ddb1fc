"""SFT: loss on response tokens only, learning a pattern, exact resume, the kept checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import GenerationConfig, ModelConfig, SFTConfig, dump_config, load_config
from alignloop.data.records import Demonstration
from alignloop.errors import AlignloopError
from alignloop.models import load_causal_lm, load_policy, load_tokenizer
from alignloop.models.generation import generate, query_token_ids
from alignloop.models.scoring import FunctionScorer
from alignloop.train.checkpoint import list_checkpoints
from alignloop.train.runlog import read_metrics
from alignloop.train.schedule import cosine_with_warmup_factor
from alignloop.train.sft import IGNORE, build_example, collate, response_logits, response_only_loss, train_sft

ANSWER = "Yes, I agree."


def demos(n: int, start: int = 0, answer: str = ANSWER) -> list[Demonstration]:
    return [Demonstration(f"p{i}", f"Question number {i}?", answer) for i in range(start, start + n)]


def tiny_cfg(**kw) -> SFTConfig:
    base = dict(model=ModelConfig(name="tiny"), lr=3e-2, batch_size=4, warmup_ratio=0.0, eval_at_start=False)
    return SFTConfig(**{**base, **kw})


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_labels_cover_the_response_and_eos_only() -> None:
    tok = load_tokenizer("tiny")
    ex = build_example(tok, "Name a fruit.", "An apple.", max_length=256)
    query = query_token_ids(tok, "Name a fruit.")
    response = tok("An apple.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids == query + response
    assert ex.labels == [IGNORE] * len(query) + response
    assert query.count(tok.eos_token_id) >= 1  # the chat prompt holds <|im_end|> itself, and it is not a label
    assert not ex.truncated


def test_truncation_keeps_the_response_and_the_end_of_the_prompt() -> None:
    tok = load_tokenizer("tiny")
    long_prompt = "word " * 200
    ex = build_example(tok, long_prompt, "Short answer.", max_length=64)
    assert ex.truncated and len(ex.input_ids) == 64
    response = tok("Short answer.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids[-len(response) :] == response
    assert ex.input_ids[: -len(response)] == query_token_ids(tok, long_prompt)[-(64 - len(response)) :]


def test_response_only_loss_on_a_hand_made_batch() -> None:
    # tokens [4, 1, 3, 0(pad)], labels [-100, -100, 3, -100]: only logits[1] (predicting token 3) counts;
    # row 2: labels [-100, 2, 1, -100]: logits[0] -> 2 and logits[1] -> 1 count.
    logits = torch.zeros(2, 4, 5)
    logits[0, 0, 0] = 50.0  # would be a huge loss for the prompt token 1, but it is not a label
    logits[0, 1] = torch.tensor([0.0, 0.0, 0.0, math.log(3.0), 0.0])  # p(3) = 3 / 7
    logits[1, 0] = torch.tensor([0.0, 0.0, math.log(4.0), 0.0, 0.0])  # p(2) = 4 / 8
    logits[1, 2] = 99.0  # predicts the padding label: ignored
    labels = torch.tensor([[IGNORE, IGNORE, 3, IGNORE], [IGNORE, 2, 1, IGNORE]])
    total, n = response_only_loss(logits, labels)
    expected = -math.log(3 / 7) - math.log(4 / 8) - math.log(1 / 5)  # logits[1, 1] is uniform over 5
    assert n.item() == 3
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_loss_over_the_response_window_equals_the_loss_over_all_logits() -> None:
    model, tok = load_policy("tiny")
    examples = [build_example(tok, "Hi", "Yes.", 256), build_example(tok, "A much longer question here?", "No", 256)]
    batch = collate(examples, tok.pad_token_id)
    all_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = response_only_loss(all_logits, batch["labels"])
    logits, labels = response_logits(model, batch)
    assert logits.shape[1] < batch["input_ids"].shape[1]  # the prompt positions were not projected
    window = response_only_loss(logits, labels)
    assert window[1] == full[1] and torch.allclose(window[0], full[0], rtol=1e-5)


def test_collate_right_pads_with_ignored_labels() -> None:
    tok = load_tokenizer("tiny")
    a, b = build_example(tok, "Hi", "Yes.", 256), build_example(tok, "Hello there friend", "No.", 256)
    batch = collate([a, b], tok.pad_token_id)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    short = 0 if len(a.input_ids) < len(b.input_ids) else 1
    n = min(len(a.input_ids), len(b.input_ids))
    assert batch["attention_mask"][short, n:].eq(0).all() and batch["labels"][short, n:].eq(IGNORE).all()
    assert batch["input_ids"][short, n:].eq(tok.pad_token_id).all()


def test_cosine_schedule_with_warmup() -> None:
    assert cosine_with_warmup_factor(0, 10, 2) == pytest.approx(1 / 3)
    assert cosine_with_warmup_factor(1, 10, 2) == pytest.approx(2 / 3)
    assert cosine_with_warmup_factor(2, 10, 2) == pytest.approx(1.0)
    assert cosine_with_warmup_factor(6, 10, 2) == pytest.approx(0.5)  # halfway through the decay
    assert cosine_with_warmup_factor(10, 10, 2, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.slow
def test_sft_loss_falls_and_the_model_learns_a_fixed_answer(tmp_path) -> None:
    # every demonstration has the same answer, so one example per step carries the whole signal
    cfg = tiny_cfg(epochs=10, batch_size=1, lr=2e-2)
    result = train_sft(cfg, demos(8), demos(4, start=100), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 80  # 10 epochs x 8 steps
    assert sum(losses[-8:]) < 0.05 * sum(losses[:8])
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert val[-1] < val[0]
    model, tok = load_policy(str(result.best_dir))
    out = generate(model, tok, ["Question number 7?", "Question number 321?"], GenerationConfig(temperature=0))
    assert out.texts == [ANSWER, ANSWER] and out.has_eos.all()
    assert (tmp_path / "run" / "config.yaml").exists() and list((tmp_path / "run" / "tb").iterdir())
    assert load_config(tmp_path / "run" / "config.yaml", SFTConfig) == cfg


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(tmp_path) -> None:
    # dropout > 0 makes the result depend on the RNG state, which the checkpoint must restore
    cfg = tiny_cfg(epochs=2, dropout=0.1, checkpoint_every=2, eval_at_start=True)
    train, val = demos(10), demos(3, start=50)  # 3 steps per epoch, the last one short
    whole = train_sft(cfg, train, val, tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash_at_5(step: int, row: dict) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_sft(cfg, train, val, tmp_path / "cut", on_step=crash_at_5)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step-000004"
    resumed = train_sft(cfg, train, val, tmp_path / "cut", resume=True)

    assert resumed.steps == whole.steps == 6
    a, b = weights(whole.final_dir), weights(resumed.final_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "whole"))
    assert resumed.evals == whole.evals


def test_gradient_accumulation_equals_one_big_batch(tmp_path) -> None:
    # the loss of a step is normalised by the response tokens of the whole step, not per micro-batch
    train = [Demonstration(f"p{i}", f"Question {i}?", "Yes" + ", really" * i) for i in range(4)]
    big = train_sft(tiny_cfg(epochs=1, batch_size=4, grad_accum=1), train, None, tmp_path / "big")
    acc = train_sft(tiny_cfg(epochs=1, batch_size=1, grad_accum=4), train, None, tmp_path / "acc")
    assert big.steps == acc.steps == 1
    # same loss and same gradient (its norm before clipping); weights are not compared because
    # Adam's first step is lr * sign(g), which turns float noise in near-zero gradients into lr
    (one,), (four,) = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    assert four["train/loss"] == pytest.approx(one["train/loss"], rel=1e-6)
    assert four["train/grad_norm"] == pytest.approx(one["train/grad_norm"], rel=1e-5)


def test_stop_at_step_then_resume(tmp_path) -> None:
    cfg = tiny_cfg(epochs=1, batch_size=2)
    partial = train_sft(cfg, demos(6), None, tmp_path / "run", stop_at_step=2)
    assert not partial.completed and partial.final_dir is None
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000002"]
    done = train_sft(cfg, demos(6), None, tmp_path / "run", resume=True)
    assert done.completed and done.steps == 3 and done.best_dir == done.final_dir


def test_best_checkpoint_is_chosen_by_the_scorer_when_given(tmp_path) -> None:
    calls: list[int] = []
    epoch_scores = [0.0, 1.0, 5.0, 2.0]  # start, epoch 1, 2, 3: epoch 2 samples score best

    def scripted(prompt: str, completion: str) -> float:
        return epoch_scores[len(calls) - 1]

    class Scorer(FunctionScorer):
        def score_batch(self, prompts, completions):
            calls.append(1)
            return super().score_batch(prompts, completions)

    cfg = tiny_cfg(epochs=3, eval_at_start=True, keep_checkpoints=10, generation=GenerationConfig(max_new_tokens=3))
    run = tmp_path / "run"
    result = train_sft(cfg, demos(8), demos(2, start=40), run, scorer=Scorer(scripted))
    assert len(calls) == 4
    assert result.best_metric == "val/score" and result.best_step == 4 and result.best_value == 5.0
    info = json.loads((run / "best" / "alignloop_sft.json").read_text())
    assert info == {"step": 4, "epoch": 2, "metric": "val/score", "value": 5.0}
    best, ckpt4, final = (
        weights(run / "best"),
        weights(run / "checkpoints" / "step-000004" / "model"),
        weights(run / "final"),
    )
    assert all(torch.equal(best[k], ckpt4[k]) for k in best)
    assert not all(torch.equal(best[k], final[k]) for k in best)
    samples = (run / "samples" / "step-000004.jsonl").read_text().splitlines()
    assert [json.loads(s)["score"] for s in samples] == [5.0, 5.0]


def test_best_checkpoint_is_chosen_by_validation_loss_without_a_scorer(tmp_path) -> None:
    cfg = tiny_cfg(epochs=3)  # validation answers differ from training ones: the last epoch need not be best
    result = train_sft(cfg, demos(8), demos(3, start=40, answer="No, never."), tmp_path / "run")
    val = {e["step"]: e["val/loss"] for e in result.evals}
    assert result.best_metric == "val/loss" and result.best_step == min(val, key=val.get)
    assert result.best_value == min(val.values())


def test_lora_run_saves_merged_plain_folders(tmp_path) -> None:
    cfg = tiny_cfg(epochs=1, lora_r=4, lora_alpha=8, lr=5e-2)
    result = train_sft(cfg, demos(4), None, tmp_path / "run")
    final = result.final_dir
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    trained, base = load_causal_lm(str(final)).state_dict(), load_causal_lm("tiny").state_dict()
    assert trained.keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert any("q_proj" in k for k in changed)
    assert not any("embed_tokens" in k for k in changed)  # LoRA leaves the embeddings alone
    assert json.loads((final / "config.json").read_text())["attention_dropout"] == 0.0


def test_existing_run_is_not_overwritten_and_resume_needs_the_same_config(tmp_path) -> None:
    cfg = tiny_cfg(epochs=1, batch_size=4)
    run = tmp_path / "run"
    with pytest.raises(AlignloopError, match="nothing to resume: .* holds no SFT checkpoint"):
        train_sft(cfg, demos(4), None, run, resume=True)  # not a silent fresh start
    train_sft(cfg, demos(4), None, run)
    with pytest.raises(AlignloopError, match=r"run is not empty: it already holds .*--resume.*--overwrite"):
        train_sft(cfg, demos(4), None, run)
    with pytest.raises(AlignloopError, match="config differs .* in lr"):
        train_sft(tiny_cfg(epochs=1, batch_size=4, lr=1e-3), demos(4), None, run, resume=True)
    with pytest.raises(AlignloopError, match="training demonstrations differ"):
        train_sft(cfg, demos(4, answer="Other."), None, run, resume=True)
    # overwrite replaces the run, but never deletes a file the run did not write
    (run / "notes.txt").write_text("mine")
    first = (run / "final" / "model.safetensors").read_bytes()
    with pytest.raises(AlignloopError, match="also holds notes.txt"):
        train_sft(cfg, demos(4, answer="Other."), None, run, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "final" / "model.safetensors").read_bytes() == first
    (run / "notes.txt").unlink()
    train_sft(cfg, demos(4, answer="Other."), None, run, overwrite=True)
    assert (run / "final" / "model.safetensors").read_bytes() != first
    assert train_sft(cfg, demos(4, answer="Other."), None, run, resume=True).steps == 1  # the new run, finished


def test_config_validation_names_the_field(tmp_path) -> None:
    p = tmp_path / "sft.yaml"
    dump_config(tiny_cfg(), p)
    p.write_text(p.read_text().replace("epochs: 2", "epochs: 0"))
    with pytest.raises(AlignloopError, match="field 'epochs': must be at least 1, got 0"):
        load_config(p, SFTConfig)


def test_cli_sft_trains_resumes_and_reports_bad_input(tmp_path) -> None:
    from typer.testing import CliRunner

    from alignloop.cli.main import app
    from alignloop.data.jsonl import write_jsonl

    write_jsonl(tmp_path / "demos.jsonl", demos(4))
    write_jsonl(tmp_path / "val.jsonl", demos(2, start=9))
    (tmp_path / "sft.yaml").write_text("batch_size: 2\nwarmup_ratio: 0.0\neval_at_start: false\n")
    args = ["sft", "--data", str(tmp_path / "demos.jsonl"), "--val", str(tmp_path / "val.jsonl"),
            "--out", str(tmp_path / "run"), "--model", "tiny", "--epochs", "1", "--lr", "0.01",
            "--config", str(tmp_path / "sft.yaml")]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "kept model:" in result.output and (tmp_path / "run" / "best" / "config.json").exists()
    saved = load_config(tmp_path / "run" / "config.yaml", SFTConfig)
    assert (saved.model.name, saved.epochs, saved.lr, saved.batch_size) == ("tiny", 1, 0.01, 2)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]

    with pytest.raises(AlignloopError, match="is not empty: it already holds"):
        CliRunner().invoke(app, args, catch_exceptions=False)
    # --resume without --config reads the run's own config.yaml (no steps left: re-exports final/)
    resumed = CliRunner().invoke(
        app, ["sft", "--data", str(tmp_path / "demos.jsonl"), "--val", str(tmp_path / "val.jsonl"),
              "--out", str(tmp_path / "run"), "--resume"], catch_exceptions=False,
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "p", "prompt": "x"}\n')
    with pytest.raises(AlignloopError, match=r"bad.jsonl:1: field 'completion'"):
        CliRunner().invoke(app, ["sft", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "r2")],
                           catch_exceptions=False)  # fmt: skip
    with pytest.raises(AlignloopError, match="no --val was given"):
        CliRunner().invoke(app, ["sft", "--data", str(tmp_path / "demos.jsonl"), "--out", str(tmp_path / "r3"),
                                 "--judge", "gold"], catch_exceptions=False)  # fmt: skip


def test_system_prompt_is_trained_on_and_saved_with_the_policy(tmp_path) -> None:
    from alignloop.models.loading import format_prompt, set_default_system_prompt

    tok = load_tokenizer("tiny")
    default = format_prompt(tok, "Name a fruit.")
    assert "You are a helpful AI assistant" in default  # SmolLM2's own default system message
    set_default_system_prompt(tok, 'Be "brief".')
    set_default_system_prompt(tok, "")  # a second call replaces the first, it does not stack
    short = format_prompt(tok, "Name a fruit.")
    assert short == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok(short)["input_ids"]) < len(tok(default)["input_ids"]) - 10
    explicit = tok.apply_chat_template(
        [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}], tokenize=False
    )
    assert explicit.startswith("<|im_start|>system\nOwn.<|im_end|>")  # a conversation's own system turn wins

    result = train_sft(tiny_cfg(epochs=1, system_prompt=""), demos(4), None, tmp_path / "run")
    saved = load_tokenizer(str(result.final_dir))
    assert format_prompt(saved, "Name a fruit.") == short
    ex = build_example(saved, "Name a fruit.", ANSWER, max_length=256)
    assert (
        ex.input_ids[: len(tok(short, add_special_tokens=False)["input_ids"])]
        == tok(short, add_special_tokens=False)["input_ids"]
    )


def test_resuming_a_finished_run_returns_it_without_training(tmp_path) -> None:
    cfg = tiny_cfg(epochs=2, batch_size=2)
    first = train_sft(cfg, demos(4), demos(2, start=10), tmp_path / "run")
    assert list_checkpoints(tmp_path / "run") == [tmp_path / "run" / "checkpoints" / "step-000002"]  # none at the end
    before = weights(first.final_dir)
    again = train_sft(cfg, demos(4), demos(2, start=10), tmp_path / "run", resume=True)
    assert (again.steps, again.best_dir, again.best_step, again.best_metric) == (
        first.steps, first.best_dir, first.best_step, first.best_metric
    )  # fmt: skip
    assert again.evals == first.evals
    after = weights(again.final_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was trained again
