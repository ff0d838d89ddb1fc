"""The simulated labeler panel: stands in for human labelers in tests, the demo and research.

Each method is a pure function from (prompt, completions) to one of the feedback records of
:mod:`alignloop.data.records`; nothing is stored, so the same panel can label straight into
files or through the feedback service's HTTP API. Every judgment draws its randomness from
(panel seed, form, labeler, item), so it is reproducible and independent of call order.

The panel's labelers see the hidden gold utility of :mod:`.gold` through Bradley-Terry noise
(see :mod:`.labeler`); a share of them are careless (answer at random) and a share love long
answers. :meth:`SimulatedPanel.screen` measures each labeler's agreement with gold on a
screening set, the way the paper screened its contractors.

Labeler groups differ in what they value, as real groups of labelers do (the paper's held-out
labelers agree less with a reward model trained on the others: 69.6 vs 72.4 %). Group g weighs
the gold components (sentiment, non-toxicity, coverage, length) with

    w_g = p + group_spread * mean(p) * sqrt(C) * z_g

where p are the gold weights (normalised to sum 1) over the C components and z_g are G points
evenly spaced on a circle of unit vectors that sum to 0 over the components (its plane is a
seeded draw). So each w_g still sums to 1, every group lies equally far from the population
(its weights differ from p by group_spread * mean(p) per component, root mean square; with only
two components in play the groups lie on a line and their distances vary), and the
groups' weights average exactly to p: the gold utility is the population's utility, the average
of the groups' utilities. A weight
pushed below 0 is clipped and its group's weights renormalised (then the average is only close
to p). Components whose gold weight is 0 stay at 0 in every group. ``group_spread = 0`` (or one
group) gives every labeler the gold weights.

Per-labeler habits, off by default: ``position_bias`` (each labeler draws its own bonus for the
completion shown first, uniformly in [0, 2 * position_bias]) and ``fatigue`` (temperature
rising over each session of ``session_items`` rankings; see :mod:`.labeler`). Fatigue applies
to rankings and best-picks: :meth:`SimulatedPanel.rank_items` counts each labeler's items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignloop.config import PanelConfig
from alignloop.data.records import (
    METADATA_FLAGS,
    Demonstration,
    Prompt,
    Ranking,
    Rating,
    RuleViolations,
    Thumbs,
    stable_id,
)
from alignloop.errors import AlignloopError
from alignloop.labelers.gold import COMPONENTS, GoldJudge
from alignloop.labelers.labeler import SimulatedLabeler
from alignloop.labelers.rules import RULES, metadata_flags, violated_rules
from alignloop.labelers.text import keywords

PromptLike = str | Prompt
#: One labeling item: a prompt and the completions to judge.
Item = tuple[PromptLike, Sequence[str]]

_TEMPLATES = (
    "Great question! When it comes to {a}, the key ideas are {others}. Start with the basics, stay curious, "
    "and you will find this both rewarding and fun. Good luck!",
    "Sure, happy to help. {A} connects naturally with {others}, and a clear, simple approach works best. "
    "Take it one step at a time, and the result will be excellent.",
    "Here is a friendly answer about {a}. It is a wonderful topic: thinking about {others} helps us "
    "understand it better. I hope this is useful, and enjoy exploring it further!",
)


def group_weights(gold: dict[str, float], n_groups: int, spread: float, seed: int) -> list[tuple[float, ...]]:
    """Per group, weights over :data:`~.gold.COMPONENTS` scattered around the gold weights (module docstring).

    Rows sum to 1; before clipping, the mean over groups is exactly the normalised gold weights.
    """
    p = np.array([max(0.0, float(gold.get(c, 0.0))) for c in COMPONENTS])
    p = p / p.sum()
    active = p > 0
    if spread == 0 or n_groups == 1 or active.sum() < 2:
        return [tuple(float(x) for x in p)] * n_groups
    c = int(active.sum())
    # two seeded orthonormal directions a, b in the sum-zero subspace of the active components
    basis = np.random.default_rng([seed, 0x6E0]).standard_normal((c, 2))
    basis -= basis.mean(axis=0)
    a, b = np.linalg.qr(basis)[0].T
    angles = 2 * np.pi * np.arange(n_groups) / n_groups
    z = np.zeros((n_groups, len(p)))
    # group g sits at angle 2*pi*g/G on the circle spanned by a and b: unit length, and the G points sum to 0.
    if c > 2:
        z[:, active] = np.cos(angles)[:, None] * a + np.sin(angles)[:, None] * b
    else:  # evenly spaced along the line through p, from -a to +a
        z[:, active] = np.linspace(-1.0, 1.0, n_groups)[:, None] * a
    w = np.clip(p + spread * p[active].mean() * math.sqrt(c) * z, 0.0, None)
    w = w / w.sum(axis=1, keepdims=True)
    return [tuple(float(x) for x in row) for row in w]


def _fields(prompt: PromptLike) -> tuple[str, str, str]:
    """(prompt_id, text, category) of a Prompt record or a bare string (whose id is its content hash)."""
    if isinstance(prompt, Prompt):
        return prompt.id, prompt.text, prompt.category
    return stable_id(prompt), prompt, "other"


class SimulatedPanel:
    """A panel of simulated labelers built from :class:`~alignloop.config.PanelConfig`.

    Labelers ``labeler-00 .. labeler-NN`` are dealt round-robin into ``n_groups`` groups; a
    seeded draw makes ``careless_fraction`` of them careless and, among the rest,
    ``length_lover_fraction`` length lovers. Pass ``labelers`` to build a custom panel.
    """

    def __init__(
        self,
        cfg: PanelConfig | None = None,
        judge: GoldJudge | None = None,
        labelers: Sequence[SimulatedLabeler] | None = None,
    ) -> None:
        self.cfg = cfg or PanelConfig()
        try:
            self.cfg.validate()
        except ValueError as err:
            raise AlignloopError(f"panel config: {err}", "fix that panel setting") from None
        self.judge = judge or GoldJudge()
        self.labelers = list(labelers) if labelers is not None else self._build_labelers()
        if not self.labelers:
            raise AlignloopError("the panel has no labelers", "set panel.n_labelers >= 1")
        self._by_id = {lab.id: lab for lab in self.labelers}

    def _build_labelers(self) -> list[SimulatedLabeler]:
        cfg = self.cfg
        n = cfg.n_labelers
        perm = np.random.default_rng([cfg.seed, 0x1AB]).permutation(n)
        n_careless = int(n * cfg.careless_fraction + 0.5)
        n_lovers = min(int(n * cfg.length_lover_fraction + 0.5), n - n_careless)
        careless = {int(i) for i in perm[:n_careless]}
        lovers = {int(i) for i in perm[n_careless : n_careless + n_lovers]}
        width = len(str(n - 1))
        weights = group_weights(self.judge.cfg.weights, cfg.n_groups, cfg.group_spread, cfg.seed)
        position = np.random.default_rng([cfg.seed, 0x905]).uniform(0.0, 2.0, size=n) * cfg.position_bias
        return [
            SimulatedLabeler(
                id=f"labeler-{i:0{width}d}",
                group=i % cfg.n_groups,
                temperature=cfg.temperature,
                length_bias=cfg.length_bias if i in lovers else 0.0,
                careless=i in careless,
                weights=weights[i % cfg.n_groups],
                position_bias=float(position[i]),
                fatigue=cfg.fatigue,
                session_items=cfg.session_items,
            )
            for i in range(n)
        ]

    def group_weights(self) -> dict[int, dict[str, float]]:
        """Each group's weights over the gold components (those of its first labeler; gold's when unset)."""
        gold = group_weights(self.judge.cfg.weights, 1, 0.0, 0)[0]
        return {g: dict(zip(COMPONENTS, labs[0].weights or gold, strict=True)) for g, labs in self.groups().items()}

    # -- who labels what ---------------------------------------------------------------------------
    def labeler(self, labeler_id: str) -> SimulatedLabeler:
        if labeler_id not in self._by_id:
            raise AlignloopError(f"no simulated labeler {labeler_id!r}", f"known: {', '.join(self._by_id)}")
        return self._by_id[labeler_id]

    def groups(self) -> dict[int, list[SimulatedLabeler]]:
        """Labelers by group (the folds of cross-validation by labeler group; one can be held out)."""
        out: dict[int, list[SimulatedLabeler]] = {}
        for lab in self.labelers:
            out.setdefault(lab.group, []).append(lab)
        return dict(sorted(out.items()))

    def assign(
        self, items: Sequence[Any], overlap: int = 1, labelers: Sequence[SimulatedLabeler] | None = None
    ) -> list[list[SimulatedLabeler]]:
        """``overlap`` distinct labelers for each item, balancing load and mixing who works with whom.

        Item i goes to the least-loaded labelers, ties broken by a draw seeded with (seed, i),
        so loads differ by at most one and the result depends only on the seed and item order.
        """
        pool = list(labelers) if labelers is not None else self.labelers
        if not 1 <= overlap <= len(pool):
            raise AlignloopError(
                f"overlap {overlap} needs between 1 and {len(pool)} labelers (the pool has {len(pool)})",
                "lower the overlap or add labelers",
            )
        load = [0] * len(pool)
        out = []
        for i in range(len(items)):
            tiebreak = np.random.default_rng([self.cfg.seed, 0xA55, i]).random(len(pool))
            chosen = sorted(range(len(pool)), key=lambda j: (load[j], tiebreak[j]))[:overlap]
            for j in chosen:
                load[j] += 1
            out.append([pool[j] for j in chosen])
        return out

    def _who(self, labeler: SimulatedLabeler | str | None, text: str, completions: Sequence[str]) -> SimulatedLabeler:
        if isinstance(labeler, SimulatedLabeler):
            return labeler
        if isinstance(labeler, str):
            return self.labeler(labeler)
        return self.labelers[int(stable_id("assign", str(self.cfg.seed), text, *completions), 16) % len(self.labelers)]

    def _rng(self, form: str, labeler: SimulatedLabeler, text: str, completions: Sequence[str]) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, int(stable_id(form, labeler.id, text, *completions), 16)])

    def _seen(self, text: str, completions: Sequence[str]) -> tuple[list[dict[str, float]], list[float], list[float]]:
        comps = self.judge.components_batch([text] * len(completions), list(completions))
        return comps, [c["utility"] for c in comps], [c["n_words"] for c in comps]

    # -- the feedback forms ------------------------------------------------------------------------
    def rank(
        self,
        prompt: PromptLike,
        completions: Sequence[str],
        labeler: SimulatedLabeler | str | None = None,
        sources: Sequence[str] | None = None,
        session_position: int = 0,
    ) -> Ranking:
        """A labeler's ranking of K completions (ties when ``cfg.tie_tolerance`` > 0), shown in the given order;
        ``session_position`` is how many items the labeler ranked before in this session (for fatigue)."""
        pid, text, _ = _fields(prompt)
        if len(completions) < 2:
            raise AlignloopError(f"a ranking needs at least 2 completions, got {len(completions)}")
        lab = self._who(labeler, text, completions)
        comps, _, n = self._seen(text, completions)
        rng = self._rng("rank", lab, text, completions)
        order, ties = lab.rank(lab.utilities(comps), n, rng, self.cfg.tie_tolerance, session_position)
        return Ranking(
            pid,
            text,
            list(completions),
            order,
            lab.id,
            ties,
            list(sources) if sources is not None else None,
            {"labeler_group": lab.group},
        )

    def best_pick(
        self, prompt: PromptLike, completions: Sequence[str], labeler: SimulatedLabeler | str | None = None
    ) -> Ranking:
        """The degenerate ranking: the labeler's favourite first, the other K-1 tied below it."""
        pid, text, _ = _fields(prompt)
        if len(completions) < 2:
            raise AlignloopError(f"a best-pick needs at least 2 completions, got {len(completions)}")
        lab = self._who(labeler, text, completions)
        comps, _, n = self._seen(text, completions)
        best = lab.best_pick(lab.utilities(comps), n, self._rng("best", lab, text, completions))
        ranks = [0 if i == best else 1 for i in range(len(completions))]
        return Ranking.from_ranks(
            pid, text, list(completions), ranks, labeler_id=lab.id, metadata={"labeler_group": lab.group}
        )

    def rank_items(
        self, items: Sequence[Item], overlap: int = 1, labelers: Sequence[SimulatedLabeler] | None = None
    ) -> list[Ranking]:
        """Rank many items, each by ``overlap`` labelers assigned from ``labelers`` (default: the whole
        panel, e.g. only those who passed :meth:`screen`); the gold judge scores them in one batch."""
        self.prefetch(items)
        assigned = self.assign(items, overlap, labelers)
        done: dict[str, int] = {}  # items each labeler has ranked so far (its place in its session)
        out = []
        for (p, c), labs in zip(items, assigned, strict=True):
            for lab in labs:
                out.append(self.rank(p, c, lab, session_position=done.get(lab.id, 0)))
                done[lab.id] = done.get(lab.id, 0) + 1
        return out

    def prefetch(self, items: Sequence[Item]) -> None:
        """Score every completion of ``items`` in one gold-judge batch so later judgments hit its cache."""
        prompts = [_fields(p)[1] for p, cs in items for _ in cs]
        self.judge.components_batch(prompts, [c for _, cs in items for c in cs])

    def thumbs(self, prompt: PromptLike, completion: str, labeler: SimulatedLabeler | str | None = None) -> Thumbs:
        """Thumbs up if the noisy perceived utility exceeds ``cfg.thumbs_threshold``."""
        pid, text, _ = _fields(prompt)
        lab = self._who(labeler, text, [completion])
        comps, _, n = self._seen(text, [completion])
        up = lab.thumbs(
            lab.utilities(comps)[0], n[0], self.cfg.thumbs_threshold, self._rng("thumbs", lab, text, [completion])
        )
        return Thumbs(pid, text, completion, up, lab.id)

    def rate(
        self,
        prompt: PromptLike,
        completion: str,
        labeler: SimulatedLabeler | str | None = None,
        source: str | None = None,
    ) -> Rating:
        """Likert 1-7 plus the metadata flags; a careless labeler answers every question at random."""
        pid, text, category = _fields(prompt)
        lab = self._who(labeler, text, [completion])
        comps, _, n = self._seen(text, [completion])
        rng = self._rng("rate", lab, text, [completion])
        likert = lab.likert(lab.utilities(comps)[0], n[0], rng)
        if lab.careless:
            flags = {f: bool(b) for f, b in zip(METADATA_FLAGS, rng.random(len(METADATA_FLAGS)) < 0.5, strict=True)}
        else:
            flags = metadata_flags(text, completion, comps[0], category)
        return Rating(pid, text, completion, likert, lab.id, flags, source)

    def rule_violations(
        self, prompt: PromptLike, completions: Sequence[str], labeler: SimulatedLabeler | str | None = None
    ) -> RuleViolations:
        """The rule-based form: the written :data:`~.rules.RULES` each completion breaks, plus a ranking."""
        lab = self._who(labeler, _fields(prompt)[1], completions)
        ranking = self.rank(prompt, completions, lab)
        comps, _, _ = self._seen(ranking.prompt, completions)
        if lab.careless:
            rng = self._rng("rules", lab, ranking.prompt, completions)
            violations = [[r for r in RULES if rng.random() < 0.5] for _ in completions]
        else:
            max_words = self.judge.cfg.max_words
            violations = [violated_rules(c, comp, max_words) for c, comp in zip(completions, comps, strict=True)]
        return RuleViolations(
            ranking.prompt_id, ranking.prompt, list(completions), violations, ranking.order, lab.id, ranking.ties
        )

    def demonstrate(
        self, prompt: PromptLike, candidates: Sequence[str], labeler: SimulatedLabeler | str | None = None
    ) -> Demonstration:
        """A demonstration chosen from candidate answers (e.g. N model samples).

        Without a labeler the candidate with the highest gold utility is taken (labeler id
        ``"gold"``); with one, that labeler's noisy best pick.
        """
        pid, text, category = _fields(prompt)
        if not candidates:
            raise AlignloopError("demonstrate needs at least one candidate completion", "sample some from a policy")
        if labeler is None:
            util = self.judge.score_batch([text] * len(candidates), list(candidates))
            return Demonstration(pid, text, candidates[int(np.argmax(util))], "gold", category)
        lab = self._who(labeler, text, candidates)
        if len(candidates) == 1:
            return Demonstration(pid, text, candidates[0], lab.id, category)
        comps, _, n = self._seen(text, candidates)
        best = lab.best_pick(lab.utilities(comps), n, self._rng("demo", lab, text, candidates))
        return Demonstration(pid, text, candidates[best], lab.id, category)

    def write_demonstration(self, prompt: PromptLike) -> Demonstration:
        """Compose a good answer offline from the prompt's key words (when no model samples exist yet).

        Templates are positive, on-topic, about 30 words and free of repetition, so they score
        high gold utility; the template is chosen by the prompt's hash, so the result is fixed.
        """
        pid, text, category = _fields(prompt)
        words = [surface for _, surface in keywords(text, self.judge.cfg.max_keywords)] or ["this topic"]
        rest = words[1:] or ["its main ideas", "practical examples"]
        others = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]
        template = _TEMPLATES[int(stable_id("template", text), 16) % len(_TEMPLATES)]
        answer = template.format(a=words[0], A=words[0][:1].upper() + words[0][1:], others=others)
        return Demonstration(pid, text, answer, "template", category)

    # -- screening ---------------------------------------------------------------------------------
    def agreement_with_gold(self, labeler: SimulatedLabeler | str | None, rankings: Sequence[Ranking]) -> float:
        """Share of a labeler's untied ranked pairs that the gold utility orders the same way.

        ``rankings`` may hold many labelers' work; only ``labeler``'s are used (all when None).
        Pairs whose completions have equal gold utility are skipped.
        """
        lab_id = labeler.id if isinstance(labeler, SimulatedLabeler) else labeler
        agree = total = 0
        for r in rankings:
            if lab_id is not None and r.labeler_id != lab_id:
                continue
            util = self.judge.score_batch([r.prompt] * r.k, r.completions)
            for w, lo in r.pairs():
                if util[w] != util[lo]:
                    total += 1
                    agree += util[w] > util[lo]
        if total == 0:
            raise AlignloopError(
                f"no ranked pairs with distinct gold utility for labeler {lab_id!r}",
                "pass rankings this labeler made, of completions that differ",
            )
        return agree / total

    def screening_items(self, n: int = 6) -> list[tuple[Prompt, list[str]]]:
        """The researchers' screening sample: for ``n`` built-in prompts a written demonstration and three
        clearly worse answers (hostile, empty, evasive), whose gold order any attentive labeler sees."""
        from alignloop.data.builtin import builtin_prompts

        items = []
        for p in builtin_prompts()[:n]:
            topic = p.text.split()[-1].strip(".?!")
            comps = [
                self.write_demonstration(p).completion,
                f"I hate questions like this about {topic}. It is stupid and boring, go away.",
                "ok.",
                "Well, there are many things one could say, and some people say things, while other people say "
                "other things, and that is how it is, more or less, in general.",
            ]
            items.append((p, comps))
        return items

    def qualified(self, threshold: float, n_items: int = 6) -> list[SimulatedLabeler]:
        """The labelers whose agreement with gold on :meth:`screening_items` reaches ``threshold``
        (the paper's screening: only they go on to real work)."""
        agreement = self.screen(self.screening_items(n_items))
        return [lab for lab in self.labelers if agreement[lab.id] >= threshold]

    def screen(self, items: Sequence[Item], labelers: Sequence[SimulatedLabeler] | None = None) -> dict[str, float]:
        """Have every labeler rank the screening ``items``; return each one's agreement with gold.

        Compare with ``FeedbackConfig.screening_threshold``: careless labelers sit near 0.5.
        """
        self.prefetch(items)
        out = {}
        for lab in labelers if labelers is not None else self.labelers:
            out[lab.id] = self.agreement_with_gold(lab, [self.rank(p, c, lab) for p, c in items])
        return out
