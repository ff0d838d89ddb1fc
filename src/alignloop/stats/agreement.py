"""Inter-annotator agreement: how far labelers agree with each other, with the consensus and with gold.

The paper reports that training labelers agree with each other on 72.6 +- 1.5 % of comparisons
(held-out labelers 77.3 +- 1.3 %); :func:`pairwise_agreement` computes that figure from rankings.
Chance-corrected coefficients (Cohen's and Fleiss' kappa, Krippendorff's alpha) and the
per-labeler table used for screening and for spotting outlier labelers live here too, so the
feedback service and the evaluation report the same numbers.

Inputs are plain: :class:`~alignloop.data.records.Ranking` records, or ``(item_id, labeler_id,
value)`` triples. A triple's value is a category (any hashable: "yes", 3, True) or, for ranking
agreement, the ranks of the completions (a sequence indexed by completion, or a mapping from a
completion key to its rank; lower is better, equal ranks are ties). Nothing here touches storage.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np

from alignloop.data.records import Ranking
from alignloop.errors import AlignloopError

LabelTriple = tuple[Hashable, Hashable, Any]
"""``(item_id, labeler_id, value)``: one labeler's label on one item."""

TIE = "<tie>"
"""The value of a comparison unit that a labeler judged a tie."""


# --------------------------------------------------------------------------------------------------
# Judgments: every label reduced to "units" (one item, or one completion pair of an item) with a value


@dataclass
class Judgments:
    """Labels reduced to units of judgment, the common ground of every agreement figure here.

    For categorical labels a unit is an item and its value the category. For rankings a unit is
    one pair of completions of an item and its value the preferred completion (or :data:`TIE`):
    two labelers agree on the unit when they order the pair the same way.
    """

    by_labeler: dict[Hashable, dict[Hashable, Hashable]]  # labeler -> unit -> value
    item_of: dict[Hashable, Hashable]  # unit -> item (the cluster for standard errors)


def _triples(labels: Iterable[Any], what: str) -> list[LabelTriple]:
    """Check the shape of ``labels`` and refuse a labeler labelling one item twice."""
    out: list[LabelTriple] = []
    seen: set[tuple[Hashable, Hashable]] = set()
    for n, label in enumerate(labels):
        if isinstance(label, Ranking):
            label = (label.prompt_id, label.labeler_id, _ranking_ranks(label))
        if not isinstance(label, (tuple, list)) or len(label) != 3:
            raise AlignloopError(
                f"{what}: label #{n} is {label!r:.80}, expected an (item_id, labeler_id, value) triple",
                "pass Ranking records or (item_id, labeler_id, value) triples",
            )
        item, labeler, value = label
        if (item, labeler) in seen:
            raise AlignloopError(
                f"{what}: labeler {labeler!r} labeled item {item!r} twice",
                "keep one label per labeler per item (the latest submission)",
            )
        seen.add((item, labeler))
        out.append((item, labeler, value))
    return out


def _ranking_ranks(r: Ranking) -> dict[tuple[str, int], int]:
    """Ranks keyed by completion text (with an occurrence count), so rankings of one prompt match
    even when the labelers saw the completions in a different order or a different subset."""
    keys: list[tuple[str, int]] = []
    count: Counter[str] = Counter()
    for text in r.completions:
        keys.append((text, count[text]))
        count[text] += 1
    return dict(zip(keys, r.ranks(), strict=True))


def _sorted_values(values: Iterable[Hashable]) -> list[Hashable]:
    """Categories in their natural order when they have one (1 < 2 < 10), else by repr."""
    values = set(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


def _is_ranks(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple, np.ndarray))


def judgments(labels: Iterable[Any], *, ignore_ties: bool = True) -> Judgments:
    """Reduce Ranking records or triples to :class:`Judgments`.

    Rankings (or triples whose value is a rank sequence/mapping) give one unit per pair of
    completions that the labeler ranked. With ``ignore_ties`` a pair the labeler tied gives no
    unit, matching the comparisons the reward model trains on; otherwise a tie is a value of its
    own that agrees only with another tie. Any other value is a category of a one-unit item.
    """
    if isinstance(labels, Judgments):
        return labels
    by_labeler: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    item_of: dict[Hashable, Hashable] = {}
    for item, labeler, value in _triples(labels, "labels"):
        if not _is_ranks(value):
            by_labeler[labeler][item] = value
            item_of[item] = item
            continue
        ranks = value if isinstance(value, Mapping) else dict(enumerate(value))
        for x, y in combinations(ranks, 2):
            if ranks[x] == ranks[y]:
                if ignore_ties:
                    continue
                winner: Hashable = TIE
            else:
                winner = x if ranks[x] < ranks[y] else y
            unit = (item, frozenset((x, y)))
            by_labeler[labeler][unit] = winner
            item_of[unit] = item
    return Judgments(dict(by_labeler), item_of)


# --------------------------------------------------------------------------------------------------
# Raw agreement (the paper's figure)


@dataclass
class AgreementRate:
    """A proportion of agreeing judgments with its standard error (the paper's 72.6 +- 1.5 %)."""

    rate: float
    stderr: float
    n_judgments: int  # (labeler pair, unit) comparisons counted
    n_items: int  # items with at least two labelers
    n_labelers: int

    def __str__(self) -> str:
        return (
            f"{100 * self.rate:.1f} +- {100 * self.stderr:.1f} % ({self.n_judgments} judgments, {self.n_items} items)"
        )


def pairwise_agreement(labels: Iterable[Any] | Judgments, *, ignore_ties: bool = True) -> AgreementRate:
    """How often two labelers agree: for every item labeled by two or more labelers, every pair
    of those labelers and every unit both judged (for rankings: every pair of completions both
    ranked), count whether they gave the same value (ordered the pair the same way).

    rate = agreeing / all such judgments. The judgments of one item share a prompt and its
    completions, so they are not independent: the standard error is the cluster-robust one of a
    ratio, with items as clusters, se = sqrt(C/(C-1) * sum_i (a_i - rate*m_i)^2) / sum_i m_i,
    where item i has a_i agreeing of m_i judgments and C items count. NaN with fewer than 2 items.
    """
    j = judgments(labels, ignore_ties=ignore_ties)
    labelers_of: dict[Hashable, list[Hashable]] = defaultdict(list)
    for labeler, units in j.by_labeler.items():
        for unit in units:
            labelers_of[unit].append(labeler)
    agree: Counter[Hashable] = Counter()
    total: Counter[Hashable] = Counter()
    labelers_seen: set[Hashable] = set()
    for unit, labelers in labelers_of.items():
        if len(labelers) < 2:
            continue
        item = j.item_of[unit]
        for la, lb in combinations(labelers, 2):
            total[item] += 1
            agree[item] += j.by_labeler[la][unit] == j.by_labeler[lb][unit]
        labelers_seen.update(labelers)
    if not total:
        raise AlignloopError(
            "agreement: no item was labeled by two or more labelers",
            "assign each item to several labelers (overlap) before computing agreement",
        )
    a = np.array([agree[i] for i in total], dtype=float)
    m = np.array([total[i] for i in total], dtype=float)
    rate = a.sum() / m.sum()
    c = len(m)
    se = math.sqrt(c / (c - 1) * np.sum((a - rate * m) ** 2)) / m.sum() if c > 1 else math.nan
    return AgreementRate(float(rate), float(se), int(m.sum()), c, len(labelers_seen))


# --------------------------------------------------------------------------------------------------
# Chance-corrected coefficients


@dataclass
class Kappa:
    """A chance-corrected agreement: kappa = (observed - expected) / (1 - expected).

    ``observed`` and ``expected`` are agreement proportions (for weighted kappa, one minus the
    weighted disagreement). kappa is NaN when expected agreement is 1 (every label the same).
    """

    kappa: float
    observed: float
    expected: float
    n_items: int
    categories: list[Hashable]


def _kappa(po: float, pe: float) -> float:
    return (po - pe) / (1.0 - pe) if pe < 1.0 else math.nan


def paired_values(labels: Iterable[LabelTriple], labeler_a: Hashable, labeler_b: Hashable) -> tuple[list, list]:
    """The values two labelers gave on the items both labeled, in item order (input for Cohen's kappa)."""
    by: dict[Hashable, dict[Hashable, Any]] = defaultdict(dict)
    for item, labeler, value in _triples(labels, "labels"):
        by[labeler][item] = value
    common = [i for i in by[labeler_a] if i in by[labeler_b]]
    return [by[labeler_a][i] for i in common], [by[labeler_b][i] for i in common]


def cohens_kappa(
    labels_a: Sequence[Hashable],
    labels_b: Sequence[Hashable],
    *,
    categories: Sequence[Hashable] | None = None,
    weights: Literal["linear", "quadratic"] | None = None,
) -> Kappa:
    """Cohen's kappa of two raters on the same items (``labels_a[i]`` and ``labels_b[i]`` rate item i).

    observed p_o = sum_k o_kk / n from the confusion table o; expected p_e = sum_k (row_k/n)(col_k/n)
    under independent raters with their own marginals. With ``weights`` (ordinal categories, in
    the order of ``categories``) disagreements cost |i-j| or (i-j)^2 and
    kappa_w = 1 - sum w*o / sum w*e.
    """
    if len(labels_a) != len(labels_b):
        raise AlignloopError(f"cohens_kappa: {len(labels_a)} labels for rater a but {len(labels_b)} for rater b")
    if not labels_a:
        raise AlignloopError("cohens_kappa: no items rated by both raters")
    cats = list(categories) if categories is not None else _sorted_values([*labels_a, *labels_b])
    index = {c: i for i, c in enumerate(cats)}
    unknown = (set(labels_a) | set(labels_b)) - set(index)
    if unknown:
        raise AlignloopError(f"cohens_kappa: label {sorted(unknown, key=repr)[0]!r} is not among categories {cats}")
    k, n = len(cats), len(labels_a)
    table = np.zeros((k, k))
    for x, y in zip(labels_a, labels_b, strict=True):
        table[index[x], index[y]] += 1
    table /= n
    expected = np.outer(table.sum(axis=1), table.sum(axis=0))
    if weights is None:
        w = 1.0 - np.eye(k)
    else:
        d = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(float)
        w = d if weights == "linear" else d**2
    do, de = float((w * table).sum()), float((w * expected).sum())
    po, pe = 1.0 - do, 1.0 - de
    kappa = 1.0 - do / de if de > 0 else math.nan
    return Kappa(kappa, po, pe, n, cats)


def fleiss_kappa_table(counts: np.ndarray | Sequence[Sequence[float]]) -> Kappa:
    """Fleiss' kappa from an items x categories table of how many raters chose each category.

    For item i with n_i = sum_j n_ij raters: P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), the
    share of agreeing rater pairs. P_bar = mean of P_i; p_j = sum_i n_ij / sum_i n_i; P_e = sum_j p_j^2.
    The number of raters may vary per item: each item's P_i uses its own n_i, items count
    equally in P_bar, p_j pools all ratings, and items with fewer than 2 ratings are dropped
    (they hold no pair). With a fixed number of raters this is exactly Fleiss (1971).
    """
    t = np.asarray(counts, dtype=float)
    if t.ndim != 2:
        raise AlignloopError(f"fleiss_kappa: expected an items x categories table, got shape {t.shape}")
    n_i = t.sum(axis=1)
    t, n_i = t[n_i >= 2], n_i[n_i >= 2]
    if len(t) == 0:
        raise AlignloopError("fleiss_kappa: no item has two or more ratings", "assign items to several labelers")
    p_i = (t * (t - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = t.sum(axis=0) / t.sum()
    p_e = float((p_j**2).sum())
    return Kappa(_kappa(p_bar, p_e), p_bar, p_e, len(t), list(range(t.shape[1])))


def fleiss_kappa(labels: Iterable[LabelTriple]) -> Kappa:
    """Fleiss' kappa of many raters from (item, labeler, category) triples; see :func:`fleiss_kappa_table`."""
    triples = _triples(labels, "fleiss_kappa")
    cats = _sorted_values(v for _, _, v in triples)
    items = list(dict.fromkeys(i for i, _, _ in triples))
    ci, ii = {c: k for k, c in enumerate(cats)}, {i: k for k, i in enumerate(items)}
    table = np.zeros((len(items), len(cats)))
    for item, _, value in triples:
        table[ii[item], ci[value]] += 1
    result = fleiss_kappa_table(table)
    result.categories = cats
    return result


@dataclass
class Alpha:
    """Krippendorff's alpha = 1 - D_o / D_e (observed over expected disagreement)."""

    alpha: float
    observed_disagreement: float
    expected_disagreement: float
    n_pairable: int  # values in units with two or more values
    n_units: int
    level: str


def _delta2(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    """The squared difference delta^2(c, k) between the sorted distinct values of each level."""
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        return np.subtract.outer(values, values) ** 2
    if level == "ratio":
        s = np.add.outer(values, values)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(s == 0, 0.0, np.subtract.outer(values, values) / s)
        return d**2
    # ordinal: (sum of n_g for g from c to k, minus half of n_c and n_k)^2
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    lo, hi = np.minimum.outer(np.arange(k), np.arange(k)), np.maximum.outer(np.arange(k), np.arange(k))
    between = cum[hi + 1] - cum[lo]
    return (between - (n_c[lo] + n_c[hi]) / 2.0) ** 2


def krippendorff_alpha(
    labels: Iterable[LabelTriple], level: Literal["nominal", "ordinal", "interval", "ratio"] = "nominal"
) -> Alpha:
    """Krippendorff's alpha from (unit, coder, value) triples; missing values are simply absent triples.

    Coincidence matrix: each unit u with m_u >= 2 values adds 1/(m_u - 1) to o[c, k] for every
    ordered pair of values (c, k) from two different coders. With n_c = sum_k o[c, k] and
    n = sum_c n_c: D_o = sum o[c,k] delta^2(c,k) / n, D_e = sum n_c n_k delta^2(c,k) / (n (n-1)).
    Nominal, ordinal, interval and ratio levels differ only in delta^2; ordinal and above need
    numeric values (ordinal uses only their order).
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise AlignloopError(f"krippendorff_alpha: unknown level {level!r}", "use nominal, ordinal, interval or ratio")
    units: dict[Hashable, list[Any]] = defaultdict(list)
    for unit, _, value in _triples(labels, "krippendorff_alpha"):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # a missing value, as in a reliability matrix with blanks
        units[unit].append(value)
    pairable = {u: v for u, v in units.items() if len(v) >= 2}
    if not pairable:
        raise AlignloopError("krippendorff_alpha: no unit has values from two or more coders")
    if level == "nominal":
        distinct = _sorted_values(v for vs in pairable.values() for v in vs)
    else:
        try:
            distinct = sorted({float(v) for vs in pairable.values() for v in vs})
        except (TypeError, ValueError) as err:
            raise AlignloopError(
                f"krippendorff_alpha: {level} level needs numeric values ({err})", "use level='nominal' for categories"
            ) from None
        pairable = {u: [float(v) for v in vs] for u, vs in pairable.items()}
    index = {v: i for i, v in enumerate(distinct)}
    o = np.zeros((len(distinct), len(distinct)))
    for vs in pairable.values():
        m = len(vs)
        counts = Counter(index[v] for v in vs)
        for c, nc in counts.items():
            for k, nk in counts.items():
                o[c, k] += (nc * (nk - (c == k))) / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    values = np.array(distinct, dtype=float) if level != "nominal" else np.arange(len(distinct), dtype=float)
    d2 = _delta2(values, n_c, level)
    d_o = float((o * d2).sum() / n)
    d_e = float((np.outer(n_c, n_c) * d2).sum() / (n * (n - 1)))
    alpha = 1.0 - d_o / d_e if d_e > 0 else math.nan
    return Alpha(alpha, d_o, d_e, int(round(n)), len(pairable), level)


# --------------------------------------------------------------------------------------------------
# Per-labeler view: consensus, gold, outliers


@dataclass
class LabelerAgreement:
    """One row of the per-labeler table: agreement with the others' consensus and with gold."""

    labeler_id: Hashable
    n_units: int  # units this labeler judged that at least one other labeler judged too
    consensus_agreement: float  # NaN when no unit is shared
    n_gold: int
    gold_agreement: float  # NaN without a gold set or overlap with it
    outlier: bool
    reason: str  # why flagged; "" when not


def _agreement_with_majority(value: Hashable, others: list[Hashable]) -> float:
    """1 if ``value`` is the others' majority; with a tied majority, 1/(number of tied values) if
    ``value`` is among them: the expected agreement when the tie is broken at random."""
    counts = Counter(others)
    top = max(counts.values())
    modes = [v for v, c in counts.items() if c == top]
    return 1.0 / len(modes) if value in modes else 0.0


def _robust_low(scores: dict[Hashable, float], mad_k: float, min_gap: float) -> tuple[float, dict[Hashable, bool]]:
    """Flag scores below median - max(mad_k * MAD, min_gap); MAD is scaled by 1.4826 to estimate a
    standard deviation. ``min_gap`` keeps labelers who all agree closely from being flagged over noise."""
    finite = {k: v for k, v in scores.items() if not math.isnan(v)}
    if len(finite) < 3:
        return math.nan, {k: False for k in scores}
    arr = np.array(list(finite.values()))
    med = float(np.median(arr))
    mad = 1.4826 * float(np.median(np.abs(arr - med)))
    cut = med - max(mad_k * mad, min_gap)
    return cut, {k: (not math.isnan(v)) and v < cut for k, v in scores.items()}


def labeler_agreement(
    labels: Iterable[Any] | Judgments,
    gold: Iterable[Any] | Judgments | None = None,
    *,
    threshold: float | None = None,
    mad_k: float = 2.0,
    min_gap: float = 0.05,
    ignore_ties: bool = True,
) -> list[LabelerAgreement]:
    """The per-labeler table: each labeler's agreement with the consensus of the others
    (leave-one-out majority on every unit they share) and with a gold set, plus an outlier flag.

    A labeler is flagged when an agreement falls below ``median - max(mad_k * MAD, min_gap)``
    across labelers (robust to the outliers themselves; needs 3 labelers) or below the absolute
    ``threshold`` (the screening bar). ``gold`` takes the same form as ``labels``; its labeler ids
    are ignored, and it must hold one label per item. Rows are sorted by labeler id.
    """
    j = judgments(labels, ignore_ties=ignore_ties)
    gold_units: dict[Hashable, Hashable] = {}
    if gold is not None:
        if not isinstance(gold, Judgments):
            gold_triples = _triples(gold, "gold")
            repeated = [i for i, c in Counter(item for item, _, _ in gold_triples).items() if c > 1]
            if repeated:
                raise AlignloopError(
                    f"gold: item {repeated[0]!r} has {Counter(i for i, _, _ in gold_triples)[repeated[0]]} gold labels",
                    "keep one researcher label per gold item",
                )
            gold = judgments(gold_triples, ignore_ties=ignore_ties)
        for units in gold.by_labeler.values():
            gold_units.update(units)
    values_of: dict[Hashable, list[tuple[Hashable, Hashable]]] = defaultdict(list)  # unit -> (labeler, value)
    for labeler, units in j.by_labeler.items():
        for unit, value in units.items():
            values_of[unit].append((labeler, value))
    rows: dict[Hashable, list[Any]] = {}
    for labeler, units in j.by_labeler.items():
        scores, gold_scores = [], []
        for unit, value in units.items():
            others = [v for other, v in values_of[unit] if other != labeler]
            if others:
                scores.append(_agreement_with_majority(value, others))
            if unit in gold_units:
                gold_scores.append(float(value == gold_units[unit]))
        rows[labeler] = [
            len(scores),
            float(np.mean(scores)) if scores else math.nan,
            len(gold_scores),
            float(np.mean(gold_scores)) if gold_scores else math.nan,
        ]
    cons_cut, cons_low = _robust_low({k: r[1] for k, r in rows.items()}, mad_k, min_gap)
    gold_cut, gold_low = _robust_low({k: r[3] for k, r in rows.items()}, mad_k, min_gap)
    out = []
    for labeler in _sorted_values(rows):
        n, cons, ng, g = rows[labeler]
        reasons = []
        if cons_low[labeler]:
            reasons.append(f"consensus agreement {cons:.2f} below robust cut {cons_cut:.2f}")
        if gold_low[labeler]:
            reasons.append(f"gold agreement {g:.2f} below robust cut {gold_cut:.2f}")
        if threshold is not None:
            for name, value in (("consensus", cons), ("gold", g)):
                if not math.isnan(value) and value < threshold:
                    reasons.append(f"{name} agreement {value:.2f} below threshold {threshold:.2f}")
        out.append(LabelerAgreement(labeler, n, cons, ng, g, bool(reasons), "; ".join(reasons)))
    return out
