"""The feedback forms of SPEC section 3: what each task asks, how an answer is checked, what record it becomes.

A label's payload is plain JSON. :func:`check_answer` turns an untrusted answer into the stored
payload or raises :class:`FormError` whose message names the field and what is wrong (the API
answers it as a 422). :func:`to_record` turns a stored label into the alignloop record the
training code reads (``Ranking``, ``Demonstration``, ``Thumbs``, ``Rating``, ``RuleViolations``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from alignloop.data.records import METADATA_FLAGS, Demonstration, Ranking, Rating, RuleViolations, Thumbs

#: Task type -> (fewest, most) completions an item of that type carries.
TASK_TYPES: dict[str, tuple[int, int]] = {
    "demonstration": (0, 0),  # write the answer yourself
    "ranking": (4, 9),  # order K = 4..9 completions (the paper's K)
    "best_pick": (2, 9),  # pick the best: the degenerate ranking
    "thumbs": (1, 1),  # up or down on one completion
    "rating": (1, 1),  # Likert 1-7 plus the yes/no metadata flags
    "rule_violations": (2, 9),  # checklist of violated rules per completion, plus a ranking
}
#: The answer fields each task type accepts (the first group is required).
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "demonstration": (("text",), ()),
    "ranking": (("order",), ("ties", "ratings")),
    "best_pick": (("best",), ("ratings",)),
    "thumbs": (("up",), ()),
    "rating": (("likert",), ("flags",)),
    "rule_violations": (("order", "violations"), ("ties", "ratings")),
}
#: Forms that show several completions side by side; their campaigns may rate each one before ranking.
RATEABLE = ("ranking", "best_pick", "rule_violations")
SKIP_REASONS = ("intent unclear", "not enough context", "offensive or harmful prompt", "other")
MAX_TEXT = 20_000


class FormError(ValueError):
    """An answer that does not fit its form; the message starts with the field name."""


def check_item(task_type: str, completions: list[str], sources: list[str] | None) -> None:
    """Raise FormError when an item does not fit its campaign's form (wrong number of completions)."""
    lo, hi = TASK_TYPES[task_type]
    k = len(completions)
    if not lo <= k <= hi:
        want = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
        raise FormError(f"completions: a {task_type} task takes {want} completions, got {k}")
    if sources is not None and len(sources) != k:
        raise FormError(f"sources: expected {k} entries (one per completion), got {len(sources)}")


def _int_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FormError(f"{name}: expected a list of completion indices (integers), got {value!r:.80}")
    return value


def _ranking(k: int, answer: dict[str, Any], allow_ties: bool) -> tuple[list[int], list[list[int]]]:
    order = _int_list("order", answer["order"])
    if len(order) != k:
        raise FormError(f"order: must be a permutation of 0..{k - 1} (one place per completion), got {len(order)}")
    ties_raw = answer.get("ties") or []
    if not isinstance(ties_raw, list) or len(ties_raw) > k:
        raise FormError(f"ties: expected a list of at most {k} groups of completion indices, got {ties_raw!r:.80}")
    ties = [_int_list("ties", g) for g in ties_raw]
    if ties and not allow_ties:
        raise FormError("ties: this campaign does not allow ties; give a strict order")
    for g in ties:
        if len(g) > k + 1:
            raise FormError(f"ties: a tie group lists at most {k} completions, got {len(g)}")
        repeated = sorted(c for c, n in Counter(g).items() if n > 1)
        if repeated:
            raise FormError(
                f"ties: the group {g!r:.80} names completion {repeated[0]} twice; "
                "a tie group lists two or more different completions, for example [0, 1]"
            )
        if len(g) >= k and set(g) == set(range(k)):
            raise FormError(
                "ties: every completion is tied with every other, which says nothing (no comparison); "
                "rank at least two of them apart, or skip the task"
            )
    try:
        Ranking("", "", [""] * k, order, ties=ties).validate()
    except ValueError as err:
        raise FormError(str(err)) from None
    return order, ties


def _rating(answer: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A Likert 1-7 score plus the metadata flags (all flags stored, unticked = false)."""
    if not isinstance(answer, dict):
        raise FormError(f"{where or 'answer'}: expected an object with likert and flags")
    extra = sorted(set(answer) - {"likert", "flags"})
    if extra:
        raise FormError(f"{where}{extra[0]:.60}: not part of a rating (expected likert, flags)")
    likert, flags = answer.get("likert"), answer.get("flags") or {}
    if not isinstance(likert, int) or isinstance(likert, bool) or not 1 <= likert <= 7:
        raise FormError(f"{where}likert: must be an integer from 1 to 7, got {likert!r:.40}")
    if not isinstance(flags, dict) or not all(isinstance(v, bool) for v in flags.values()):
        raise FormError(f"{where}flags: expected a mapping of flag name to true/false")
    unknown = sorted(set(flags) - set(METADATA_FLAGS))
    if unknown:
        raise FormError(f"{where}flags: unknown flag {unknown[0]!r:.60} (known: {', '.join(METADATA_FLAGS)})")
    return {"likert": likert, "flags": {f: bool(flags.get(f, False)) for f in METADATA_FLAGS}}


def _ratings(k: int, answer: dict[str, Any], rate: bool | None) -> dict[str, Any]:
    """The per-completion ratings of a ranking-like answer: required when ``rate`` is True,
    refused when False, optional when None (gold answers)."""
    ratings = answer.get("ratings")
    if ratings is None:
        if rate:
            raise FormError(f"ratings: this campaign rates every completion first; give {k} ratings (likert, flags)")
        return {}
    if rate is False:
        raise FormError("ratings: this campaign does not rate completions; leave ratings out")
    if not isinstance(ratings, list) or len(ratings) != k:
        raise FormError(f"ratings: expected one rating per completion ({k}), indexed by completion")
    return {"ratings": [_rating(r, f"ratings[{i}].") for i, r in enumerate(ratings)]}


def check_answer(
    task_type: str, k: int, answer: dict[str, Any], allow_ties: bool, rules: list[str], rate: bool | None = None
) -> dict[str, Any]:
    """The stored payload for ``answer`` to a ``task_type`` task with ``k`` completions.

    ``rate`` is the campaign's ``rate_completions`` for ranking-like forms (see :func:`_ratings`).
    """
    required, optional = FIELDS[task_type]
    extra = sorted(set(answer) - set(required) - set(optional))
    if extra:
        raise FormError(f"{extra[0]:.40}: not part of a {task_type} answer (expected {', '.join(required + optional)})")
    missing = [f for f in required if answer.get(f) is None]
    if missing:
        raise FormError(f"{missing[0]}: required for a {task_type} answer")
    if task_type == "demonstration":
        text = answer["text"]
        if not isinstance(text, str) or not text.strip():
            raise FormError("text: the demonstration must be a non-empty string")
        if len(text) > MAX_TEXT:
            raise FormError(f"text: at most {MAX_TEXT} characters, got {len(text)}")
        return {"text": text}
    if task_type == "ranking":
        order, ties = _ranking(k, answer, allow_ties)
        return {"order": order, "ties": ties} | _ratings(k, answer, rate)
    if task_type == "best_pick":
        best = answer["best"]
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < k:
            raise FormError(f"best: must be a completion index from 0 to {k - 1}, got {best!r:.40}")
        return {"best": best} | _ratings(k, answer, rate)
    if task_type == "thumbs":
        if not isinstance(answer["up"], bool):
            raise FormError(f"up: must be true (thumbs up) or false (thumbs down), got {answer['up']!r:.40}")
        return {"up": answer["up"]}
    if task_type == "rating":
        return _rating(answer)
    # rule_violations
    order, ties = _ranking(k, answer, allow_ties)
    violations = answer["violations"]
    if not isinstance(violations, list) or len(violations) != k:
        raise FormError(f"violations: expected one list of violated rules per completion ({k})")
    for i, v in enumerate(violations):
        if not isinstance(v, list) or not all(isinstance(r, str) for r in v):
            raise FormError(f"violations[{i}]: expected a list of rule names")
        unknown = sorted(set(v) - set(rules))
        if unknown:
            raise FormError(f"violations[{i}]: unknown rule {unknown[0]!r:.60} (this campaign's rules: {rules})")
    out = {"order": order, "ties": ties, "violations": [sorted(set(v)) for v in violations]}
    return out | _ratings(k, answer, rate)


def best_pick_ranking(best: int, k: int) -> tuple[list[int], list[list[int]]]:
    """A best-pick as a ranking: the pick first, the other K-1 tied behind it."""
    rest = [i for i in range(k) if i != best]
    return [best, *rest], ([rest] if len(rest) > 1 else [])


def ranks_of(task_type: str, payload: dict[str, Any], k: int) -> list[int] | None:
    """Per-completion ranks (0 = best, ties share a rank) for ranking-like answers, else None."""
    if task_type in ("ranking", "rule_violations"):
        order, ties = payload["order"], payload["ties"]
    elif task_type == "best_pick":
        order, ties = best_pick_ranking(payload["best"], k)
    else:
        return None
    return Ranking("", "", [""] * k, order, ties=ties).ranks()


def to_record(task_type: str, item: Any, payload: dict[str, Any], labeler: str) -> Any:
    """The alignloop record for one label (``item`` has prompt_id, prompt, category, completions, sources)."""
    comps = list(item.completions)
    meta: dict[str, Any] = {"category": item.category}
    if "ratings" in payload:  # per-completion Likert + flags given before ranking, indexed by completion
        meta["ratings"] = payload["ratings"]
    if task_type == "demonstration":
        return Demonstration(item.prompt_id, item.prompt, payload["text"], labeler, item.category)
    if task_type in ("ranking", "best_pick"):
        if task_type == "best_pick":
            order, ties = best_pick_ranking(payload["best"], len(comps))
        else:
            order, ties = payload["order"], payload["ties"]
        sources = list(item.sources) if item.sources is not None else None
        return Ranking(item.prompt_id, item.prompt, comps, list(order), labeler, [list(t) for t in ties], sources, meta)
    if task_type == "thumbs":
        return Thumbs(item.prompt_id, item.prompt, comps[0], payload["up"], labeler)
    if task_type == "rating":
        source = item.sources[0] if item.sources else None
        return Rating(item.prompt_id, item.prompt, comps[0], payload["likert"], labeler, dict(payload["flags"]), source)
    return RuleViolations(
        item.prompt_id, item.prompt, comps, payload["violations"], payload["order"], labeler, payload["ties"]
    )
