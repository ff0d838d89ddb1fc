"""DPO on K-way rankings: the loss against pair-by-pair and TRL's formula, the reference cache,
learning on the tiny model, exact resume, LoRA, the CLI."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.config import DPOConfig, ModelConfig
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError
from alignloop.train import dpo as dpo_module
from alignloop.train import logprobs as logprobs_module
from alignloop.train.checkpoint import list_checkpoints
from alignloop.train.dpo import train_dpo
from alignloop.train.losses import dpo_kway_loss, plackett_luce_loss
from alignloop.train.runlog import read_metrics

# -- the loss on hand-made log-probs --------------------------------------------------------------


def _batch(seed: int, ks: list[int], tie_prob: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    kmax = max(ks)
    logps = -10 * torch.rand(len(ks), kmax, generator=g)
    ref = -10 * torch.rand(len(ks), kmax, generator=g)
    ranks = torch.zeros(len(ks), kmax, dtype=torch.long)
    mask = torch.zeros(len(ks), kmax, dtype=torch.long)
    for b, k in enumerate(ks):
        r = torch.randperm(k, generator=g)
        if tie_prob:
            r = torch.where(torch.rand(k, generator=g) < tie_prob, r // 2, r)
        ranks[b, :k], mask[b, :k] = r, 1
    return logps, ref, ranks, mask


def one_pair(loss_type: str, beta: float, pw, pl, rw, rl) -> torch.Tensor:
    """The loss of ONE expanded pair (chosen w, rejected l), as a pair-based trainer computes it."""
    logits = (pw - pl) - (rw - rl)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits)
    return (logits - 1 / (2 * beta)) ** 2


def pair_by_pair(loss_type, beta, logps, ref, ranks, ks) -> torch.Tensor:
    """Every untied pair of every prompt computed one by one; mean per prompt, then over prompts."""
    per_prompt = []
    for b, k in enumerate(ks):
        terms = [
            one_pair(loss_type, beta, logps[b, w], logps[b, lo], ref[b, w], ref[b, lo])
            for w, lo in itertools.permutations(range(k), 2)
            if ranks[b, w] < ranks[b, lo]
        ]
        if terms:
            per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("tie_prob", [0.0, 0.4])
def test_kway_loss_equals_the_mean_of_the_pairwise_losses_values_and_gradients(loss_type, tie_prob) -> None:
    ks = [4, 9, 2, 6, 9, 3]
    logps, ref, ranks, mask = _batch(3, ks, tie_prob)
    logps[mask == 0] = 55.0  # whatever sits in padded slots must not matter
    fast, slow = logps.clone().requires_grad_(True), logps.clone().requires_grad_(True)
    loss, m = dpo_kway_loss(fast, ref, ranks, mask, beta=0.3, loss_type=loss_type)
    expected = pair_by_pair(loss_type, 0.3, slow, ref, ranks, ks)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(fast.grad, slow.grad, atol=1e-6)
    assert fast.grad.abs().sum() > 0 and fast.grad[mask == 0].abs().sum() == 0
    untied = sum(
        int(ranks[b, w] < ranks[b, lo]) for b, k in enumerate(ks) for w, lo in itertools.permutations(range(k), 2)
    )
    assert int(m["n_pairs"]) == untied and (tie_prob == 0) == (untied == sum(k * (k - 1) // 2 for k in ks))


def test_ties_are_skipped() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.5, -1.5]])
    tied = torch.tensor([[0, 1, 1]])  # completions 1 and 2 tied: only (0,1) and (0,2) count
    loss, m = dpo_kway_loss(logps, ref, tied, torch.ones(1, 3), beta=1.0)
    expected = (-F.logsigmoid(torch.tensor(1.0)) - F.logsigmoid(torch.tensor(2.0))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and int(m["n_pairs"]) == 2
    all_tied, m = dpo_kway_loss(logps, ref, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), beta=1.0)
    assert all_tied.item() == 0.0 and int(m["n_prompts"]) == 0


def trl_dpo_loss(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """TRL's DPOTrainer sigmoid loss (label_smoothing 0), written out from its documented formula:
    logits = (pi_c - pi_r) - (ref_c - ref_r); loss = -logsigmoid(beta * logits);
    chosen_rewards = beta * (pi_c - ref_c); rejected_rewards = beta * (pi_r - ref_r)."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)


def test_k2_equals_trls_formula_on_hand_made_logprobs() -> None:
    # three prompts, K = 2; the chosen completion is at index 1 in the second prompt
    logps = torch.tensor([[-12.0, -15.5], [-8.25, -7.0], [-20.0, -19.0]])
    ref = torch.tensor([[-13.0, -14.0], [-8.0, -9.5], [-21.0, -18.0]])
    ranks = torch.tensor([[0, 1], [1, 0], [0, 1]])
    chosen = torch.tensor([0, 1, 0])
    rows = torch.arange(3)
    losses, c_rew, r_rew = trl_dpo_loss(
        0.1, logps[rows, chosen], logps[rows, 1 - chosen], ref[rows, chosen], ref[rows, 1 - chosen]
    )
    loss, m = dpo_kway_loss(logps, ref, ranks, torch.ones(3, 2), beta=0.1)
    assert loss.item() == pytest.approx(losses.mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.579716, abs=1e-5)  # by hand: mean of -log sigma(0.25, 0.275, 0.2)
    assert m["margin"].item() == pytest.approx((c_rew - r_rew).mean().item(), rel=1e-6)
    assert m["chosen"].item() == pytest.approx(c_rew.mean().item(), rel=1e-6)
    assert m["rejected"].item() == pytest.approx(r_rew.mean().item(), rel=1e-6)
    assert m["accuracy"].item() == pytest.approx((c_rew > r_rew).float().mean().item())


def test_plackett_luce_is_the_ranking_likelihood_and_dpo_at_k2() -> None:
    h = torch.tensor([[0.3, -0.2, 1.1]])
    ranks = torch.tensor([[1, 2, 0]])  # order: 2, 0, 1
    e = h.exp()[0]
    nll = -(torch.log(e[2] / (e[2] + e[0] + e[1])) + torch.log(e[0] / (e[0] + e[1])))
    assert plackett_luce_loss(h, ranks, torch.ones(1, 3)).item() == pytest.approx(nll.item() / 2, rel=1e-6)
    logps, ref = torch.tensor([[-3.0, -4.0]]), torch.tensor([[-3.5, -3.0]])
    pl, _ = dpo_kway_loss(logps, ref, torch.tensor([[0, 1]]), torch.ones(1, 2), 0.5, "plackett_luce")
    dpo, _ = dpo_kway_loss(logps, ref, torch.tensor([[0, 1]]), torch.ones(1, 2), 0.5, "sigmoid")
    assert pl.item() == pytest.approx(dpo.item(), rel=1e-6)
    # a tie: tied completions leave each other's denominators; padding is ignored
    h = torch.tensor([[0.5, 0.1, -0.3, 9.0]])
    e = h.exp()[0]
    got = plackett_luce_loss(h, torch.tensor([[0, 0, 1, 0]]), torch.tensor([[1, 1, 1, 0]]))
    expected = -(torch.log(e[0] / (e[0] + e[2])) + torch.log(e[1] / (e[1] + e[2]))) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# -- the trainer on the tiny model ------------------------------------------------------------------

ANSWERS = ["Yes, gladly.", "Sure.", "Maybe later.", "No.", "Never, go away."]  # best first


def rankings(n: int, k: int, seed: int, start: int = 0) -> list[Ranking]:
    """Prompts whose K completions (a shuffled subset of ANSWERS) are ranked in ANSWERS' order."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        chosen = rng.sample(range(len(ANSWERS)), k)
        out.append(
            Ranking.from_ranks(f"p{i}", f"Question number {i}?", [ANSWERS[c] for c in chosen], chosen, labeler_id="a")
        )
    return out


def tiny_cfg(**kw) -> DPOConfig:
    base = dict(model=ModelConfig(name="tiny"), lr=2e-2, beta=0.5, prompts_per_step=4, micro_batch_completions=8)
    return DPOConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dpo_learns_held_out_rankings_with_k_forwards_per_prompt(tmp_path, monkeypatch) -> None:
    rows: list[int] = []
    real = dpo_module.sequence_logprobs

    def counting(model, batch, pad, device):
        rows.append(len(batch))
        return real(model, batch, pad, device)

    monkeypatch.setattr(dpo_module, "sequence_logprobs", counting)  # the policy's forwards
    monkeypatch.setattr(logprobs_module, "sequence_logprobs", counting)  # the reference's
    train, val = rankings(16, 4, seed=0), rankings(8, 4, seed=1, start=100)
    res = train_dpo(tiny_cfg(epochs=3), train, tmp_path / "run", val=val, progress=False)
    # reference: 16*4 + 8*4 completions once; evaluations at 0 and 3 epoch ends: 4 * 8*4; steps: 3 * 16*4
    assert sum(rows) == 96 + 4 * 32 + 3 * 64
    assert max(rows) <= 8  # micro-batches of whole prompts, at most micro_batch_completions
    metrics = read_metrics(tmp_path / "run")
    first = next(r for r in metrics if r["step"] == 0)
    assert first["val/accuracy"] == 0.0 and first["val/kl_ref"] == pytest.approx(0.0, abs=1e-5)
    assert res.val["val/accuracy"] > 0.9 and res.val["val/margin"] > 0 and res.val["val/kl_ref"] != 0
    assert res.train["train/loss"] < metrics[1]["train/loss"]
    assert (res.policy_dir / "config.json").exists() and (tmp_path / "run" / "reference_logprobs.pt").exists()
    with pytest.raises(AlignloopError, match="is not empty: it already holds checkpoints, config.yaml"):
        train_dpo(tiny_cfg(epochs=3), train, tmp_path / "run", val=val, progress=False)


@pytest.mark.parametrize("loss_type", ["ipo", "plackett_luce"])
def test_other_losses_train_with_lora_and_save_a_merged_plain_folder(tmp_path, loss_type) -> None:
    cfg = tiny_cfg(epochs=2, loss=loss_type, lora_r=4, lr=5e-2, beta=0.5 if loss_type == "plackett_luce" else 2.0)
    res = train_dpo(cfg, rankings(12, 3, seed=2), tmp_path / "run", val=rankings(6, 3, 3, 50), progress=False)
    assert res.val["val/accuracy"] > 0.6
    saved = load_file(str(res.policy_dir / "model.safetensors"))
    assert not any("lora" in k for k in saved)


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(tmp_path) -> None:
    cfg = tiny_cfg(epochs=2, checkpoint_every=2, eval_every=3)
    train, val = rankings(12, 4, seed=4), rankings(4, 4, seed=5, start=200)  # 3 steps per epoch, 6 in all
    whole = train_dpo(cfg, train, tmp_path / "whole", val=val, progress=False)

    def crash(step: int, _m: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpo(cfg, train, tmp_path / "cut", val=val, progress=False, on_step=crash)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step-000004"
    with pytest.raises(AlignloopError, match="rankings differ"):
        train_dpo(cfg, train[:-1], tmp_path / "cut", val=val, progress=False, resume=True)
    with pytest.raises(AlignloopError, match="config differs"):
        train_dpo(tiny_cfg(epochs=3, checkpoint_every=2, eval_every=3), train, tmp_path / "cut", val=val, resume=True)
    resumed = train_dpo(cfg, train, tmp_path / "cut", val=val, progress=False, resume=True)
    assert resumed.steps == whole.steps == 6
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "whole")
    a, b = (load_file(str(r.policy_dir / "model.safetensors")) for r in (whole, resumed))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    again = train_dpo(cfg, train, tmp_path / "cut", val=val, progress=False, resume=True)  # finished: returned as is
    assert again.steps == 6 and again.val == resumed.val


def test_adam_settings_come_from_the_config(tmp_path) -> None:
    from alignloop.train.checkpoint import STATE_FILE

    cfg = tiny_cfg(epochs=2, adam_betas=(0.8, 0.99), adam_eps=1e-6)
    train_dpo(cfg, rankings(8, 3, seed=7), tmp_path / "run", val=[], progress=False)  # checkpoint at epoch 1's end
    state = torch.load(list_checkpoints(tmp_path / "run")[-1] / STATE_FILE, weights_only=False)
    groups = state["extra"]["optimizer_state"]["param_groups"]
    assert {(tuple(g["betas"]), g["eps"]) for g in groups} == {((0.8, 0.99), 1e-6)}


def test_cli_dpo_trains_resumes_and_reports_bad_input(tmp_path) -> None:
    runner = CliRunner()
    write_jsonl(tmp_path / "rankings.jsonl", rankings(10, 3, seed=6))
    (tmp_path / "dpo.yaml").write_text("lr: 0.02\nprompts_per_step: 4\nval_fraction: 0.2\n")
    args = ["dpo", "--policy", "tiny", "--data", str(tmp_path / "rankings.jsonl"), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--config", str(tmp_path / "dpo.yaml"), "--beta", "0.5"])
    assert result.exit_code == 0, result.output
    assert "held-out implicit-reward accuracy" in result.output and "KL to reference" in result.output
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "beta: 0.5" in saved and "lr: 0.02" in saved and "name: tiny" in saved
    result = runner.invoke(app, [*args, "--resume"])  # the run's own config.yaml; finished: nothing to do
    assert result.exit_code == 0, result.output
    # the run folder's rules (train/run_folder.py), as for every trainer
    with pytest.raises(AlignloopError, match=r"config differs from the run's config.yaml in beta \("):
        runner.invoke(app, [*args, "--resume", "--beta", "0.7"], catch_exceptions=False)
    with pytest.raises(AlignloopError, match="is not empty: .*--resume.*--overwrite"):
        runner.invoke(app, args, catch_exceptions=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(AlignloopError, match="also holds notes.txt"):
        runner.invoke(app, [*args, "--overwrite"], catch_exceptions=False)
    (tmp_path / "run" / "notes.txt").unlink()
    result = runner.invoke(app, [*args, "--overwrite", "--beta", "0.7"])  # a new run in place of the old one
    assert result.exit_code == 0, result.output
    assert "beta: 0.7" in (tmp_path / "run" / "config.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml", "finished.json", "metrics.jsonl", "policy", "reference_logprobs.pt", "tb",
    ]  # fmt: skip
    assert [r["step"] for r in read_metrics(tmp_path / "run")].count(0) == 1  # one run's metrics, not two
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "p", "prompt": "x", "completions": ["a"], "order": [0]}\n')
    with pytest.raises(AlignloopError, match=r"bad.jsonl:1: field 'completions'"):
        bad = ["dpo", "--policy", "tiny", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "b")]
        runner.invoke(app, bad, catch_exceptions=False)
    with pytest.raises(AlignloopError, match="dpo config: loss"):
        runner.invoke(app, [*args[:-1], str(tmp_path / "c"), "--loss", "hinge"], catch_exceptions=False)
