"""Records, JSONL I/O, the prompt pipeline (dedupe, per-user cap, user splits) and exports."""

from alignloop.data.jsonl import DataFileError, iter_jsonl, read_jsonl, write_jsonl
from alignloop.data.records import (
    CATEGORIES,
    METADATA_FLAGS,
    RECORD_TYPES,
    Comparison,
    Demonstration,
    Prompt,
    Ranking,
    Rating,
    RuleViolations,
    Thumbs,
    stable_id,
)

__all__ = [
    "CATEGORIES",
    "METADATA_FLAGS",
    "RECORD_TYPES",
    "Comparison",
    "DataFileError",
    "Demonstration",
    "Prompt",
    "Ranking",
    "Rating",
    "RuleViolations",
    "Thumbs",
    "iter_jsonl",
    "read_jsonl",
    "stable_id",
    "write_jsonl",
]
