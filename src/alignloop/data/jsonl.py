"""JSONL reading and writing for records, with errors that name file, line and field."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alignloop.errors import AlignloopError
from alignloop.schema import SchemaError, from_dict

T = TypeVar("T")


class DataFileError(AlignloopError):
    """A data file is missing or has a malformed line; the message names file, line and field."""


def iter_json_lines(path: str | os.PathLike[str], missing_hint: str = "check the path") -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSONL file, ``where`` = "FILE:LINE" for the
    caller's own field errors; a missing file or invalid JSON is an error naming file and line."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", missing_hint)
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{p}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            yield f"{p}:{lineno}", obj


def iter_jsonl(path: str | os.PathLike[str], record_type: type[T]) -> Iterator[T]:
    """Yield ``record_type`` instances from a JSONL file, one per non-blank line."""
    for where, obj in iter_json_lines(path):
        try:
            yield from_dict(record_type, obj)
        except SchemaError as err:
            raise DataFileError(f"{where}: field '{err.field}': {err.message.split(': ', 1)[-1]}") from None


def read_jsonl(path: str | os.PathLike[str], record_type: type[T]) -> list[T]:
    """All records of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, record_type))


def _plain(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write records (dataclasses or dicts) atomically; return how many were written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(_plain(r), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n
