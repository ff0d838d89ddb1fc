"""Typed records for everything the loop collects: prompts and the five feedback forms.

The field names are the paper's words. Every record round-trips through a plain dict (JSONL,
HTTP bodies, Hugging Face ``datasets``) via :func:`alignloop.schema.from_dict`, which names the
offending field when a value is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: The InstructGPT use-case categories (paper Table 1).
CATEGORIES: tuple[str, ...] = (
    "generation",
    "open_qa",
    "brainstorming",
    "chat",
    "rewrite",
    "summarization",
    "classification",
    "closed_qa",
    "extraction",
    "other",
)

#: The yes/no metadata questions asked with every Likert rating (paper Table 3 / SPEC section 3).
METADATA_FLAGS: tuple[str, ...] = (
    "fails_to_follow_instruction",
    "hallucination",
    "inappropriate_for_customer_assistant",
    "denigrates_protected_class",
    "sexual_content",
    "violent_content",
    "harmful_advice",
    "expresses_opinion",
    "moral_judgment",
)


def stable_id(*parts: str) -> str:
    """A short deterministic id from content, so re-imports of the same data keep their ids."""
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()
    return h[:16]


@dataclass
class Prompt:
    """An instruction written by a labeler or submitted by a user of a deployed model."""

    id: str
    text: str
    user_id: str
    category: str = "other"
    source: str = "labeler"  # "labeler" | "customer" | "builtin" | anything the user likes

    def validate(self) -> None:
        if not self.text.strip():
            raise ValueError("text: must not be empty")
        if self.category not in CATEGORIES:
            raise ValueError(f"category: must be one of {', '.join(CATEGORIES)}, got {self.category!r}")


@dataclass
class Demonstration:
    """A labeler's desired answer to a prompt: one SFT training example."""

    prompt_id: str
    prompt: str
    completion: str
    labeler_id: str = ""
    category: str = "other"


@dataclass
class Comparison:
    """One pairwise preference: ``chosen`` was ranked above ``rejected`` for ``prompt``."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    labeler_id: str = ""


@dataclass
class Ranking:
    """A labeler's ordering of K completions of one prompt.

    ``order`` lists completion indices best first (a permutation of ``range(K)``). ``ties``
    lists groups of completion indices judged equal; a group must occupy consecutive places
    in ``order``. A best-pick is the degenerate ranking whose last K-1 places form one tie.
    ``sources`` optionally names the policy that produced each completion (for ratings).
    """

    prompt_id: str
    prompt: str
    completions: list[str]
    order: list[int]
    labeler_id: str = ""
    ties: list[list[int]] = field(default_factory=list)
    sources: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        k = len(self.completions)
        if k < 2:
            raise ValueError(f"completions: a ranking needs at least 2 completions, got {k}")
        if sorted(self.order) != list(range(k)):
            raise ValueError(f"order: must be a permutation of 0..{k - 1} (one place per completion), got {self.order}")
        if self.sources is not None and len(self.sources) != k:
            raise ValueError(f"sources: expected {k} entries (one per completion), got {len(self.sources)}")
        seen: set[int] = set()
        position = {c: i for i, c in enumerate(self.order)}
        for group in self.ties:
            if len(group) < 2:
                raise ValueError(f"ties: a tie group needs at least 2 completions, got {group}")
            if any(c < 0 or c >= k for c in group):
                raise ValueError(f"ties: completion index out of range 0..{k - 1} in {group}")
            if seen & set(group):
                raise ValueError(f"ties: completion appears in two tie groups: {group}")
            seen |= set(group)
            places = sorted(position[c] for c in group)
            if places != list(range(places[0], places[0] + len(group))):
                raise ValueError(f"ties: tied completions {group} must be adjacent in order")

    @property
    def k(self) -> int:
        return len(self.completions)

    def ranks(self) -> list[int]:
        """Rank of each completion (0 = best); tied completions share the best rank of their group."""
        rank = [0] * self.k
        tie_of = {c: min(g, key=self.order.index) for g in self.ties for c in g}
        for place, c in enumerate(self.order):
            rank[c] = place
        for c, head in tie_of.items():
            rank[c] = self.order.index(head)
        return rank

    @classmethod
    def from_ranks(cls, prompt_id: str, prompt: str, completions: list[str], ranks: list[int], **kw: Any) -> Ranking:
        """Build from per-completion ranks (lower is better; equal ranks are ties)."""
        order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(ranks):
            groups.setdefault(r, []).append(i)
        ties = [sorted(g, key=order.index) for g in groups.values() if len(g) > 1]
        return cls(prompt_id=prompt_id, prompt=prompt, completions=completions, order=order, ties=ties, **kw)

    def pairs(self) -> Iterator[tuple[int, int]]:
        """(winner, loser) completion indices of every untied pair: C(K,2) minus tied pairs."""
        rank = self.ranks()
        for a in range(self.k):
            for b in range(a + 1, self.k):
                if rank[a] < rank[b]:
                    yield a, b
                elif rank[b] < rank[a]:
                    yield b, a

    def comparisons(self) -> list[Comparison]:
        """Expand to pairwise comparisons: exactly K(K-1)/2 when there are no ties."""
        return [
            Comparison(self.prompt_id, self.prompt, self.completions[w], self.completions[lo], self.labeler_id)
            for w, lo in self.pairs()
        ]


@dataclass
class Thumbs:
    """Thumbs up or down on one completion: cheap to collect, one bit of information."""

    prompt_id: str
    prompt: str
    completion: str
    up: bool
    labeler_id: str = ""


@dataclass
class Rating:
    """Likert 1-7 overall quality plus the yes/no metadata flags of :data:`METADATA_FLAGS`."""

    prompt_id: str
    prompt: str
    completion: str
    likert: int
    labeler_id: str = ""
    flags: dict[str, bool] = field(default_factory=dict)
    source: str | None = None

    def validate(self) -> None:
        if not 1 <= self.likert <= 7:
            raise ValueError(f"likert: must be an integer from 1 to 7, got {self.likert}")
        unknown = sorted(set(self.flags) - set(METADATA_FLAGS))
        if unknown:
            raise ValueError(f"flags: unknown flag {unknown[0]!r} (known: {', '.join(METADATA_FLAGS)})")


@dataclass
class RuleViolations:
    """The rule-based form: which written rules each completion violates, with a ranking of them."""

    prompt_id: str
    prompt: str
    completions: list[str]
    violations: list[list[str]]
    order: list[int]
    labeler_id: str = ""
    ties: list[list[int]] = field(default_factory=list)

    def validate(self) -> None:
        if len(self.violations) != len(self.completions):
            raise ValueError(
                f"violations: expected one list per completion ({len(self.completions)}), got {len(self.violations)}"
            )
        self.ranking().validate()

    def ranking(self) -> Ranking:
        return Ranking(
            self.prompt_id,
            self.prompt,
            list(self.completions),
            list(self.order),
            self.labeler_id,
            [list(g) for g in self.ties],
        )


RECORD_TYPES: dict[str, type] = {
    "prompt": Prompt,
    "demonstration": Demonstration,
    "comparison": Comparison,
    "ranking": Ranking,
    "thumbs": Thumbs,
    "rating": Rating,
    "rule_violations": RuleViolations,
}
