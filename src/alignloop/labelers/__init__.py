"""Simulated labelers (SPEC section 9): a hidden gold utility and a noisy, biased panel that perceives it.

- :class:`GoldJudge` scores (prompt, completion) with the gold utility; evaluation uses it as
  the "gold judge" (gold win rates, over-optimisation of the proxy reward model).
- :class:`SimulatedPanel` turns (prompt, completions) into feedback records (rankings,
  best-picks, thumbs, Likert ratings with metadata, rule checklists, demonstrations) through
  :class:`SimulatedLabeler` members with Bradley-Terry noise, biases and careless answers.
"""

from alignloop.labelers.gold import COMPONENTS, GoldConfig, GoldJudge, length_score
from alignloop.labelers.labeler import SimulatedLabeler, expected_agreement
from alignloop.labelers.panel import Item, SimulatedPanel
from alignloop.labelers.rules import RULES, metadata_flags, violated_rules

__all__ = [
    "COMPONENTS",
    "RULES",
    "GoldConfig",
    "GoldJudge",
    "Item",
    "SimulatedLabeler",
    "SimulatedPanel",
    "expected_agreement",
    "length_score",
    "metadata_flags",
    "violated_rules",
]
