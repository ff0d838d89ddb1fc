"""Agreement, ratings and win rates against values worked out by hand on tiny cases."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError
from alignloop.stats import (
    Battle,
    battles_from_rankings,
    bradley_terry,
    cohens_kappa,
    elo_ratings,
    elo_update,
    fleiss_kappa,
    fleiss_kappa_table,
    head_to_head,
    krippendorff_alpha,
    labeler_agreement,
    leaderboard,
    paired_values,
    pairwise_agreement,
    wilson_interval,
    win_rate,
)

# ------------------------------------------------------------------------------------------ kappa


def test_cohens_kappa_two_by_two_by_hand():
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15 (n = 50)
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    # p_o = (20 + 15) / 50 = 0.7; rater a says yes 25/50, b 30/50
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    k = cohens_kappa(a, b)
    assert k.observed == pytest.approx(0.7)
    assert k.expected == pytest.approx(0.5)
    assert k.kappa == pytest.approx(0.4)
    assert k.n_items == 50


def test_cohens_kappa_weighted_and_from_triples():
    triples = [(i, "x", v) for i, v in enumerate([1, 2, 3, 3])] + [(i, "y", v) for i, v in enumerate([1, 3, 3, 2])]
    triples.append((9, "y", 1))  # only y labeled item 9: not paired
    a, b = paired_values(triples, "x", "y")
    assert (a, b) == ([1, 2, 3, 3], [1, 3, 3, 2])
    # linear weights |i - j|: observed table pairs (1,1) (2,3) (3,3) (3,2): weighted disagreement (0+1+0+1)/4 = 0.5
    # marginals x: 1/4, 1/4, 2/4; y: 1/4, 1/4, 2/4; expected sum_ij x_i y_j |i-j|
    x = y = [0.25, 0.25, 0.5]
    de = sum(x[i] * y[j] * abs(i - j) for i in range(3) for j in range(3))
    assert cohens_kappa(a, b, weights="linear").kappa == pytest.approx(1 - 0.5 / de)
    with pytest.raises(AlignloopError, match="not among categories"):
        cohens_kappa(a, b, categories=[1, 2])


def test_fleiss_kappa_fixed_raters_by_hand():
    # 4 items, 3 raters each, categories 0/1/2
    table = [[3, 0, 0], [1, 2, 0], [0, 1, 2], [1, 1, 1]]
    triples = [(item, f"r{r}", cat) for item, row in enumerate(table) for cat, c in enumerate(row) for r in range(c)]
    triples = [(i, f"{lab}-{n}", c) for n, (i, lab, c) in enumerate(triples)]  # distinct rater ids per item
    # Step 1: P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))
    p_i = [Fraction(sum(c * (c - 1) for c in row), 3 * 2) for row in table]
    assert p_i == [1, Fraction(1, 3), Fraction(1, 3), 0]
    # Step 2: P_bar = mean P_i = 5/12
    p_bar = sum(p_i) / 4
    assert p_bar == Fraction(5, 12)
    # Step 3: p_j = column totals / all ratings = 5/12, 4/12, 3/12; P_e = sum p_j^2 = 50/144
    p_e = sum(Fraction(sum(row[j] for row in table), 12) ** 2 for j in range(3))
    assert p_e == Fraction(50, 144)
    # Step 4: kappa = (P_bar - P_e) / (1 - P_e) = 5/47
    expected = (p_bar - p_e) / (1 - p_e)
    assert expected == Fraction(5, 47)
    k = fleiss_kappa(triples)
    assert k.kappa == pytest.approx(float(expected))
    assert k.observed == pytest.approx(float(p_bar))
    assert k.expected == pytest.approx(float(p_e))
    assert k.categories == [0, 1, 2]


def test_fleiss_kappa_varying_raters_by_hand():
    # item 5 has only 2 raters; item 6 one rating (no pair: dropped)
    table = [[3, 0, 0], [1, 2, 0], [0, 1, 2], [1, 1, 1], [0, 0, 2], [0, 1, 0]]
    kept = table[:5]
    p_i = [Fraction(sum(c * (c - 1) for c in row), sum(row) * (sum(row) - 1)) for row in kept]
    assert p_i[4] == 1
    p_bar = sum(p_i) / 5  # 8/15
    total = sum(sum(row) for row in kept)  # 14 ratings
    p_e = sum(Fraction(sum(row[j] for row in kept), total) ** 2 for j in range(3))  # 66/196
    assert (p_bar, p_e) == (Fraction(8, 15), Fraction(66, 196))
    k = fleiss_kappa_table(table)
    assert k.n_items == 5
    assert k.kappa == pytest.approx(float((p_bar - p_e) / (1 - p_e)))


def test_fleiss_kappa_needs_overlap_and_one_label_per_rater():
    with pytest.raises(AlignloopError, match="no item has two or more ratings"):
        fleiss_kappa([(1, "a", "x"), (2, "a", "y")])
    with pytest.raises(AlignloopError, match="labeled item 1 twice"):
        fleiss_kappa([(1, "a", "x"), (1, "a", "y")])


# --------------------------------------------------------------------------------- Krippendorff


def test_krippendorff_alpha_nominal_with_missing_by_hand():
    # reliability matrix (coders x units), None = missing:
    #        u1    u2  u3  u4    u5
    #   A:   1     1   3   .     1
    #   B:   1     2   3   2     .
    #   C:   .     2   3   .     3
    matrix = {"A": [1, 1, 3, None, 1], "B": [1, 2, 3, 2, None], "C": [None, 2, 3, None, 3]}
    triples = [(u, coder, v) for coder, row in matrix.items() for u, v in enumerate(row)]
    # Coincidences, each ordered pair of a unit weighted 1/(m_u - 1); u4 has one value: not pairable.
    # u1: (1,1) x2 -> o11 += 2.  u2: values 1,2,2: (1,2) x2, (2,1) x2, (2,2) x2, / 2 -> o12 += 1, o21 += 1, o22 += 1
    # u3: (3,3) x6 / 2 -> o33 += 3.  u5: (1,3), (3,1) -> o13 += 1, o31 += 1
    o = {(1, 1): 2, (1, 2): 1, (2, 1): 1, (2, 2): 1, (3, 3): 3, (1, 3): 1, (3, 1): 1}
    n_c = {c: sum(v for (a, _), v in o.items() if a == c) for c in (1, 2, 3)}
    assert n_c == {1: 4, 2: 2, 3: 4}
    n = sum(n_c.values())  # 10
    d_o = Fraction(sum(v for (a, b), v in o.items() if a != b), n)  # 4/10
    d_e = Fraction(sum(n_c[a] * n_c[b] for a in n_c for b in n_c if a != b), n * (n - 1))  # 64/90
    alpha = 1 - d_o / d_e
    assert alpha == Fraction(7, 16)
    result = krippendorff_alpha(triples, "nominal")
    assert result.alpha == pytest.approx(float(alpha))
    assert result.n_pairable == 10
    assert result.n_units == 4


def test_krippendorff_alpha_reference_example():
    # Krippendorff's worked example (4 coders, 12 units, missing values) with its published
    # values: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797.
    nan = None
    rows = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    triples = [(u, c, v) for c, row in enumerate(rows) for u, v in enumerate(row)]
    assert krippendorff_alpha(triples, "nominal").alpha == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(triples, "ordinal").alpha == pytest.approx(0.815, abs=1e-3)
    assert krippendorff_alpha(triples, "interval").alpha == pytest.approx(0.849, abs=1e-3)
    assert krippendorff_alpha(triples, "ratio").alpha == pytest.approx(0.797, abs=1e-3)


# ------------------------------------------------------------------------------ pairwise agreement


def _ranking(prompt_id: str, labeler: str, completions: list[str], order: list[int]) -> Ranking:
    return Ranking(prompt_id=prompt_id, prompt="p", completions=completions, order=order, labeler_id=labeler)


def test_pairwise_agreement_three_labelers_by_hand():
    c3 = ["x", "y", "z"]
    rankings = [
        _ranking("p1", "L1", c3, [0, 1, 2]),  # x > y > z
        _ranking("p1", "L2", c3, [0, 2, 1]),  # x > z > y
        # L3 saw the completions in another order; matched by text: y > x > z
        _ranking("p1", "L3", ["z", "y", "x"], [1, 2, 0]),
        _ranking("p2", "L1", ["a", "b", "c", "d"], [0, 1, 2, 3]),
        _ranking("p2", "L2", ["a", "b", "c", "d"], [1, 0, 2, 3]),
    ]
    # p1, 3 completion pairs x 3 labeler pairs = 9 judgments:
    #   (x,y): L1 x, L2 x, L3 y -> 1 agreeing pair; (x,z): all x -> 3; (y,z): L1 y, L2 z, L3 y -> 1.  5 of 9
    # p2, 6 completion pairs x 1 labeler pair: only (a,b) differs -> 5 of 6
    r = pairwise_agreement(rankings)
    assert (r.n_judgments, r.n_items, r.n_labelers) == (15, 2, 3)
    assert r.rate == pytest.approx(10 / 15)
    # cluster standard error: residuals a_i - rate * m_i = 5 - 6, 5 - 4; sqrt(2/1 * 2) / 15
    assert r.stderr == pytest.approx(2 / 15)
    assert str(r).startswith("66.7 +- 13.3 %")


def test_pairwise_agreement_triples_and_ties():
    # rank sequences per completion index; L2 ties completions 1 and 2
    labels = [("q", "L1", [0, 1, 2]), ("q", "L2", [0, 1, 1])]
    # ties ignored: units (0,1), (0,2) shared, both agree -> 2/2; (1,2) only L1 ranked it
    assert pairwise_agreement(labels).rate == 1.0
    assert pairwise_agreement(labels).n_judgments == 2
    # ties kept: (1,2) is L1 "1" vs L2 tie -> disagree: 2/3
    assert pairwise_agreement(labels, ignore_ties=False).rate == pytest.approx(2 / 3)
    with pytest.raises(AlignloopError, match="no item was labeled by two or more labelers"):
        pairwise_agreement([("q", "L1", [0, 1]), ("r", "L2", [1, 0])])


# ------------------------------------------------------------------------------- per-labeler table


def _noisy_order(rng: np.random.Generator, k: int, p_swap: float) -> list[int]:
    order = list(range(k))  # completion 0 is truly best
    for i in range(k - 1):
        if rng.random() < p_swap:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def test_random_labeler_is_flagged_as_outlier():
    rng = np.random.default_rng(0)
    comps = ["c0", "c1", "c2", "c3"]
    labelers = [f"L{i}" for i in range(6)]
    rankings, gold = [], []
    for item in range(30):
        gold.append(_ranking(f"p{item}", "admin", comps, [0, 1, 2, 3]))
        for lab in labelers:
            order = [int(x) for x in rng.permutation(4)] if lab == "L5" else _noisy_order(rng, 4, 0.1)
            rankings.append(_ranking(f"p{item}", lab, comps, order))
    rows = labeler_agreement(rankings, gold=gold[:10], threshold=0.6)
    by = {r.labeler_id: r for r in rows}
    assert [r.labeler_id for r in rows] == labelers
    assert [r.labeler_id for r in rows if r.outlier] == ["L5"]
    assert "consensus agreement" in by["L5"].reason
    assert by["L5"].consensus_agreement < 0.7 < min(by[lab].consensus_agreement for lab in labelers[:5])
    assert by["L0"].n_units == 30 * 6 and by["L0"].n_gold == 10 * 6
    assert by["L0"].gold_agreement > 0.85 and by["L5"].gold_agreement < 0.7


def test_labeler_consensus_by_hand_categorical():
    # item 1: A yes, B yes, C no; item 2: A no, B yes, C yes; gold: item 1 yes
    labels = [(1, "A", "yes"), (1, "B", "yes"), (1, "C", "no"), (2, "A", "no"), (2, "B", "yes"), (2, "C", "yes")]
    rows = {r.labeler_id: r for r in labeler_agreement(labels, gold=[(1, "admin", "yes")])}
    # A: item 1 others {yes, no} tied -> 1/2; item 2 others {yes, yes} -> 0. mean 1/4
    # B: item 1 others {yes, no} -> 1/2; item 2 others {no, yes} -> 1/2. mean 1/2
    assert rows["A"].consensus_agreement == pytest.approx(0.25)
    assert rows["B"].consensus_agreement == pytest.approx(0.5)
    assert (rows["A"].gold_agreement, rows["C"].gold_agreement, rows["C"].n_gold) == (1.0, 0.0, 1)
    with pytest.raises(AlignloopError, match="item 1 has 2 gold labels"):
        labeler_agreement(labels, gold=[(1, "admin", "yes"), (1, "other", "no")])


# ------------------------------------------------------------------------------------------ ratings


def test_elo_update_matches_formula():
    e_a = 1 / (1 + 10 ** ((1100 - 1000) / 400))
    assert elo_update(1000, 1100, 1.0, k=32) == pytest.approx((1000 + 32 * (1 - e_a), 1100 - 32 * (1 - e_a)))
    r = elo_ratings([("m1", "m2", "a")], k=32, initial=1000)
    assert r == pytest.approx({"m1": 1016.0, "m2": 984.0})  # equal start: E = 0.5, delta = 16
    r = elo_ratings([("m1", "m2", "tie")], k=32)
    assert r == pytest.approx({"m1": 1000.0, "m2": 1000.0})


def test_bradley_terry_two_players_by_hand():
    # a scores 3 of 4 (2 wins, 2 ties): P(a beats b) = 3/4, gap = 400 log10(3) points
    bt = bradley_terry([("a", "b", "a"), ("a", "b", "a"), ("a", "b", "tie"), ("b", "a", "tie")], anchor="b")
    assert bt["b"] == pytest.approx(1000.0)
    assert bt["a"] - bt["b"] == pytest.approx(400 * math.log10(3), abs=0.5)
    # a model that won every battle has no finite MLE: the weak prior keeps it finite and on top
    sweep = bradley_terry([("a", "b", "a")] * 5)
    assert math.isfinite(sweep["a"]) and sweep["a"] > sweep["b"] + 400
    assert (sweep["a"] + sweep["b"]) / 2 == pytest.approx(1000.0)


def test_bradley_terry_recovers_simulated_strengths():
    rng = np.random.default_rng(1)
    true = {"p0": 1000.0, "p1": 1100.0, "p2": 1200.0, "p3": 1300.0, "p4": 1400.0}
    names = list(true)
    battles = []
    for i in range(5):
        for j in range(i + 1, 5):
            p_i = 1 / (1 + 10 ** ((true[names[j]] - true[names[i]]) / 400))
            for _ in range(300):
                battles.append(Battle(names[i], names[j], "a" if rng.random() < p_i else "b"))
    rows = leaderboard(battles, "bradley_terry", n_bootstrap=100, seed=0, anchor="p0")
    assert [r.model for r in rows] == ["p4", "p3", "p2", "p1", "p0"]
    for r in rows:
        assert r.rating == pytest.approx(true[r.model], abs=40)
        assert r.ci_low <= r.rating <= r.ci_high
        if r.model != "p0":  # the anchor has a zero-width interval by construction
            assert r.ci_low < true[r.model] < r.ci_high
        assert r.n_battles == 4 * 300 and r.wins + r.losses + r.ties == r.n_battles
    assert rows[0].win_rate > 0.5 > rows[-1].win_rate
    elo = leaderboard(battles, "elo", n_bootstrap=50, seed=0, k=4.0)
    assert [r.model for r in elo] == ["p4", "p3", "p2", "p1", "p0"]
    assert np.mean([r.rating for r in elo]) == pytest.approx(1000.0)  # Elo is zero-sum
    assert all(r.ci_low < r.ci_high for r in elo)


def test_leaderboard_bootstrap_is_seeded_and_validates_input():
    battles = [("a", "b", "a"), ("b", "c", "b"), ("a", "c", "tie"), ("c", "a", "b")] * 5
    one = leaderboard(battles, "bt", n_bootstrap=30, seed=3)
    two = leaderboard(battles, "bt", n_bootstrap=30, seed=3)
    assert [(r.ci_low, r.ci_high) for r in one] == [(r.ci_low, r.ci_high) for r in two]
    assert math.isnan(leaderboard(battles, "elo", n_bootstrap=0)[0].ci_low)
    with pytest.raises(AlignloopError, match="winner is 'x'"):
        leaderboard([("a", "b", "x")])
    with pytest.raises(AlignloopError, match="against itself"):
        leaderboard([("a", "a", "a")])
    with pytest.raises(AlignloopError, match="unknown rating method"):
        leaderboard(battles, "glicko")
    with pytest.raises(AlignloopError, match="anchor model 'z'"):
        leaderboard(battles, anchor="z", n_bootstrap=0)


def test_battles_from_rankings_pairs_policies():
    r = Ranking.from_ranks("p", "q", ["s1", "s2", "x1"], [0, 1, 1], sources=["sft", "sft", "ppo"])
    battles = battles_from_rankings([r, Ranking("p2", "q", ["a", "b"], [1, 0])])  # second has no sources
    # (s1, x1): sft ranked 0 beats ppo; (s2, x1): tie; (s1, s2) same policy: skipped
    assert battles == [Battle("sft", "ppo", "a", "p"), Battle("sft", "ppo", "tie", "p")]


# ------------------------------------------------------------------------------------------ win rate


def test_wilson_interval_matches_formula():
    z = 1.959963984540054
    for s, n in [(7, 10), (7.5, 12), (0, 5), (40, 40)]:
        p = s / n
        lo = (p + z**2 / (2 * n) - z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
        hi = (p + z**2 / (2 * n) + z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
        assert wilson_interval(s, n) == pytest.approx((max(lo, 0.0), min(hi, 1.0)))
    w = win_rate(["win"] * 6 + ["tie"] * 2 + ["loss"] * 2, n_bootstrap=0)
    assert (w.rate, w.wins, w.ties, w.losses) == (0.7, 6, 2, 2)
    assert (w.wilson_low, w.wilson_high) == pytest.approx(wilson_interval(7, 10))


def test_bootstrap_ci_contains_true_rate_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 5000):
        outcomes = (rng.random(n) < 0.6).astype(float)
        w = win_rate(outcomes, n_bootstrap=1000, seed=0)
        assert w.ci_low < 0.6 < w.ci_high
        widths.append(w.ci_high - w.ci_low)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): sqrt(25) = 5 times narrower


def test_clustered_bootstrap_resamples_prompts():
    rng = np.random.default_rng(2)
    outcomes, prompts = [], []
    for prompt in range(40):  # each prompt is easy (p=0.9) or hard (p=0.1): true rate 0.5
        p = 0.9 if prompt % 2 else 0.1
        for _ in range(25):
            outcomes.append("win" if rng.random() < p else "loss")
            prompts.append(f"prompt-{prompt}")
    naive = win_rate(outcomes, n_bootstrap=1000, seed=0)
    clustered = win_rate(outcomes, prompts, n_bootstrap=1000, seed=0)
    assert clustered.n_prompts == 40 and naive.n_prompts == 1000
    assert clustered.rate == naive.rate
    assert (clustered.ci_high - clustered.ci_low) > 3 * (naive.ci_high - naive.ci_low)
    assert clustered.ci_low < 0.5 < clustered.ci_high


def test_head_to_head_from_battles_either_side():
    battles = [
        ("ppo", "sft", "a", "q1"),
        ("sft", "ppo", "a", "q1"),
        ("sft", "ppo", "b", "q2"),
        ("ppo", "sft", "tie", "q3"),
        ("ppo", "other", "a", "q3"),  # not against the baseline: ignored
    ]
    w = head_to_head(battles, "ppo", "sft", n_bootstrap=200)
    assert (w.n, w.wins, w.ties, w.losses, w.n_prompts) == (4, 2, 1, 1, 3)
    assert w.rate == pytest.approx(2.5 / 4)
    with pytest.raises(AlignloopError, match="no battle between 'ppo' and 'x'"):
        head_to_head(battles, "ppo", "x")
    with pytest.raises(AlignloopError, match="use 'win', 'tie' or 'loss'"):
        win_rate(["won"])


def test_krippendorff_alpha_rejects_text_at_interval_level():
    with pytest.raises(AlignloopError, match="interval level needs numeric values"):
        krippendorff_alpha([(1, "a", "good"), (1, "b", "bad")], "interval")
