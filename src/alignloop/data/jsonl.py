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


def json_error(source: str, err: json.JSONDecodeError, first_line: int = 1) -> DataFileError:
    """The error for invalid JSON, as "SOURCE:LINE: invalid JSON at column COLUMN: what" (1-based, in characters).

    ``err`` comes from parsing a text that starts at line ``first_line`` of the file (one JSONL line, or a
    whole document with ``first_line`` 1). Python reports an unterminated string at the string's opening
    quote; the text is really broken where it ends (a cut file, a lost quote), so that is the position
    given, with the opening quote named beside it.
    """
    msg = err.msg.removesuffix(" at").removesuffix(" starting at")
    line, col = err.lineno, err.colno
    if err.msg.startswith("Unterminated string"):
        body = err.doc.rstrip("\r\n")
        line = body.count("\n") + 1
        col = len(body) - (body.rfind("\n") + 1) + 1
        msg = f"the text ends inside a string opened at line {first_line + err.lineno - 1}, column {err.colno}"
        if line == err.lineno:
            msg = f"the line ends inside a string opened at column {err.colno}"
    return DataFileError(f"{source}:{first_line + line - 1}: invalid JSON at column {col}: {msg[:1].lower()}{msg[1:]}")


def read_json_document(path: str | os.PathLike[str], missing_hint: str = "check the path") -> Any:
    """A whole JSON file; invalid JSON names file, line and column (:func:`json_error`)."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", missing_hint)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: not UTF-8 text (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise json_error(str(p), err) from None


def iter_json_lines(path: str | os.PathLike[str], missing_hint: str = "check the path") -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSONL file, ``where`` = "FILE:LINE" for the
    caller's own field errors; a missing file or invalid JSON is an error naming file, line and column.

    Lines end at "\n" only (and a "\r" before it): other Unicode line breaks, which JSON allows
    inside strings, do not split a record."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", missing_hint)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataFileError(f"{p}:{lineno}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise json_error(str(p), err, lineno) from None
            yield f"{p}:{lineno}", obj


def iter_documents(path: str | os.PathLike[str], missing_hint: str = "check the path") -> Iterator[str]:
    """Documents of a plain-text corpus (PPO-ptx's pretraining mix): a ``.jsonl`` file with a string
    field ``text`` per line, or a text file whose documents are separated by blank lines (stripped)."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", missing_hint)
    if p.suffix == ".jsonl":
        for where, obj in iter_json_lines(p, missing_hint):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataFileError(f"{where}: field 'text': expected an object with a string field 'text'")
            yield obj["text"]
        return
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: not UTF-8 text (byte {err.start})") from None
    for block in text.split("\n\n"):
        if block.strip():
            yield block.strip()


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
