"""The results format shared by ``alignloop eval`` (writer) and ``alignloop report`` (reader).

Every evaluation writes one JSON file ``OUT/<kind>.json``::

    {"format": "alignloop-eval/1", "kind": "truthfulqa", "created": "...",
     "policies": {"sft": "runs/sft/final", "ppo": "runs/ppo/final"}, ...the kind's own fields...}

The report finds these files anywhere under a run folder by the ``format`` marker, so an eval
folder can sit inside the demo's run folder or next to it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "alignloop-eval/1"
KINDS: tuple[str, ...] = (
    "winrate",
    "metadata",
    "truthfulqa",
    "hallucination",
    "toxicity",
    "bias",
    "alignment_tax",
    "redteam",
    "overoptimization",
)


def _plain(v: Any) -> Any:
    """JSON-safe values: numpy scalars to Python, NaN/inf to null, dataclasses to dicts."""
    import dataclasses

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _plain(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_result(out_dir: str | os.PathLike[str], kind: str, data: dict[str, Any]) -> Path:
    """Write ``out_dir/<kind>.json`` atomically and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **_plain(data)}
    path = out / f"{kind}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_results(run_dir: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Every result file under ``run_dir`` grouped by kind (newest first within a kind).

    A result file names its format in its first bytes (:func:`write_result` writes ``format`` first),
    so the many other JSON files of a run folder (model configs, tokenizers) are skipped unread."""
    found: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for path in sorted(Path(run_dir).rglob("*.json")):
        try:
            with path.open("rb") as fh:  # model folders hold big JSON files (tokenizers): peek first
                if FORMAT.encode() not in fh.read(200):
                    continue
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("kind"), str):
            continue
        doc["_path"] = str(path)
        found.setdefault(doc["kind"], []).append((path.stat().st_mtime, doc))
    return {k: [d for _, d in sorted(v, key=lambda t: -t[0])] for k, v in found.items()}
