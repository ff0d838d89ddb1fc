"""Conversions that let users take alignloop data elsewhere: Hugging Face ``datasets`` and TRL's columns.

TRL's conventions: preference data has ``prompt`` / ``chosen`` / ``rejected`` columns,
prompt-completion SFT data has ``prompt`` / ``completion``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from alignloop.data.records import Comparison, Demonstration, Ranking


def to_hf_dataset(records: Sequence[Any]):
    """A ``datasets.Dataset`` with one column per record field."""
    from datasets import Dataset

    rows = [dataclasses.asdict(r) for r in records]
    if not rows:
        return Dataset.from_dict({})
    return Dataset.from_list(rows)


def rankings_to_comparisons(rankings: Iterable[Ranking]) -> list[Comparison]:
    """Every untied pair of every ranking (K(K-1)/2 per ranking without ties)."""
    out: list[Comparison] = []
    for r in rankings:
        out.extend(r.comparisons())
    return out


def to_trl_preference(items: Iterable[Ranking | Comparison]) -> list[dict[str, str]]:
    """Rows in TRL's ``prompt/chosen/rejected`` layout; rankings are expanded to their pairs."""
    rows: list[dict[str, str]] = []
    for item in items:
        comps = item.comparisons() if isinstance(item, Ranking) else [item]
        rows.extend({"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected} for c in comps)
    return rows


def to_trl_prompt_completion(demos: Iterable[Demonstration]) -> list[dict[str, str]]:
    """Rows in TRL's ``prompt/completion`` layout."""
    return [{"prompt": d.prompt, "completion": d.completion} for d in demos]
