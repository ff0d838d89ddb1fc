"""The one interface every judge of completions implements: a reward model, the gold judge, a toy.

SFT evaluation (choosing the kept checkpoint by RM score), best-of-N and evaluation take any
:class:`Scorer`, so a local reward model, a remote scoring service, the simulated panel's hidden
gold utility and a test's "count the letter e" are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """Scores (prompt, completion) pairs; higher is better. ``prompts`` are the raw instructions
    (not chat-formatted) and ``completions`` the decoded responses, truncated before EOS."""

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]: ...


class FunctionScorer:
    """A :class:`Scorer` from a plain function of (prompt, completion), for tests and quick experiments."""

    def __init__(self, fn: Callable[[str, str], float]) -> None:
        self.fn = fn

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [float(self.fn(p, c)) for p, c in zip(prompts, completions, strict=True)]


def score_all(scorer: Scorer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> list[float]:
    """Score in chunks of ``batch_size`` (a remote or model-based scorer bounds its memory per call)
    and check the scorer returned one finite number per completion."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        chunk = scorer.score_batch(list(prompts[i : i + batch_size]), list(completions[i : i + batch_size]))
        if len(chunk) != len(prompts[i : i + batch_size]):
            raise ValueError(
                f"{type(scorer).__name__}.score_batch returned {len(chunk)} scores for "
                f"{len(prompts[i : i + batch_size])} completions"
            )
        out.extend(float(s) for s in chunk)
    return out


class EnsembleScorer:
    """The mean of several reward models' scores, less ``spread`` times their standard deviation.

    Members trained on the same comparisons from different seeds err in different places; a
    policy optimised against their mean finds fewer of any one member's blind spots, and a
    positive ``spread`` makes the reward conservative where the members disagree (Coste et
    al. 2023, "Reward model ensembles help mitigate overoptimization"). On the demo's task three
    MiniLM RMs from the same rankings did not beat one (docs/NOTES.md, session 8): members trained on
    the same data share their blind spots. Used by ``bench/demo_ppo.py rm=A+B+C``."""

    def __init__(self, members: Sequence[Scorer], spread: float = 0.0) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.spread = spread

    @property
    def model(self):
        """The first member's model: PPO builds its value model from a reward model's trunk."""
        return getattr(self.members[0], "model", None)

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        import numpy as np

        scores = np.array([m.score_batch(prompts, completions) for m in self.members], dtype=float)
        return [float(v) for v in scores.mean(0) - self.spread * scores.std(0)]


JUDGES = ("gold",)


def scorer_from_options(rm: str | None = None, judge: str | None = None, device: str | None = None) -> Scorer | None:
    """The scorer a command line asks for: ``--rm PATH_OR_URL`` (a reward model folder or an
    ``alignloop rm serve`` URL) or ``--judge gold`` (the simulated panel's hidden gold utility)."""
    from alignloop.errors import AlignloopError

    if rm and judge:
        raise AlignloopError("give either --rm or --judge, not both", "one scorer chooses the samples")
    if judge is not None:
        if judge not in JUDGES:
            raise AlignloopError(f"unknown judge {judge!r}", f"use one of: {', '.join(JUDGES)}")
        from alignloop.labelers import GoldJudge

        return GoldJudge()
    if rm is None:
        return None
    try:
        from alignloop.models.reward import load_scorer
    except ImportError as err:
        raise AlignloopError(f"reward models are not available in this install ({err})", "use --judge gold") from None
    return load_scorer(rm, device=device)
