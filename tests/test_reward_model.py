"""Reward model: formatting, scoring at the last real token, training on simulated-panel rankings,
normalisation after save/load, exact resume, cross-validation by labeler group, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import statistics

import pytest
import torch
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import ModelConfig, PanelConfig, RMConfig
from alignloop.data.builtin import base_prompts
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Demonstration, Prompt, Ranking, stable_id
from alignloop.errors import AlignloopError
from alignloop.labelers import SimulatedPanel
from alignloop.labelers.text import keywords
from alignloop.models.reward import (
    RewardScorer,
    collate,
    encode,
    init_reward_model,
    load_reward_model,
    pad_id,
)
from alignloop.train.reward import (
    EncodedRanking,
    chunk_prompts,
    encode_rankings,
    expand_pairs,
    split_by_prompt,
    train_reward_model,
)
from alignloop.train.reward_crossval import crossval
from alignloop.train.runlog import read_metrics

POSITIVE = "great wonderful helpful clear friendly excellent happy useful lovely".split()
NEGATIVE = "terrible awful useless boring horrible sad bad wrong ugly".split()
FILLER = "the idea here is that we can look at it and then say more about what it means".split()


def candidate(rng: random.Random, prompt: str) -> str:
    """A made-up answer whose gold utility varies with its tone and how many key words it covers."""
    kws = [surface for _, surface in keywords(prompt)]
    tone = rng.random()
    cover = rng.random()
    out = []
    for _ in range(rng.randint(8, 24)):
        u = rng.random()
        if u < 0.5:
            out.append(rng.choice(POSITIVE if rng.random() < tone else NEGATIVE))
        elif u < 0.5 + 0.3 * cover and kws:
            out.append(rng.choice(kws))
        else:
            out.append(rng.choice(FILLER))
    return " ".join(out)


def panel_rankings(n_prompts: int, ks: list[int], seed: int = 0, n_groups: int = 3) -> list[Ranking]:
    """Rankings by a low-noise simulated panel of K made-up candidates per prompt (K cycles over ks)."""
    rng = random.Random(seed)
    texts = [t for _, t in base_prompts()]
    rng.shuffle(texts)
    panel = SimulatedPanel(
        PanelConfig(
            n_labelers=2 * n_groups,
            n_groups=n_groups,
            careless_fraction=0.0,
            length_lover_fraction=0.0,
            temperature=0.02,
        )
    )
    items = []
    for i, text in enumerate(texts[:n_prompts]):
        prompt = Prompt(stable_id("rm-test", text), text, f"user-{i}")
        items.append((prompt, [candidate(rng, text) for _ in range(ks[i % len(ks)])]))
    return panel.rank_items(items)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine OpenMP threads
    waiting on each other make every small op many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> dict[str, list[Ranking]]:
    train = panel_rankings(48, [2, 4, 6, 9], seed=0)
    held = panel_rankings(80, [4], seed=1)[48:]  # other prompts than the training ones
    return {"train": train, "val": held}


def tiny_cfg(**kw) -> RMConfig:
    base = dict(model=ModelConfig(name="tiny"), lr=1e-2, prompts_per_step=4, micro_batch_completions=12, epochs=2)
    base.update(kw)
    return RMConfig(**base)


# -- the model ------------------------------------------------------------------------------------


def test_causal_formatting_is_chat_template_completion_eos_and_keeps_the_end_when_truncated() -> None:
    model, tok = init_reward_model("tiny", max_length=256)
    assert model.info.kind == "causal" and model.info.pooling == "last"
    (ids, types), (ids2, _) = encode(tok, model.info, ["Name a fruit."] * 2, ["Apple.", "Apple." + tok.eos_token])
    assert types is None and ids == ids2  # EOS is not doubled
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == ids2.count(tok.eos_token_id)
    assert tok.decode(ids).startswith("<|im_start|>system") and "Name a fruit.<|im_end|>" in tok.decode(ids)
    model.info.max_length = 10
    (short, _), *_ = encode(tok, model.info, ["Name a fruit."], ["Apple. " * 20])
    assert len(short) == 10 and short[-1] == tok.eos_token_id
    d = model.backbone.config.hidden_size
    assert model.head.bias.item() == 0.0 and model.head.weight.shape == (1, d)
    assert not hasattr(model.backbone, "lm_head")


def test_score_is_read_at_the_last_real_token_whatever_the_padding() -> None:
    torch.manual_seed(0)
    model, tok = init_reward_model("tiny")
    model.eval()
    items = encode(tok, model.info, ["Say hi.", "Write a long poem about the sea."], ["hi", "waves " * 30])
    with torch.no_grad():
        alone = model(**collate(items[:1], pad_id(tok)))
        padded = model(**collate(items, pad_id(tok)))
        # the same completion left-padded reads the same last token (positions shift, so compare pooling only)
        batch = collate(items, pad_id(tok))
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert padded[0].item() == pytest.approx(alone[0].item(), abs=1e-5)
    n0 = len(items[0][0])
    assert model.head(hidden[0, n0 - 1]).item() == pytest.approx(padded[0].item(), abs=1e-5)
    assert padded[0].item() != pytest.approx(model.head(hidden[0, -1]).item(), abs=1e-6)  # not the pad


def test_encoder_backbone_uses_sentence_pairs_and_mean_pooling() -> None:
    model, tok = init_reward_model("minilm-l6", max_length=64)
    assert model.info.kind == "encoder" and model.info.pooling == "mean"
    assert getattr(model.backbone, "pooler", None) is None
    (ids, types), *_ = encode(tok, model.info, ["Name a fruit."], ["An apple."])
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
    assert types is not None and types[0] == 0 and types[-1] == 1
    scores = RewardScorer(model, tok, batch_size=2).score_batch(["a", "b", "c"], ["x", "yy yy", "z"])
    assert len(scores) == 3 and len(set(scores)) == 3


def test_chunks_hold_whole_prompts_within_the_micro_batch() -> None:
    model, tok = init_reward_model("tiny")
    rankings = panel_rankings(6, [4, 9, 2], seed=3)
    enc = encode_rankings(model, tok, rankings)
    chunks = chunk_prompts(enc, 10)
    assert [[len(r.items) for r in c] for c in chunks] == [[4], [9], [2, 4], [9], [2]]
    assert sum(len(c) for c in chunks) == 6


def test_merged_overlap_scores_each_item_once_with_the_loss_of_separate_rankings() -> None:
    from alignloop.train.losses import rm_kway_loss
    from alignloop.train.reward_data import score_chunk

    model, tok = init_reward_model("tiny")
    model.eval()
    base = panel_rankings(3, [4, 3], seed=5)
    # a second and a third labeler rank the first two items again, in other orders; the third item once
    again = [Ranking(r.prompt_id, r.prompt, r.completions, r.order[::-1], "b") for r in base[:2]]
    again.append(Ranking(base[0].prompt_id, base[0].prompt, base[0].completions, r_order(base[0]), "c"))
    rankings = base + again
    separate = encode_rankings(model, tok, rankings)
    merged = encode_rankings(model, tok, rankings, merge_overlap=True)
    assert len(separate) == 6 and [len(m.all_ranks) for m in merged] == [3, 2, 1]
    assert sum(len(m.items) for m in merged) == 4 + 3 + 4  # each item's completions scored once
    assert sum(m.pair_rankings for m in merged) == 6
    with torch.no_grad():
        loss_sep, m_sep = rm_kway_loss(*score_chunk(model, separate, pad_id(tok), torch.device("cpu")))
        loss_mrg, m_mrg = rm_kway_loss(*score_chunk(model, merged, pad_id(tok), torch.device("cpu")))
    assert loss_mrg.item() == pytest.approx(loss_sep.item(), rel=1e-5)
    assert int(m_mrg["n_pairs"]) == int(m_sep["n_pairs"]) and int(m_mrg["n_prompts"]) == 6
    # shuffled_pairs expands every labeler's pairs, merged or not
    assert len(expand_pairs(merged)) == len(expand_pairs(separate))


def r_order(r: Ranking) -> list[int]:
    """Another order of a ranking's completions: the best one moved to the end."""
    return [*r.order[1:], r.order[0]]


def test_merged_overlap_trains_fewer_steps_on_the_same_rankings(tmp_path) -> None:
    base = panel_rankings(8, [4], seed=6)
    rankings = base + [Ranking(r.prompt_id, r.prompt, r.completions, r_order(r), "b") for r in base]
    cfg = tiny_cfg(epochs=1, prompts_per_step=4, val_fraction=0.0)
    plain = train_reward_model(cfg, rankings, tmp_path / "plain", progress=False)
    merged = train_reward_model(
        dataclasses.replace(cfg, merge_overlap=True), rankings, tmp_path / "merged", progress=False
    )
    assert (plain.steps, merged.steps) == (4, 2)  # 16 rankings / 4 per step vs 8 items / 4 per step


def test_split_by_prompt_never_shares_a_prompt() -> None:
    rankings = panel_rankings(20, [3], seed=4)
    rankings = rankings + [Ranking(r.prompt_id, r.prompt, r.completions, r.order[::-1], "other") for r in rankings]
    train, held = split_by_prompt(rankings, 0.25, seed=0)
    assert len(held) == 10 and len(train) == 30
    assert not {r.prompt_id for r in train} & {r.prompt_id for r in held}


# -- training -------------------------------------------------------------------------------------


def test_trained_rm_beats_chance_on_held_out_prompts_and_normalises_demos_to_mean_zero(tmp_path, data) -> None:
    demos = [Demonstration(r.prompt_id, r.prompt, r.completions[r.order[0]]) for r in data["train"][:12]]
    res = train_reward_model(tiny_cfg(), data["train"], tmp_path / "run", val=data["val"], demos=demos, progress=False)
    rows = read_metrics(tmp_path / "run")
    first = next(r for r in rows if "train/loss" in r)
    assert res.val["val/accuracy"] >= 0.75, res.val  # chance is 0.5
    assert res.train["train/loss"] < first["train/loss"]
    assert {"val/accuracy", "val/loss", "val/margin"} <= set(rows[-2]) | set(rows[-1])
    assert (tmp_path / "run" / "config.yaml").exists() and any((tmp_path / "run" / "tb").iterdir())

    # normalisation: after save/load the demonstrations score mean 0, and the bias is what was fitted
    scorer = RewardScorer.load(res.model_dir, batch_size=5)
    scores = scorer.score_batch([d.prompt for d in demos], [d.completion for d in demos])
    raw = scorer.raw_scores([d.prompt for d in demos], [d.completion for d in demos])
    assert sum(scores) / len(scores) == pytest.approx(0.0, abs=1e-5)
    assert abs(sum(raw) / len(raw)) > 1e-3  # it was not zero before normalising
    assert scorer.model.info.bias == pytest.approx(-sum(raw) / len(raw), abs=1e-5)
    assert res.normalisation["bias"] == pytest.approx(scorer.model.info.bias)


def test_normalisation_with_gain_gives_unit_std(tmp_path, data) -> None:
    from alignloop.models.reward import fit_normalisation

    model, tok = init_reward_model("tiny")
    demos = [(r.prompt, c) for r in data["val"][:6] for c in r.completions]
    stats = fit_normalisation(model, tok, [p for p, _ in demos], [c for _, c in demos], with_gain=True)
    model.save(tmp_path / "rm", tok)
    again, tok2 = load_reward_model(tmp_path / "rm")
    s = torch.tensor(RewardScorer(again, tok2).score_batch([p for p, _ in demos], [c for _, c in demos]))
    assert s.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert s.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert stats["gain"] == pytest.approx(1 / stats["raw_std"])


def test_interrupted_run_resumes_to_the_same_metrics_and_weights(tmp_path, data) -> None:
    cfg = tiny_cfg(epochs=2, prompts_per_step=8, checkpoint_every=4, eval_every=3, dropout=0.1)
    train = data["train"][:32]  # 4 steps per epoch, 8 in all
    full = train_reward_model(cfg, train, tmp_path / "full", val=data["val"][:8], progress=False)

    def crash(step: int, _metrics: dict) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, train, tmp_path / "cut", val=data["val"][:8], progress=False, on_step=crash)
    assert not (tmp_path / "cut" / "model").exists()
    with pytest.raises(AlignloopError, match="already holds"):
        train_reward_model(cfg, train, tmp_path / "cut", val=data["val"][:8], progress=False)
    resumed = train_reward_model(cfg, train, tmp_path / "cut", val=data["val"][:8], progress=False, resume=True)

    assert resumed.steps == full.steps == 8
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "full")
    a, _ = load_reward_model(full.model_dir)
    b, _ = load_reward_model(resumed.model_dir)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_micro_batching_accumulates_the_same_gradient_as_one_big_batch(tmp_path, data) -> None:
    # 8 prompts of K in {2,4,6,9} per step: micro-batches of 9 completions split them into 6 chunks
    train = data["train"][:16]
    runs = {}
    for micro in (9, 64):
        cfg = tiny_cfg(epochs=1, prompts_per_step=8, micro_batch_completions=micro)
        runs[micro] = train_reward_model(cfg, train, tmp_path / f"m{micro}", val=data["val"][:4], progress=False)
    small, big = (read_metrics(tmp_path / f"m{m}") for m in (9, 64))
    for a, b in zip(small, big, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    a, _ = load_reward_model(runs[9].model_dir)
    b, _ = load_reward_model(runs[64].model_dir)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name


def test_shuffled_pairs_batching_makes_every_pair_an_element_over_the_same_steps(tmp_path, data) -> None:
    model, tok = init_reward_model("tiny")
    train = data["train"][:12]  # K in {2, 4, 6, 9}
    enc = encode_rankings(model, tok, train)
    pairs = expand_pairs(enc)
    assert len(pairs) == sum(len(list(r.pairs())) for r in train)
    assert all(len(p.items) == 2 and p.ranks == [0, 1] for p in pairs)
    # the winner comes first; a tie gives no pair
    tied = EncodedRanking(enc[3].items[:3], [1, 1, 0])
    assert [[id(i) for i in p.items] for p in expand_pairs([tied])] == [
        [id(tied.items[2]), id(tied.items[0])],
        [id(tied.items[2]), id(tied.items[1])],
    ]

    cfg = tiny_cfg(epochs=2, prompts_per_step=4)
    runs = {}
    for mode in ("per_prompt", "shuffled_pairs"):
        run_cfg = dataclasses.replace(cfg, batching=mode)
        runs[mode] = train_reward_model(run_cfg, train, tmp_path / mode, val=data["val"][:4], progress=False)
    assert runs["per_prompt"].steps == runs["shuffled_pairs"].steps == 6  # 12 prompts / 4 per step, 2 epochs
    for mode in runs:
        steps = [r for r in read_metrics(tmp_path / mode) if "train/pairs" in r]
        assert sum(r["train/pairs"] for r in steps) == 2 * len(pairs), mode  # every comparison once per epoch
    pair_steps = [r["train/pairs"] for r in read_metrics(tmp_path / "shuffled_pairs") if "train/pairs" in r]
    assert max(pair_steps) - min(pair_steps) <= len(pairs) / 3  # pairs spread evenly over the steps
    with pytest.raises(ValueError, match="batching: must be per_prompt or shuffled_pairs"):
        dataclasses.replace(cfg, batching="pairs").validate()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, data) -> None:
    with pytest.raises(AlignloopError, match="nothing to resume"):
        train_reward_model(tiny_cfg(), data["train"], tmp_path / "new", resume=True, progress=False)


def test_crossval_by_labeler_group_reports_in_group_and_held_out_group_accuracy(tmp_path) -> None:
    rankings = panel_rankings(60, [4], seed=5, n_groups=3)
    assert len({r.metadata["labeler_group"] for r in rankings}) == 3
    cfg = tiny_cfg(epochs=1)
    res = crossval(cfg, rankings, k=3, test_fraction=0.25, progress=False)
    assert [f["fold"] for f in res.folds] == [0, 1, 2]
    assert sorted(g for f in res.folds for g in f["held_out_groups"]) == ["0", "1", "2"]
    # each figure is measured on the data it names: in-group = the held-out prompts as the training
    # groups ranked them; held-out group = the fold's own groups on prompts no training ranking had
    _, test = split_by_prompt(rankings, 0.25, cfg.seed)
    test_ids = {r.prompt_id for r in test}
    for f in res.folds:
        out = set(f["held_out_groups"])
        group = {id(r): str(r.metadata["labeler_group"]) for r in rankings}
        in_group = [r for r in rankings if group[id(r)] not in out and r.prompt_id in test_ids]
        trained = {r.prompt_id for r in rankings if group[id(r)] not in out} - test_ids
        held = [r for r in rankings if group[id(r)] in out and r.prompt_id not in trained]
        assert f["in_group_pairs"] == sum(len(list(r.pairs())) for r in in_group) > 0
        assert f["held_out_pairs"] == sum(len(list(r.pairs())) for r in held) > 0
        for kind in ("in_group", "held_out"):
            correct = f[f"{kind}_accuracy"] * f[f"{kind}_pairs"]
            assert correct == pytest.approx(round(correct), abs=1e-3)  # a count of correct pairs (float32)
    accs = [f["in_group_accuracy"] for f in res.folds]
    assert res.in_group == pytest.approx((statistics.fmean(accs), statistics.stdev(accs)))
    assert "+-" in res.summary() and "held-out group" in res.summary()
    with pytest.raises(AlignloopError, match="needs at least 5 groups; the data has 3"):
        crossval(tiny_cfg(), rankings, k=5, progress=False)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_train_eval_and_errors(tmp_path, data) -> None:
    runner = CliRunner()
    write_jsonl(tmp_path / "train.jsonl", data["train"][:16])
    write_jsonl(tmp_path / "val.jsonl", data["val"][:8])
    write_jsonl(tmp_path / "demos.jsonl", [Demonstration(r.prompt_id, r.prompt, r.completions[0]) for r in data["val"]])
    (tmp_path / "rm.yaml").write_text("lr: 0.003\nprompts_per_step: 4\nmodel:\n  name: tiny\n")
    args = ["rm", "train", "--data", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl")]
    args += [
        "--demos",
        str(tmp_path / "demos.jsonl"),
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(tmp_path / "rm.yaml"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out pairwise accuracy" in result.output and "bias" in result.output
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.003" in saved and "name: tiny" in saved
    assert json.loads((tmp_path / "run" / "model" / "reward_config.json").read_text())["bias"] != 0.0

    result = runner.invoke(app, ["rm", "eval", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "val.jsonl")])
    assert result.exit_code == 0 and "pairwise accuracy" in result.output and "(48 pairs)" in result.output

    # the run folder (train/run_folder.py): a second run into it is refused, naming the folder and the flags
    with pytest.raises(AlignloopError, match=r"run is not empty: it already holds .*--resume.*--overwrite"):
        runner.invoke(app, args, catch_exceptions=False)
    with pytest.raises(AlignloopError, match="config differs from the run's config.yaml in lr"):
        runner.invoke(app, [*args, "--resume", "--lr", "0.01"], catch_exceptions=False)
    first_model = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    (tmp_path / "run" / "notes.txt").write_text("not the run's")
    with pytest.raises(AlignloopError, match="also holds notes.txt"):
        runner.invoke(app, [*args, "--overwrite", "--lr", "0.01"], catch_exceptions=False)
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == first_model  # nothing deleted
    (tmp_path / "run" / "notes.txt").unlink()
    result = runner.invoke(app, [*args, "--overwrite", "--lr", "0.01"], catch_exceptions=False)
    assert result.exit_code == 0 and "lr: 0.01" in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() != first_model

    # bad input: a file that is not rankings, a folder that is not a reward model
    (tmp_path / "bad.jsonl").write_text(
        '{"prompt_id": "p", "prompt": "x", "completions": ["a", "b"], "order": [0, 0]}\n'
    )
    with pytest.raises(AlignloopError, match=r"bad.jsonl:1: field 'order'"):
        runner.invoke(
            app,
            ["rm", "eval", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "bad.jsonl")],
            catch_exceptions=False,
        )
    with pytest.raises(AlignloopError, match="not a reward model folder"):
        runner.invoke(app, ["rm", "eval", str(tmp_path), "--data", str(tmp_path / "val.jsonl")], catch_exceptions=False)


def test_adam_settings_come_from_the_config(tmp_path, data) -> None:
    from alignloop.train.checkpoint import STATE_FILE, latest_checkpoint

    cfg = tiny_cfg(epochs=1, adam_betas=(0.8, 0.99), adam_eps=1e-6)
    train_reward_model(cfg, data["train"][:4], tmp_path / "run", val=[], progress=False)
    state = torch.load(latest_checkpoint(tmp_path / "run") / STATE_FILE, weights_only=False)
    groups = state["extra"]["optimizer_state"]["param_groups"]
    assert {(tuple(g["betas"]), g["eps"]) for g in groups} == {((0.8, 0.99), 1e-6)}
