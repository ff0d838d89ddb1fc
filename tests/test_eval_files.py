"""The strict CSV/TSV reader behind the benchmark loaders: field counts, quoting, and exact positions."""

from __future__ import annotations

import csv
import io

import pytest

from alignloop.data.jsonl import DataFileError
from alignloop.evaluate.files import read_table


def _write(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def test_reads_what_rfc4180_means(tmp_path):
    text = '\ufeffa,b,c\r\n1,"x, ""y""\nz",3\r\n\r\n4,,"6"\n7,say "hi",9'
    header, rows = read_table(_write(tmp_path, text))
    assert header == ["a", "b", "c"]
    assert [r.values for r in rows] == [
        {"a": "1", "b": 'x, "y"\nz', "c": "3"},
        {"a": "4", "b": "", "c": "6"},
        {"a": "7", "b": 'say "hi"', "c": "9"},  # a quote inside an unquoted field is a character
    ]
    assert [r.line for r in rows] == [2, 5, 6]
    assert rows[0].where("c") == f"{tmp_path / 't.csv'}:3:4"  # field c starts after the quoted newline
    # Python's csv module reads the same values from the well-formed file
    expected = [row for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline="")) if any(row.values())]
    assert [r.values for r in rows] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a,b\n1,"cut here', r"t\.csv:2:12: the file ends inside a quoted field opened at line 2, column 3"),
        ("a,b,c\n1,2,3\n1,2,3,4\n", r"t\.csv:3:6: 4 fields but the header has 3: the ',' here starts an extra field"),
        ("a,b,c\n1,2\n", r"t\.csv:2:4: 2 fields but the header has 3: the row ends before field 'c'"),
        ('a,b\n"x"y,2\n', r"t\.csv:2:4: 'y' after the closing quote of a field opened at column 1"),
        ('a,b\n"multi\nline",2,3\n', r"t\.csv:3:8: 3 fields but the header has 2"),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message):
        read_table(_write(tmp_path, text))


def test_tsv_without_quoting_and_missing_columns(tmp_path):
    p = _write(tmp_path, 'id\ttext\n1\tsays "hi\n', "t.tsv")
    _, rows = read_table(p, delimiter="\t", quoting=False)
    assert rows[0].values == {"id": "1", "text": 'says "hi'}
    p = _write(tmp_path, "id\ttext\n1\ta\tb\n", "t.tsv")
    with pytest.raises(DataFileError, match=r"t\.tsv:2:4: 3 fields but the header has 2: the tab here"):
        read_table(p, delimiter="\t", quoting=False)
    with pytest.raises(DataFileError, match=r"t\.csv:1: missing column\(s\) c"):
        read_table(_write(tmp_path, "a,b\n1,2\n"), required=("a", "c"))
    with pytest.raises(DataFileError, match="no such file"):
        read_table(tmp_path / "nope.csv")
