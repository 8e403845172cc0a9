import json
from pathlib import Path

import pytest

from taalm_dist.data import load_pairs, toy_rows, write_pairs
from taalm_dist.errors import DataError

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "lama_ckl"


def _write(tmp_path, rows, raw_lines=()):
    p = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = {"uuid": "u1", "evidence": "Paris is the capital of France.", "task_descriptive": "The capital of France is Paris .", "object": "Paris"}


def test_task_is_cut_after_the_object():
    pairs, report = load_pairs(_write(Path(__import__("tempfile").mkdtemp()), [GOOD]))
    assert pairs[0].task == "The capital of France is Paris" and report.rows == 1 and report.skipped == 0


@pytest.mark.parametrize(
    "row, message",
    [
        ({k: v for k, v in GOOD.items() if k != "object"}, "missing field 'object'"),
        ({**GOOD, "evidence": "   "}, "field 'evidence' is empty"),
        ({**GOOD, "object": "Berlin"}, "object 'Berlin' is not found in task_descriptive"),
        ({**GOOD, "evidence": 3}, "field 'evidence' must be a string"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert f"{path}:2" in str(e.value) and message in str(e.value) and "--skip-bad-rows" in str(e.value)


def test_invalid_json_and_skip_bad_rows_counts(tmp_path):
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        load_pairs(_write(tmp_path, [GOOD], raw_lines=["{not json"]))
    path = _write(tmp_path, [GOOD, {**GOOD, "object": "Rome"}], raw_lines=["{not json"])
    pairs, report = load_pairs(path, skip_bad_rows=True)
    assert len(pairs) == 1 and report.skipped == 2 and len(report.reasons) == 2


def test_missing_file_and_all_rows_bad(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="no usable rows"):
        load_pairs(_write(tmp_path, [{**GOOD, "object": "Rome"}]), skip_bad_rows=True)


def test_toy_rows_are_deterministic_and_valid(tmp_path):
    assert toy_rows(5, seed=3) == toy_rows(5, seed=3) and toy_rows(5, seed=3) != toy_rows(5, seed=4)
    write_pairs(toy_rows(20), tmp_path / "t.jsonl")
    pairs, _ = load_pairs(tmp_path / "t.jsonl")
    assert all(p.task.endswith(p.object) and p.object in p.document for p in pairs)


@pytest.mark.skipif(not SHARED.is_dir(), reason="LAMA-CKL files not present beside the repository")
@pytest.mark.parametrize("name", ["variant.jsonl", "invariant_descriptive.jsonl", "invariant_schematic.jsonl"])
def test_real_lama_ckl_files_load(name):
    pairs, report = load_pairs(SHARED / name, skip_bad_rows=True)
    assert report.rows == 500 and len(pairs) + report.skipped == 500 and len(pairs) >= 450


def test_a_line_that_is_not_utf8_is_a_bad_row_named_and_skippable(tmp_path):
    # Robustness issue: a Latin-1 byte gave a UnicodeDecodeError traceback, even with skip_bad_rows.
    path = tmp_path / "pairs.jsonl"
    latin1 = b'{"evidence": "Caf\xe9", "task_descriptive": "x", "object": "x"}\n'
    path.write_bytes((json.dumps(GOOD) + "\n").encode() + latin1 + (json.dumps({**GOOD, "uuid": "u3"}) + "\n").encode())
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert f"{path}:2: the line is not UTF-8 text" in str(e.value) and "--skip-bad-rows" in str(e.value)
    pairs, report = load_pairs(path, skip_bad_rows=True)
    assert [p.uid for p in pairs] == ["u1", "u3"] and report.rows == 3 and report.skipped == 1
    assert "not UTF-8" in report.reasons[0]


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode())
    pairs, report = load_pairs(path)
    assert pairs[0].uid == "u1" and pairs[0].source == f"{path}:1" and report.skipped == 0


def test_a_directory_for_the_data_file_is_called_a_directory(tmp_path):
    (tmp_path / "variant.jsonl").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(DataError) as e:
        load_pairs(tmp_path)
    assert f"{tmp_path} is a directory, not a file: give a jsonl file of LAMA-CKL rows" in str(e.value)
    assert "variant.jsonl" in str(e.value) and "does not exist" not in str(e.value)


@pytest.mark.parametrize("field, row", [
    ("evidence", {**GOOD, "evidence": "Mufa was born in 1950.", "task_descriptive": "She is Mu", "object": "Mu"}),
    ("task_descriptive", {**GOOD, "evidence": "Mu was born in 1950.", "task_descriptive": "Mufa knew", "object": "Mu"}),
])
def test_an_object_found_only_inside_other_words_is_a_bad_row(tmp_path, field, row):
    # Robustness issue: object "Mu" in "Mufa was born ..." was accepted and labelled Mufa's tokens as the object.
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert f"{path}:2: object 'Mu' occurs in field '{field}' only inside other words (e.g. 'Mufa')" in str(e.value)
    pairs, report = load_pairs(path, skip_bad_rows=True)
    assert len(pairs) == 1 and report.skipped == 1


@pytest.mark.parametrize("text, obj, spans", [
    ("Mufa was born in Mu.", "Mu", [(17, 19)]),
    ("He lives in Paris. (Paris) Paris's Parisian", "Paris", [(12, 17), (20, 25), (27, 32)]),
    ("Mu", "Mu", [(0, 2)]),
    ("Written in C++, then C+++ or C++x", "C++", [(11, 14), (21, 24), (29, 32)]),  # ends in punctuation: no right end
    ("ASP.NET and .NET", ".NET", [(3, 7), (12, 16)]),  # starts with punctuation: no left boundary
    ("Venezuela1972 Venezuela", "Venezuela", [(14, 23)]),
    ("", "Mu", []),
])
def test_object_spans_are_whole_words(text, obj, spans):
    from taalm_dist.data.lama_ckl import object_spans

    assert object_spans(text, obj) == spans
    assert all(text[s:e] == obj for s, e in spans)


def test_the_task_is_cut_after_the_last_whole_word_object():
    from taalm_dist.data.lama_ckl import parse_row

    pair = parse_row({**GOOD, "task_descriptive": "Paris is where Parisians live", "object": "Paris"}, "f:1",
                     "task_descriptive")
    assert pair.task == "Paris"


@pytest.mark.skipif(not SHARED.is_dir(), reason="LAMA-CKL files not present beside the repository")
@pytest.mark.parametrize("name", ["variant.jsonl", "invariant_descriptive.jsonl", "invariant_schematic.jsonl"])
@pytest.mark.parametrize("field", ["task_descriptive", "task_schematic"])
def test_the_whole_word_rule_rejects_no_real_lama_ckl_row(name, field):
    # Measured when the rule came in: 0 of the 1500 rows (either task field) rejected; in 88 rows' evidence some
    # occurrences inside other words ("Niger" in "Nigeria", "window" in "windows") are no longer labelled.
    from taalm_dist.data.lama_ckl import object_spans

    pairs, report = load_pairs(SHARED / name, task_field=field)
    assert len(pairs) == 500 and report.skipped == 0
    assert all(object_spans(p.document, p.object) for p in pairs)
