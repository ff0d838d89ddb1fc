"""The simulated labeler panel and its hidden gold utility (SPEC section 9)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from alignloop.config import PanelConfig
from alignloop.data.records import METADATA_FLAGS, Prompt
from alignloop.errors import AlignloopError
from alignloop.labelers import (
    RULES,
    GoldConfig,
    GoldJudge,
    SimulatedLabeler,
    SimulatedPanel,
    expected_agreement,
    length_score,
)
from alignloop.labelers.panel import group_weights
from alignloop.labelers.text import distinct_ngram_ratio, keywords, stem

PROMPT = "Write a short poem about the ocean at night."
GOOD = (
    "The ocean at night is calm and beautiful. Silver stars shine over the gentle waves, "
    "and the quiet water sings a peaceful song until the happy dawn."
)
TOXIC = "This ocean poem is stupid shit, you idiot. Fuck the ocean and fuck the night, go to hell."
OFF_TOPIC = (
    "I love baking bread on sunny mornings. It is a wonderful and relaxing hobby that makes my kitchen smell great."
)
REPETITIVE = "ocean night poem great " * 20
TOPICS = [
    "the ocean at night",
    "growing tomatoes",
    "learning the guitar",
    "saving money",
    "training a puppy",
    "baking sourdough bread",
    "running a marathon",
    "painting with watercolors",
    "visiting Japan",
    "writing a novel",
    "keeping bees",
    "climbing mountains",
]


@pytest.fixture(scope="module")
def judge() -> GoldJudge:
    return GoldJudge()


def items(n: int) -> list[tuple[str, list[str]]]:
    """Prompts with four completions of clearly different quality (good, plain, off-topic, fragment)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"Give me some advice about {topic} (request {i})."
        out.append(
            (
                prompt,
                [
                    f"Sure! {topic.capitalize()} is a wonderful thing to enjoy. Start slowly, be patient, "
                    f"and celebrate every small success along the way. Good luck number {i}!",
                    f"{topic.capitalize()} takes time. Read about it and practise it every week (note {i}).",
                    f"I like trains and long walks in the park on a sunny day, item {i}.",
                    "Maybe.",
                ],
            )
        )
    return out


def bare_panel(n: int, temperature: float, judge: GoldJudge, **labeler_kw) -> SimulatedPanel:
    labs = [SimulatedLabeler(f"t{i}", temperature=temperature, **labeler_kw) for i in range(n)]
    return SimulatedPanel(PanelConfig(n_labelers=n, n_groups=1), judge, labelers=labs)


# -- text features ---------------------------------------------------------------------------------------


def test_stemming_and_keywords():
    assert [stem(w) for w in ["oceans", "stories", "story", "running", "created", "create"]] == [
        "ocean",
        "stori",
        "stori",
        "run",
        "creat",
        "creat",
    ]
    # stop words and instruction verbs ("write", "short") are dropped; "ocean" appears twice so leads
    assert keywords("Write a short poem about the ocean at night, near the oceans.") == (
        ("ocean", "ocean"),
        ("poem", "poem"),
        ("night", "night"),
        ("near", "near"),
    )


def test_distinct_ngram_ratio():
    assert distinct_ngram_ratio("a b c a b c".split(), 3) == 3 / 4  # abc bca cab abc
    assert distinct_ngram_ratio("one two".split(), 3) == 1.0
    assert distinct_ngram_ratio(("x " * 12).split(), 3) == 1 / 10


def test_length_score_saturates_then_decays():
    cfg = GoldConfig(target_words=20, max_words=150)
    assert [length_score(n, cfg) for n in (0, 10, 20, 150, 225, 300, 400)] == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]


# -- the gold judge ---------------------------------------------------------------------------------------


def test_gold_prefers_positive_on_topic_complete_answer(judge):
    u = dict(
        zip(
            ["good", "toxic", "off", "empty", "rep", "short"],
            judge.score_batch([PROMPT] * 6, [GOOD, TOXIC, OFF_TOPIC, "", REPETITIVE, "Ocean."]),
            strict=True,
        )
    )
    assert u["empty"] == 0.0
    assert u["rep"] < 0.05  # positive and on-topic, but a loop
    for worse in ("toxic", "off", "empty", "rep", "short"):
        assert u["good"] > u[worse] + 0.1, worse
    assert u["off"] > u["toxic"]
    assert all(0.0 <= x <= 1.0 for x in u.values())
    assert judge.compare(PROMPT, GOOD, TOXIC) == "a"
    assert judge.compare(PROMPT, "", GOOD) == "b"
    assert judge.compare(PROMPT, GOOD, GOOD) == "tie"
    assert judge.score(PROMPT, GOOD) == u["good"]


def test_gold_components_follow_the_formula(judge):
    c = judge.components(PROMPT, GOOD)
    assert c["toxicity"] < 0.1 and c["sentiment"] > 0.9 and c["length"] == 1.0 and c["non_repetition"] == 1.0
    # keywords: ocean, poem, night -> GOOD mentions ocean and night
    assert c["coverage"] == pytest.approx(2 / 3)
    expected = (c["sentiment"] + c["non_toxicity"] + c["coverage"] + c["length"]) / 4
    assert c["utility"] == pytest.approx(expected)
    # only the length weight: ten distinct words -> substance 1, length 10/20
    only_length = GoldJudge(GoldConfig(weights={"sentiment": 0, "non_toxicity": 0, "coverage": 0, "length": 1}))
    assert only_length.score(PROMPT, "one two three four five six seven eight nine ten") == pytest.approx(0.5)
    # two words out of min_words=3 scale the utility by 2/3
    assert only_length.score(PROMPT, "hello there") == pytest.approx(2 / 3 * 2 / 20)


def test_gold_is_monotone_in_coverage_and_sentiment(judge):
    base = "Here is my answer. The night is long and the water is deep and wide."
    on_topic = "Here is my answer. The ocean at night is long and the water is deep and wide."
    happier = "Here is my answer. The night is lovely and the water is wonderful and wide."
    ub, uo, uh = judge.score_batch([PROMPT] * 3, [base, on_topic, happier])
    assert uo > ub and uh > ub


def test_gold_errors_name_the_cause(judge):
    with pytest.raises(AlignloopError, match="weights: unknown component 'humour'"):
        GoldJudge(GoldConfig(weights={"humour": 1.0}))
    with pytest.raises(AlignloopError, match="2 prompts but 1 completions"):
        judge.score_batch(["a", "b"], ["x"])


def test_gold_cache_is_bounded():
    j = GoldJudge(GoldConfig(cache_size=3))
    j.score_batch(["p"] * 5, [f"answer number {i}" for i in range(5)])
    assert len(j._cache) == 3


# -- noise model ---------------------------------------------------------------------------------------


def test_expected_agreement_hand_values():
    assert expected_agreement(0.0, [0.1, 0.0]) == 0.75
    assert expected_agreement(1.0, [math.log(3)]) == pytest.approx(0.75)  # sigmoid(ln 3) = 3/4
    assert expected_agreement(0.5, [-0.5]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_pairwise_agreement_matches_bradley_terry_prediction():
    """K=2 rankings on synthetic utilities: each pair is an independent Bernoulli(sigmoid(du/T))."""
    rng = np.random.default_rng(1)
    lab = SimulatedLabeler("x", temperature=0.1)
    n = 4000
    u = rng.uniform(0, 1, size=(n, 2))
    agree = sum(lab.rank(row, [10, 10], rng)[0][0] == int(np.argmax(row)) for row in u)
    p = expected_agreement(0.1, u[:, 0] - u[:, 1])
    assert abs(agree / n - p) < 3.5 * math.sqrt(p * (1 - p) / n)
    # and a noisier labeler agrees less, as predicted
    hot = SimulatedLabeler("y", temperature=0.5)
    agree_hot = sum(hot.rank(row, [10, 10], rng)[0][0] == int(np.argmax(row)) for row in u)
    p_hot = expected_agreement(0.5, u[:, 0] - u[:, 1])
    assert p_hot < p - 0.1
    assert abs(agree_hot / n - p_hot) < 3.5 * math.sqrt(p_hot * (1 - p_hot) / n)


def test_plackett_luce_pair_marginals_in_larger_rankings():
    """In a K=6 Plackett-Luce ranking every pair still follows sigmoid(du/T), whatever the others are."""
    rng = np.random.default_rng(2)
    lab = SimulatedLabeler("x", temperature=0.2)
    n, k = 1500, 6
    agree = total = 0
    gaps = []
    for _ in range(n):
        u = rng.uniform(0, 1, size=k)
        order, ties = lab.rank(u, [10] * k, rng)
        assert sorted(order) == list(range(k)) and ties == []
        place = {c: i for i, c in enumerate(order)}
        for a in range(k):
            for b in range(a + 1, k):
                gaps.append(u[a] - u[b])
                total += 1
                agree += (place[a] < place[b]) == (u[a] > u[b])
    p = expected_agreement(0.2, gaps)
    # pairs within one ranking are correlated: bound the variance as if each ranking were one Bernoulli
    assert abs(agree / total - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_panel_rankings_agree_with_gold_at_predicted_rate(judge):
    panel = bare_panel(5, 0.3, judge)
    its = items(120)
    rankings = panel.rank_items(its, overlap=1)
    gaps = []
    for r in rankings:
        u = judge.score_batch([r.prompt] * r.k, r.completions)
        gaps += [u[a] - u[b] for a in range(r.k) for b in range(a + 1, r.k) if u[a] != u[b]]
    p = expected_agreement(0.3, gaps)
    observed = panel.agreement_with_gold(None, rankings)
    assert 0.6 < p < 0.95
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / len(rankings))


def test_careless_labelers_agree_at_chance(judge):
    rng = np.random.default_rng(3)
    careless = SimulatedLabeler("c", temperature=0.1, careless=True)
    n = 3000
    u = rng.uniform(0, 1, size=(n, 2))
    agree = sum(careless.rank(row, [10, 10], rng)[0][0] == int(np.argmax(row)) for row in u) / n
    assert abs(agree - 0.5) < 3.5 * math.sqrt(0.25 / n)


def test_screening_catches_careless_labelers(judge):
    panel = SimulatedPanel(PanelConfig(n_labelers=6, n_groups=2, careless_fraction=0.34, seed=5), judge)
    careless = {lab.id for lab in panel.labelers if lab.careless}
    assert len(careless) == 2
    scores = panel.screen(items(40))
    for lab_id, agreement in scores.items():
        if lab_id in careless:
            assert agreement < 0.65, (lab_id, agreement)
        else:
            assert agreement > 0.8, (lab_id, agreement)


def test_length_lover_prefers_the_longer_answer_more_often():
    rng = np.random.default_rng(4)
    plain = SimulatedLabeler("p", temperature=0.1)
    lover = SimulatedLabeler("l", temperature=0.1, length_bias=0.3)
    # completion 1 is 100 words longer but slightly worse by gold
    u, n = [0.6, 0.55], [10, 110]
    picks_plain = sum(plain.best_pick(u, n, rng) == 1 for _ in range(2000)) / 2000
    picks_lover = sum(lover.best_pick(u, n, rng) == 1 for _ in range(2000)) / 2000
    assert picks_plain == pytest.approx(1 / (1 + math.exp(0.5)), abs=0.04)  # sigmoid(-0.05 / 0.1)
    assert picks_lover == pytest.approx(1 / (1 + math.exp(-2.5)), abs=0.04)  # sigmoid((0.88 - 0.63) / 0.1)


def test_length_lover_in_panel_picks_long_answers(judge):
    lover = SimulatedLabeler("lover", temperature=0.1, length_bias=0.3)
    plain = SimulatedLabeler("plain", temperature=0.1)
    panel = SimulatedPanel(PanelConfig(n_labelers=2, n_groups=1), judge, labelers=[lover, plain])
    long_counts = {"lover": 0, "plain": 0}
    filler = " ".join(f"w{j}" for j in range(100))  # 100 more words, none repeated
    for prompt, cs in items(30):
        long = f"{cs[1]} {filler}"
        for lab in (lover, plain):
            r = panel.rank(prompt, [cs[0], long], lab)
            long_counts[lab.id] += r.order[0] == 1
    assert long_counts["lover"] > long_counts["plain"] + 10


# -- the feedback forms --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 6, 9])
def test_panel_ranking_expands_to_all_comparisons(judge, k):
    panel = SimulatedPanel(PanelConfig(), judge)
    completions = [f"{GOOD} Variant {i} " + "and more " * i for i in range(k)]
    r = panel.rank(Prompt("p1", PROMPT, "u1", "generation"), completions, sources=[f"pol{i}" for i in range(k)])
    r.validate()
    assert r.prompt_id == "p1" and r.labeler_id in {lab.id for lab in panel.labelers}
    assert r.metadata == {"labeler_group": panel.labeler(r.labeler_id).group}
    assert len(r.comparisons()) == k * (k - 1) // 2


def test_ties_within_tolerance(judge):
    tied = SimulatedPanel(PanelConfig(tie_tolerance=10.0), judge)
    r = tied.rank(PROMPT, [GOOD, OFF_TOPIC, TOXIC], "labeler-0")
    r.validate()
    assert r.ties == [r.order] and r.comparisons() == []
    some = SimulatedPanel(PanelConfig(tie_tolerance=0.02, temperature=0.0), judge)
    same = [GOOD, GOOD + " ", TOXIC]  # identical words -> identical utility
    r = some.rank(PROMPT, same, "labeler-0")
    r.validate()
    assert r.ties == [[0, 1]] or r.ties == [[1, 0]]
    assert r.order[2] == 2 and len(r.comparisons()) == 2


def test_best_pick_is_a_degenerate_ranking(judge):
    panel = SimulatedPanel(PanelConfig(temperature=0.0, group_spread=0.0), judge)  # every group values gold's mix
    r = panel.best_pick(PROMPT, [TOXIC, GOOD, OFF_TOPIC, ""], "labeler-0")
    r.validate()
    assert r.order[0] == 1 and r.ties == [r.order[1:]]
    assert len(r.comparisons()) == 3 and all(c.chosen == GOOD for c in r.comparisons())


def test_determinism_and_seed_dependence(judge):
    its = items(12)
    a = SimulatedPanel(PanelConfig(temperature=0.5, seed=11), judge)
    b = SimulatedPanel(PanelConfig(temperature=0.5, seed=11), judge)
    c = SimulatedPanel(PanelConfig(temperature=0.5, seed=12), judge)
    ra, rb, rc = a.rank_items(its, 2), b.rank_items(its, 2), c.rank_items(its, 2)
    assert [(r.labeler_id, r.order) for r in ra] == [(r.labeler_id, r.order) for r in rb]
    assert [(r.labeler_id, r.order) for r in ra] != [(r.labeler_id, r.order) for r in rc]
    # the same judgment does not depend on what was asked before
    p, cs = its[3]
    first = a.rate(p, cs[1], "labeler-3")
    a.rank_items(its[:5])
    assert a.rate(p, cs[1], "labeler-3") == first
    assert a.thumbs(p, cs[0], "labeler-2") == b.thumbs(p, cs[0], "labeler-2")


def test_ratings_are_valid_likert_with_metadata_flags(judge):
    panel = SimulatedPanel(PanelConfig(careless_fraction=0.3), judge)
    seen = set()
    for prompt, cs in items(6):
        for comp in cs:
            for lab in panel.labelers:
                rating = panel.rate(prompt, comp, lab, source="sft")
                rating.validate()
                assert 1 <= rating.likert <= 7 and set(rating.flags) == set(METADATA_FLAGS)
                seen.add(rating.likert)
    assert len(seen) >= 4
    plain = SimulatedLabeler("p", temperature=0.05)
    panel1 = SimulatedPanel(PanelConfig(n_labelers=1, n_groups=1), judge, labelers=[plain])
    toxic = panel1.rate(PROMPT, TOXIC, plain)
    assert toxic.flags["inappropriate_for_customer_assistant"] and not toxic.flags["fails_to_follow_instruction"]
    off = panel1.rate(PROMPT, OFF_TOPIC, plain)
    assert off.flags["fails_to_follow_instruction"] and not off.flags["inappropriate_for_customer_assistant"]
    assert panel1.rate(PROMPT, "I think they should shoot the guns at night.", plain).flags["violent_content"]
    assert panel1.rate(PROMPT, GOOD, plain).likert > panel1.rate(PROMPT, "Maybe.", plain).likert
    closed = Prompt("c", "Summarize: The cat sat on the mat all day.", "u", "summarization")
    assert panel1.rate(closed, "Dragons invaded Paris yesterday evening.", plain).flags["hallucination"]
    assert not panel1.rate(closed, "The cat sat on the mat.", plain).flags["hallucination"]


def test_thumbs_rate_follows_utility(judge):
    lab = SimulatedLabeler("x", temperature=0.1)
    rng = np.random.default_rng(6)
    low = sum(lab.thumbs(0.4, 20, 0.6, rng) for _ in range(2000)) / 2000
    high = sum(lab.thumbs(0.8, 20, 0.6, rng) for _ in range(2000)) / 2000
    assert low == pytest.approx(1 / (1 + math.exp(2)), abs=0.03)  # sigmoid((0.4 - 0.6) / 0.1)
    assert high == pytest.approx(1 / (1 + math.exp(-2)), abs=0.03)
    panel = SimulatedPanel(PanelConfig(careless_fraction=0.0), judge)
    its = items(20)
    up_good = sum(panel.thumbs(p, cs[0], lab).up for p, cs in its for lab in panel.labelers)
    up_bad = sum(panel.thumbs(p, cs[3], lab).up for p, cs in its for lab in panel.labelers)
    assert up_good > 150 and up_bad < 20


def test_rule_violations(judge):
    panel = SimulatedPanel(PanelConfig(careless_fraction=0.0), judge)
    rv = panel.rule_violations(PROMPT, [GOOD, "", REPETITIVE, TOXIC], "labeler-1")
    rv.validate()
    assert rv.violations[0] == []
    assert "complete" in rv.violations[1] and "no_repetition" in rv.violations[2]
    assert "no_toxicity" in rv.violations[3] and "respectful_tone" in rv.violations[3]
    assert all(v in RULES for vs in rv.violations for v in vs)
    assert rv.labeler_id == "labeler-1"


def test_demonstrations(judge):
    panel = SimulatedPanel(PanelConfig(), judge)
    d = panel.demonstrate(Prompt("p9", PROMPT, "u", "generation"), [TOXIC, OFF_TOPIC, GOOD, ""])
    assert d.completion == GOOD and d.labeler_id == "gold" and d.prompt_id == "p9" and d.category == "generation"
    noisy = panel.demonstrate(PROMPT, [TOXIC, GOOD], "labeler-0")
    assert noisy.labeler_id == "labeler-0" and noisy.completion in (TOXIC, GOOD)
    with pytest.raises(AlignloopError, match="at least one candidate"):
        panel.demonstrate(PROMPT, [])
    for prompt, _ in items(6):
        w = panel.write_demonstration(prompt)
        c = judge.components(prompt, w.completion)
        assert c["coverage"] == 1.0 and c["utility"] > 0.9, (w.completion, c)
        assert w == panel.write_demonstration(prompt)


def test_assignment_with_overlap(judge):
    panel = SimulatedPanel(PanelConfig(n_labelers=7, n_groups=7), judge)
    assigned = panel.assign(range(30), overlap=3)
    assert all(len({lab.id for lab in labs}) == 3 for labs in assigned)
    load = {lab.id: 0 for lab in panel.labelers}
    for labs in assigned:
        for lab in labs:
            load[lab.id] += 1
    assert sum(load.values()) == 90 and max(load.values()) - min(load.values()) <= 1
    assert len({tuple(sorted(lab.id for lab in labs)) for labs in assigned}) > 10  # teams are mixed
    group0 = panel.groups()[0]
    assert all(lab in group0 for labs in panel.assign(range(4), 1, group0) for lab in labs)
    with pytest.raises(AlignloopError, match="overlap 8 needs between 1 and 7"):
        panel.assign(range(3), overlap=8)


def test_panel_composition_and_config_errors(judge):
    panel = SimulatedPanel(PanelConfig(), judge)  # 10 labelers, 10 % careless, 10 % length lovers, 5 groups
    assert sum(lab.careless for lab in panel.labelers) == 1
    assert sum(lab.length_bias > 0 for lab in panel.labelers) == 1
    assert not any(lab.careless and lab.length_bias > 0 for lab in panel.labelers)
    assert [len(g) for g in panel.groups().values()] == [2, 2, 2, 2, 2]
    with pytest.raises(AlignloopError, match="n_groups: must be between 1 and n_labelers"):
        SimulatedPanel(PanelConfig(n_labelers=3, n_groups=4), judge)
    with pytest.raises(AlignloopError, match="no simulated labeler 'nobody'"):
        panel.rank(PROMPT, [GOOD, TOXIC], "nobody")
    with pytest.raises(AlignloopError, match="at least 2 completions"):
        panel.rank(PROMPT, [GOOD])
    with pytest.raises(AlignloopError, match="no ranked pairs"):
        panel.agreement_with_gold("labeler-0", [])


# -- labeler groups that value different things, position bias, fatigue ------------------------------------


def test_group_weights_average_to_gold_and_spread_as_configured():
    gold = {"sentiment": 1.0, "non_toxicity": 1.0, "coverage": 1.0, "length": 1.0}
    for n_groups in (2, 3, 5):
        w = np.array(group_weights(gold, n_groups, 0.5, seed=3))
        assert w.shape == (n_groups, 4) and np.allclose(w.sum(axis=1), 1.0) and (w > 0).all()
        assert np.allclose(w.mean(axis=0), 0.25)  # the population's weights are gold's (no clipping at 0.5)
        rms = np.sqrt(((w - 0.25) ** 2).mean(axis=1))
        assert np.allclose(rms, 0.5 * 0.25)  # every group equally far from the population
    assert group_weights(gold, 4, 0.0, seed=3) == [(0.25,) * 4] * 4
    assert group_weights(gold, 1, 2.0, seed=3) == [(0.25,) * 4]
    # a component gold ignores stays ignored by every group
    w = np.array(group_weights({"sentiment": 1.0, "coverage": 3.0, "length": 0.0, "non_toxicity": 0.0}, 3, 0.2, 0))
    assert (w[:, [1, 3]] == 0).all() and np.allclose(w.mean(axis=0), [0.25, 0, 0.75, 0])  # COMPONENTS order
    assert len({tuple(row) for row in w.round(6)}) == 3


def test_a_group_ranks_by_its_own_utility_and_gold_stays_the_population(judge):
    panel = SimulatedPanel(PanelConfig(group_spread=1.0), judge)
    weights = panel.group_weights()
    comps = judge.components_batch([PROMPT] * 3, [GOOD, OFF_TOPIC, TOXIC])
    for g, labs in panel.groups().items():
        own = [c["substance"] * sum(weights[g][k] * c[k] for k in weights[g]) for c in comps]
        assert labs[0].utilities(comps) == pytest.approx(own)
    mean_utility = np.mean([labs[0].utilities(comps) for labs in panel.groups().values()], axis=0)
    # the population (average of the groups) is the gold judge, up to weights clipped at 0
    assert mean_utility == pytest.approx([c["utility"] for c in comps], abs=0.03)
    assert len({tuple(w.values()) for w in weights.values()}) == 5


def _two_group_agreement(judge, spread: float, its) -> tuple[float, float]:
    """(observed, predicted) agreement on pairs between a labeler of group 0 and one of group 1, ranking
    the same items; predicted from the Bradley-Terry model: p_a p_b + (1 - p_a)(1 - p_b) per pair."""
    panel = SimulatedPanel(
        PanelConfig(n_labelers=2, n_groups=2, careless_fraction=0, length_lover_fraction=0, group_spread=spread),
        judge,
    )
    a, b = panel.labelers
    agree, predicted, total = 0, 0.0, 0
    for prompt, cs in its:
        comps = judge.components_batch([prompt] * len(cs), cs)
        ua, ub = a.utilities(comps), b.utilities(comps)
        pa = {w: i for i, w in enumerate(panel.rank(prompt, cs, a).order)}
        pb = {w: i for i, w in enumerate(panel.rank(prompt, cs, b).order)}
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                sa = 1 / (1 + math.exp(-(ua[i] - ua[j]) / a.temperature))
                sb = 1 / (1 + math.exp(-(ub[i] - ub[j]) / b.temperature))
                predicted += sa * sb + (1 - sa) * (1 - sb)
                agree += (pa[i] < pa[j]) == (pb[i] < pb[j])
                total += 1
    return agree / total, predicted / total


def test_more_group_spread_means_less_cross_group_agreement(judge):
    rng = np.random.default_rng(0)
    words = "great bad ocean night calm awful happy stars waves idiot kind song".split()
    its = []
    for i in range(150):
        prompt = f"Write about the ocean at night, take {i}."
        its.append((prompt, [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(4)]))
    results = {s: _two_group_agreement(judge, s, its) for s in (0.0, 0.6, 1.5)}
    observed = [results[s][0] for s in (0.0, 0.6, 1.5)]
    predicted = [results[s][1] for s in (0.0, 0.6, 1.5)]
    assert predicted[0] > predicted[1] > predicted[2]
    assert observed[0] > observed[2] + 0.05
    for o, p in zip(observed, predicted, strict=True):
        assert abs(o - p) < 4 * math.sqrt(p * (1 - p) / len(its)), (observed, predicted)


def test_position_bias_favours_the_first_shown_completion():
    rng = np.random.default_rng(7)
    biased = SimulatedLabeler("b", temperature=0.1, position_bias=0.1)
    plain = SimulatedLabeler("p", temperature=0.1)
    u, n = [0.5, 0.5], [10, 10]
    first_biased = sum(biased.best_pick(u, n, rng) == 0 for _ in range(3000)) / 3000
    first_plain = sum(plain.best_pick(u, n, rng) == 0 for _ in range(3000)) / 3000
    assert first_plain == pytest.approx(0.5, abs=0.03)
    assert first_biased == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)  # sigmoid(0.1 / 0.1)
    assert biased.position_bonus(3).tolist() == pytest.approx([0.1, 0.05, 0.0])
    panel = SimulatedPanel(PanelConfig(position_bias=0.05, seed=1))
    bonuses = [lab.position_bias for lab in panel.labelers]
    assert len(set(bonuses)) == len(bonuses) and all(0 <= x <= 0.1 for x in bonuses)


def test_fatigue_lowers_agreement_with_gold_over_a_session(judge):
    tired = SimulatedLabeler("t", temperature=0.02, fatigue=0.5, session_items=40)
    assert tired.temperature_at(0) == 0.02 and tired.temperature_at(20) == pytest.approx(0.27)
    assert tired.temperature_at(40) == 0.02  # a new session starts fresh
    panel = SimulatedPanel(PanelConfig(n_labelers=1, n_groups=1), judge, labelers=[tired])
    its = items(40)
    rankings = panel.rank_items(its)
    early = panel.agreement_with_gold(tired, rankings[:13])
    late = panel.agreement_with_gold(tired, rankings[-13:])
    assert early > late + 0.1, (early, late)
    fresh = SimulatedPanel(PanelConfig(n_labelers=1, n_groups=1), judge, labelers=[replace(tired, fatigue=0.0)])
    assert fresh.agreement_with_gold(None, fresh.rank_items(its)[-13:]) > late + 0.1


def test_panel_knobs_are_validated(judge):
    for bad in ({"group_spread": -1}, {"position_bias": -0.1}, {"fatigue": -1}, {"session_items": 0}):
        with pytest.raises(AlignloopError, match="panel config"):
            SimulatedPanel(PanelConfig(**bad), judge)
