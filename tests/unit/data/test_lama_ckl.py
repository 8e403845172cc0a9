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
