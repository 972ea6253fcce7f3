"""JSONL reading with line numbers, and atomic writes."""

from __future__ import annotations

import pytest

from star_gate.data.jsonl import DataError, atomic_write_text, read_jsonl, write_jsonl


def test_roundtrip_keeps_order_and_unicode(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"a": 1}, {"b": "héllo ✓"}, {"c": [1, 2]}]
    assert write_jsonl(path, rows) == 3
    assert [row for _, row in read_jsonl(path)] == rows
    assert "héllo ✓" in path.read_text(encoding="utf-8")  # not \u-escaped


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('\n{"a": 1}\n   \n{"b": 2}\n')
    assert list(read_jsonl(path)) == [(2, {"a": 1}), (4, {"b": 2})]


def test_empty_write_gives_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    assert write_jsonl(path, []) == 0
    assert path.read_text() == ""
    assert list(read_jsonl(path)) == []


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"b": 2}
        raise RuntimeError("crash while producing rows")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert [row for _, row in read_jsonl(path)] == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
