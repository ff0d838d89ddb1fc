"""Statistics shared by the feedback service and the evaluation: one implementation, used by both.

- :mod:`~alignloop.stats.agreement`: inter-annotator agreement (the paper's pairwise figure,
  Cohen's and Fleiss' kappa, Krippendorff's alpha) and the per-labeler table with outliers.
- :mod:`~alignloop.stats.ratings`: Elo and Bradley-Terry ratings of policies from pairwise
  judgments, with bootstrap intervals (:func:`leaderboard`).
- :mod:`~alignloop.stats.winrate`: win rate against a baseline, clustered by prompt.
"""

from alignloop.stats.agreement import (
    AgreementRate,
    Alpha,
    Judgments,
    Kappa,
    LabelerAgreement,
    cohens_kappa,
    fleiss_kappa,
    fleiss_kappa_table,
    judgments,
    krippendorff_alpha,
    labeler_agreement,
    paired_values,
    pairwise_agreement,
)
from alignloop.stats.ratings import (
    Battle,
    LeaderboardRow,
    as_battles,
    battles_from_rankings,
    bootstrap_ratings,
    bradley_terry,
    elo_ratings,
    elo_update,
    expected_score,
    leaderboard,
)
from alignloop.stats.winrate import WinRate, head_to_head, wilson_interval, win_rate

__all__ = [
    "AgreementRate",
    "Alpha",
    "Battle",
    "Judgments",
    "Kappa",
    "LabelerAgreement",
    "LeaderboardRow",
    "WinRate",
    "as_battles",
    "battles_from_rankings",
    "bootstrap_ratings",
    "bradley_terry",
    "cohens_kappa",
    "elo_ratings",
    "elo_update",
    "expected_score",
    "fleiss_kappa",
    "fleiss_kappa_table",
    "head_to_head",
    "judgments",
    "krippendorff_alpha",
    "labeler_agreement",
    "leaderboard",
    "paired_values",
    "pairwise_agreement",
    "wilson_interval",
    "win_rate",
]
