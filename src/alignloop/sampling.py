"""K completions per prompt from a policy, as items ready for a ranking campaign (``alignloop sample``).

The sampler is the shared one (:func:`alignloop.models.generation.generate`, the K copies of a
prompt sharing one prefill); this module only reads prompts and writes rows that ``alignloop
feedback push`` and the admin console's "new campaign" take as they are. Every field of the input
prompt is kept: ``id`` and ``text`` become the item's ``prompt_id`` and ``prompt`` (so the row is
not mistaken for a bare prompt), and ``sources`` names the policy behind each completion, which
the service's Elo / Bradley-Terry ratings need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alignloop.config import SampleConfig
from alignloop.data.jsonl import iter_json_lines, write_jsonl
from alignloop.data.records import CATEGORIES, stable_id
from alignloop.errors import AlignloopError


def read_prompt_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Prompt rows: Prompt records (``id``, ``text``, ...) or items (``prompt_id``, ``prompt``, ...)."""
    rows = []
    for where, obj in iter_json_lines(path, "give a JSONL file of prompts (e.g. data/rm_train.jsonl)"):
        if not isinstance(obj, dict):
            raise AlignloopError(f"{where}: expected a JSON object with a 'text' (or 'prompt') field")
        row = dict(obj)
        text = row.pop("text", None) if "text" in row else row.pop("prompt", None)
        if not isinstance(text, str) or not text.strip():
            raise AlignloopError(f"{where}: field 'text': a non-empty string is required (the prompt)")
        pid = row.pop("id", None) if "id" in row else row.pop("prompt_id", None)
        if pid is not None and not isinstance(pid, str):
            raise AlignloopError(f"{where}: field 'id': a string is required, got {pid!r:.40}")
        category = row.get("category", "other")
        if category not in CATEGORIES:
            raise AlignloopError(f"{where}: field 'category': one of {', '.join(CATEGORIES)}, got {category!r:.40}")
        row.pop("completions", None)
        row.pop("sources", None)
        rows.append({"prompt_id": pid or stable_id(text), "prompt": text, **row, "category": category})
    if not rows:
        raise AlignloopError(f"{path} holds no prompts", "one JSON object per line with a 'text' field")
    return rows


def sample_items(
    policy: str | tuple[Any, Any], rows: list[dict[str, Any]], cfg: SampleConfig, source: str
) -> list[dict[str, Any]]:
    """Each prompt row with ``completions`` (K samples) and ``sources`` (``source`` K times)."""
    from alignloop.loop import sample_completions

    cfg.validate()
    texts = [r["prompt"] for r in rows]
    completions = sample_completions(policy, texts, cfg.k, cfg.generation, cfg.seed, cfg.dtype, progress="sampling")
    return [r | {"completions": c, "sources": [source] * cfg.k} for r, c in zip(rows, completions, strict=True)]


def write_items(items: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    write_jsonl(out, items)
    return Path(out)
