"""The one jsonl reader: per-line UTF-8, a BOM, a directory for a file, and json's own wording."""

import json

import pytest

from taalm_dist.data.jsonl_file import jsonl_lines, parse_json_object, require_file
from taalm_dist.errors import DataError


def test_lines_are_decoded_one_by_one_and_a_bad_one_is_named(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": "caf\xe9"}\r\n{"a": 3}\n')
    lines = list(jsonl_lines(p))
    assert [(x.number, x.where) for x in lines] == [(1, f"{p}:1"), (3, f"{p}:3"), (4, f"{p}:4")]
    assert lines[0].row() == {"a": 1} and lines[2].row() == {"a": 3}  # a line after the bad one still reads
    with pytest.raises(DataError) as e:
        lines[1].row()
    assert f"{p}:3: the line is not UTF-8 text (byte 11 of the line is b'\\xe9')" in str(e.value)
    assert "convert the file to UTF-8" in str(e.value)


def test_a_byte_order_mark_opens_the_file_and_is_not_part_of_the_first_row(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "first"}).encode() + b"\n" + b'{"text": "second"}\n')
    assert [x.row() for x in jsonl_lines(p)] == [{"text": "first"}, {"text": "second"}]


def test_a_line_separator_inside_a_string_does_not_split_the_row(tmp_path):
    p = tmp_path / "ls.jsonl"
    p.write_text(json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [x.row() for x in jsonl_lines(p)] == [{"text": "one\u2028two"}]


def test_whole_file_problems_are_refused_at_once(tmp_path):
    (tmp_path / "utf16.jsonl").write_text('{"a": 1}\n', encoding="utf-16")
    with pytest.raises(DataError, match="is UTF-16 text"):
        jsonl_lines(tmp_path / "utf16.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"a": 1}\n\x00\x01')
    with pytest.raises(DataError, match="looks binary"):
        jsonl_lines(tmp_path / "bin.jsonl")


def test_a_directory_is_called_a_directory_with_the_file_expected(tmp_path):
    d = tmp_path / "lama"
    d.mkdir()
    (d / "variant.jsonl").write_text("{}\n")
    with pytest.raises(DataError) as e:
        require_file(d, "a jsonl file of LAMA-CKL rows")
    message = str(e.value)
    assert "is a directory, not a file: give a jsonl file of LAMA-CKL rows" in message
    assert "variant.jsonl" in message and "does not exist" not in message
    with pytest.raises(DataError, match="nope.jsonl does not exist: give a jsonl file"):
        require_file(tmp_path / "nope.jsonl", "a jsonl file")


@pytest.mark.parametrize("line, message", [
    ('{"a": "x\x01"}', "Invalid control character at column 9"),   # json's message already ends in "at"
    ('{"a": "open', "Unterminated string starting at column 7"),
    ('{"a": }', "Expecting value at column 7"),
])
def test_json_errors_read_as_one_sentence(line, message):
    with pytest.raises(DataError) as e:
        parse_json_object(line, "f.jsonl:4")
    assert str(e.value) == f"f.jsonl:4: not valid JSON ({message})"
    assert "at at" not in str(e.value)
