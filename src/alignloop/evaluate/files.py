"""Reading the benchmarks' CSV and TSV files strictly: every row's field count and quoting are checked.

Python's ``csv`` module reads a file cut inside a quoted field as a shorter last field, and a row
with one unquoted comma too many as a row with its columns shifted; the benchmark loaders would
then score stub answers or read true answers as false, silently. This reader follows RFC 4180
and stops at the first malformed row with an error "FILE:LINE:COLUMN: what" (1-based, columns in
characters):

* a quoted field must close, and its closing quote must be followed by the delimiter or the end
  of the line (a quote inside a quoted field is written twice);
* every row has exactly as many fields as the header: one more means an unquoted delimiter
  inside a field (the error points at it), one fewer a cut row;
* a quote inside an unquoted field is kept as a character (Python's csv and pandas read it the
  same way, and nothing is ambiguous about it);
* blank lines are skipped; a UTF-8 byte-order mark is dropped; lines end at "\\n" or "\\r\\n".

With ``quoting=False`` (Winogender's TSV files) quotes are plain characters and only the field
count is checked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alignloop.data.jsonl import DataFileError


@dataclass
class Row:
    """One record: its values by header name, and where each field starts in the file."""

    path: str
    line: int  # the line the record starts on
    values: dict[str, str]
    starts: dict[str, tuple[int, int]]  # field name -> (line, column) of its first character

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def where(self, name: str | None = None) -> str:
        """ "FILE:LINE:COLUMN" of field ``name`` (the record's start without one)."""
        if name is None or name not in self.starts:
            return f"{self.path}:{self.line}"
        line, col = self.starts[name]
        return f"{self.path}:{line}:{col}"


Record = tuple[int, list[str], list[tuple[int, int]]]  # start line, fields, each field's (line, column)


def _records(text: str, delimiter: str, quoting: bool, where: str) -> list[Record]:
    """Split ``text`` into records of fields; each with its start line and each field's (line, column)."""
    out: list[Record] = []
    i, n = 0, len(text)
    line, col = 1, 1
    fields: list[str] = []
    starts: list[tuple[int, int]] = []
    record_line = 1
    while i <= n:
        # at the start of a field
        starts.append((line, col))
        if quoting and i < n and text[i] == '"':
            open_line, open_col = line, col
            i, col = i + 1, col + 1
            buf = []
            while True:
                if i >= n:
                    raise DataFileError(
                        f"{where}:{line}:{col}: the file ends inside a quoted field opened at line {open_line}, "
                        f"column {open_col}",
                        "the file is cut short, or a closing quote is missing",
                    )
                ch = text[i]
                if ch == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i, col = i + 2, col + 2
                        continue
                    i, col = i + 1, col + 1
                    break
                buf.append(ch)
                i += 1
                if ch == "\n":
                    line, col = line + 1, 1
                else:
                    col += 1
            value = "".join(buf)
            if i < n and text[i] not in (delimiter, "\n", "\r"):
                raise DataFileError(
                    f"{where}:{line}:{col}: {text[i]!r} after the closing quote of a field opened at column {open_col}",
                    "a quote inside a quoted field must be written twice",
                )
        else:
            j = i
            while j < n and text[j] not in (delimiter, "\n") and not (text[j] == "\r" and text[j + 1 : j + 2] == "\n"):
                j += 1
            value = text[i:j]
            col += j - i
            i = j
        fields.append(value)
        if i < n and text[i] == delimiter:
            i, col = i + 1, col + 1
            continue
        # end of the record: a line break or the end of the text
        if not (len(fields) == 1 and fields[0] == ""):  # a blank line is no record
            out.append((record_line, fields, starts))
        fields, starts = [], []
        if i >= n:
            break
        i += 2 if text.startswith("\r\n", i) else 1
        line, col = line + 1, 1
        record_line = line
        if i >= n:
            break
    return out


def read_table(
    path: str | os.PathLike[str],
    *,
    delimiter: str = ",",
    quoting: bool = True,
    required: Sequence[str] = (),
    missing_hint: str = "check the path",
    header_hint: str = "",
) -> tuple[list[str], list[Row]]:
    """(header, rows) of a delimited file with a header line; every row checked as the module says."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file", missing_hint)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: not UTF-8 text (byte {err.start})") from None
    records = _records(text, delimiter, quoting, str(p))
    if not records:
        raise DataFileError(f"{p}: empty file")
    _, header, _ = records[0]
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFileError(
            f"{p}:1: missing column(s) {', '.join(missing)}",
            header_hint or f"the header must have {', '.join(required)}",
        )
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    rows = []
    for line, fields, starts in records[1:]:
        if len(fields) > len(header):
            at_line, at_col = starts[len(header)]
            raise DataFileError(
                f"{p}:{at_line}:{at_col - 1}: {len(fields)} fields but the header has {len(header)}: "
                f"the {sep} here starts an extra field",
                f"a field that contains {sep} must be quoted" if quoting else "remove the extra separator",
            )
        if len(fields) < len(header):
            end_line, end_col = starts[-1]
            last = fields[-1]
            end_line += last.count("\n")
            end_col = (end_col if "\n" not in last else 1) + len(last.rsplit("\n", 1)[-1])
            raise DataFileError(
                f"{p}:{end_line}:{end_col}: {len(fields)} fields but the header has {len(header)}: "
                f"the row ends before field '{header[len(fields)]}'",
                "the row is cut short, or separators are missing",
            )
        rows.append(Row(str(p), line, dict(zip(header, fields, strict=True)), dict(zip(header, starts, strict=True))))
    return header, rows
