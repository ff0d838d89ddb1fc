"""The reward-model scoring service: same scores as the local scorer, 422 on bad bodies, the remote client."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from alignloop.errors import AlignloopError
from alignloop.models.reward import RewardScorer, fit_normalisation, init_reward_model, load_scorer
from alignloop.models.rm_server import RemoteScorer, create_app
from alignloop.models.scoring import Scorer

PROMPTS = ["Name a fruit.", "Write a haiku about rain.", "What is 2+2?"]
COMPLETIONS = ["Apple.", "Soft rain on the roof, the garden drinks slowly, clouds drift far away.", "4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, tok = init_reward_model("tiny")
    fit_normalisation(model, tok, PROMPTS, COMPLETIONS)  # a non-zero bias, so the server must apply it
    path = tmp_path_factory.mktemp("rm") / "model"
    model.save(path, tok)
    return path


@pytest.fixture(scope="module")
def local(model_dir) -> RewardScorer:
    return RewardScorer.load(model_dir, batch_size=2)


@pytest.fixture(scope="module")
def client(local) -> TestClient:
    return TestClient(create_app(local, {"kind": local.model.info.kind}))


def test_server_scores_match_the_local_scorer(client, local) -> None:
    resp = client.post("/score", json={"prompts": PROMPTS, "completions": COMPLETIONS})
    assert resp.status_code == 200
    scores = resp.json()["scores"]
    expected = local.score_batch(PROMPTS, COMPLETIONS)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert local.model.info.bias != 0.0 and sum(scores) == pytest.approx(0.0, abs=1e-5)  # normalised
    assert client.get("/health").json() == {"status": "ok", "kind": "causal"}


def test_mismatched_lengths_are_422_with_both_counts(client) -> None:
    resp = client.post("/score", json={"prompts": PROMPTS, "completions": COMPLETIONS[:2]})
    assert resp.status_code == 422
    assert "3 prompts and 2 completions" in resp.json()["detail"]


def test_malformed_body_is_422(client) -> None:
    assert client.post("/score", json={"prompts": "not a list", "completions": []}).status_code == 422
    assert client.post("/score", json={"completions": ["x"]}).status_code == 422


def test_empty_request_scores_nothing(client) -> None:
    resp = client.post("/score", json={"prompts": [], "completions": []})
    assert resp.status_code == 200 and resp.json() == {"scores": []}


def test_remote_scorer_is_a_scorer_and_splits_large_batches(client, local) -> None:
    remote = RemoteScorer("http://testserver", client=client, max_items=2)
    assert isinstance(remote, Scorer) and isinstance(local, Scorer)
    assert remote.score_batch(PROMPTS, COMPLETIONS) == pytest.approx(local.score_batch(PROMPTS, COMPLETIONS), abs=1e-6)
    with pytest.raises(AlignloopError, match="3 prompts but 1 completions"):
        remote.score_batch(PROMPTS, COMPLETIONS[:1])


def test_remote_scorer_reports_an_unreachable_service() -> None:
    remote = RemoteScorer("http://127.0.0.1:9", timeout=2.0)
    with pytest.raises(AlignloopError, match="unreachable"):
        remote.score_batch(["a"], ["b"])


def test_load_scorer_picks_local_or_remote(model_dir) -> None:
    assert isinstance(load_scorer(str(model_dir)), RewardScorer)
    assert isinstance(load_scorer("http://localhost:8100"), RemoteScorer)
