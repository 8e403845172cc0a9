"""`ckl build` selection logic with a model whose knowledge is known exactly."""

import json

import pytest
import torch

from taalm_dist.ckl.build import EvalSelection, build, check_disjoint
from taalm_dist.data import write_pairs
from taalm_dist.errors import DataError
from taalm_dist.models.toy_tokenizer import ANSWERS, ENTITIES, toy_tokenizer

KNOWN = set(ANSWERS[:3])


def _row(i: int, answer: str) -> dict:
    return {"uuid": f"u{i}", "evidence": f"noba the code of {ENTITIES[i]} is {answer} .",
            "task_descriptive": f"the code of {ENTITIES[i]} is {answer} .", "object": answer}


def _data_dir(tmp_path):
    d = tmp_path / "lama"
    write_pairs([_row(0, ANSWERS[0]), _row(1, ANSWERS[10]), _row(2, ANSWERS[11])], d / "variant.jsonl")
    write_pairs([_row(3, ANSWERS[1]), _row(4, ANSWERS[12]), _row(5, ANSWERS[2])], d / "invariant_descriptive.jsonl")
    write_pairs([_row(3, ANSWERS[1]), _row(6, ANSWERS[13]), _row(7, ANSWERS[14])], d / "invariant_schematic.jsonl")
    return d


def _knows(tok):
    known_ids = {tok.convert_tokens_to_ids(a) for a in KNOWN}

    def logits_fn(batch):
        ids = batch["input_ids"]
        logits = torch.zeros(*ids.shape, len(tok))
        logits[..., 0] = 1.0  # predicts [PAD] unless it knows the next token
        for b in range(ids.shape[0]):
            for i in range(1, ids.shape[1]):
                if int(ids[b, i]) in known_ids:
                    logits[b, i - 1, int(ids[b, i])] = 5.0
        return logits

    return logits_fn


def _read(out, name):
    return [json.loads(x)["uuid"] for x in (out / name).read_text().splitlines()]


def test_build_selects_unknown_variant_known_invariant_and_disjoint_meta_pairs(tmp_path):
    tok = toy_tokenizer()
    summary = build(_knows(tok), tok, _data_dir(tmp_path), tmp_path / "out", progress=False,
                    meta_source="invariant_schematic")
    read = lambda name: _read(tmp_path / "out", name)
    assert read("to_learn.jsonl") == ["u1", "u2"]
    assert read("not_to_forget.jsonl") == ["u3", "u5"]
    assert read("meta_train.jsonl") == ["u6", "u7"]  # u3 is an evaluation row
    scores = {json.loads(x)["uuid"]: json.loads(x)["accuracy"] for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()}
    assert scores["u0"] == 1.0 and scores["u1"] == 0.0
    assert summary["to_learn"] == 2 and summary["not_to_forget"] == 2 and summary["meta_train"] == 2


def test_build_refuses_missing_files_and_non_empty_out(tmp_path):
    tok = toy_tokenizer()
    with pytest.raises(DataError, match="missing"):
        build(_knows(tok), tok, tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        build(_knows(tok), tok, _data_dir(tmp_path), tmp_path / "busy", progress=False)


def test_build_takes_meta_pairs_from_the_directory_meta_train_file_when_present(tmp_path):
    tok = toy_tokenizer()
    d = _data_dir(tmp_path)
    write_pairs([_row(8, ANSWERS[15]), _row(1, ANSWERS[10])], d / "meta_train.jsonl")
    summary = build(_knows(tok), tok, d, tmp_path / "out", progress=False)
    read = [json.loads(x)["uuid"] for x in (tmp_path / "out" / "meta_train.jsonl").read_text().splitlines()]
    assert read == ["u8"]  # u1 is a To-Learn row; invariant_schematic is not used
    assert summary["loaded"]["meta_train"] == "meta_train: 2 rows, 0 skipped"


def _lama_row(i: int, answer: str, subject: str, relation: str = "P1") -> dict:
    return {**_row(i, answer), "subject": subject, "relation_code": relation}


def test_in_distribution_meta_pairs_are_the_unknown_facts_left_and_never_overlap_evaluation(tmp_path):
    tok = toy_tokenizer()
    d = tmp_path / "lama"
    # variant: u0 known; u1..u6 unknown. u5 repeats u1's (subject, relation) under another uuid.
    write_pairs([_lama_row(0, ANSWERS[0], "s0"), *[_lama_row(i, ANSWERS[9 + i], f"s{i}") for i in range(1, 5)],
                 _lama_row(5, ANSWERS[15], "S1"), _lama_row(6, ANSWERS[16], "s6")], d / "variant.jsonl")
    # invariant: u10, u12 known; u11, u13 unknown; u13 repeats an evaluation NF fact under another uuid
    write_pairs([_lama_row(10, ANSWERS[1], "t0"), _lama_row(11, ANSWERS[17], "t1"), _lama_row(12, ANSWERS[2], "t2"),
                 _lama_row(13, ANSWERS[18], "t0")], d / "invariant_descriptive.jsonl")
    write_pairs([_lama_row(20, ANSWERS[19], "x")], d / "invariant_schematic.jsonl")
    sel = EvalSelection(to_learn=2, not_to_forget=1)
    summary = build(_knows(tok), tok, d, tmp_path / "out", progress=False, selection=sel, meta_source="in_distribution",
                    meta_val=1)
    out = tmp_path / "out"
    assert _read(out, "to_learn.jsonl") == ["u1", "u2"]
    assert _read(out, "not_to_forget.jsonl") == ["u10"]
    # u5 is u1's fact (subject case differs), u13 is u10's fact: both left out; u3, u4, u6, u11 remain
    teaching = _read(out, "meta_train.jsonl") + _read(out, "meta_val.jsonl")
    assert sorted(teaching) == ["u11", "u3", "u4", "u6"]
    assert _read(out, "meta_val.jsonl")[0] in {"u3", "u4", "u6"}  # validation prefers variant rows
    assert _read(out, "replay.jsonl") == ["u12"]
    check_disjoint(out)
    assert summary["evaluation_rule"]["to_learn"] == 2 and summary["meta_source"] == "in_distribution"
    # the same seed gives the same split; the rule is written down
    again = build(_knows(tok), tok, d, tmp_path / "again", progress=False, selection=sel, meta_source="in_distribution",
                  meta_val=1)
    assert _read(tmp_path / "again", "meta_val.jsonl") == _read(out, "meta_val.jsonl")
    assert json.loads((out / "build.json").read_text())["evaluation_rule"]["order"] == "file"
    assert again["meta_train"] == summary["meta_train"] == 3


def test_check_disjoint_names_the_shared_fact(tmp_path):
    write_pairs([_lama_row(1, "a", "s1")], tmp_path / "to_learn.jsonl")
    write_pairs([_lama_row(2, "b", "s2")], tmp_path / "not_to_forget.jsonl")
    write_pairs([_lama_row(3, "c", "S1 ")], tmp_path / "meta_train.jsonl")
    with pytest.raises(DataError, match="meta_train.jsonl shares 1 fact key.*s1"):
        check_disjoint(tmp_path)
    write_pairs([_lama_row(3, "c", "s3")], tmp_path / "meta_train.jsonl")
    write_pairs([_lama_row(3, "c", "s4")], tmp_path / "meta_val.jsonl")
    with pytest.raises(DataError, match="validation would not be held out"):
        check_disjoint(tmp_path)


def test_eval_selection_shuffle_is_seeded_and_bad_values_are_refused():
    rows = [{"uuid": str(i)} for i in range(20)]
    a = EvalSelection(to_learn=5, order="shuffle", seed=3).pick(rows, 5, salt=1)
    assert a == EvalSelection(to_learn=5, order="shuffle", seed=3).pick(rows, 5, salt=1)
    assert a != EvalSelection(to_learn=5, order="shuffle", seed=4).pick(rows, 5, salt=1)
    with pytest.raises(DataError, match="eval-to-learn=0"):
        EvalSelection(to_learn=0)
    with pytest.raises(DataError, match="--eval-order"):
        EvalSelection(order="random")


def test_build_reads_a_bom_and_skips_a_line_that_is_not_utf8(tmp_path):
    # Robustness issue: `ckl build` gave a UnicodeDecodeError traceback even with --skip-bad-rows, and refused a BOM.
    tok = toy_tokenizer()
    d = _data_dir(tmp_path)
    variant = d / "variant.jsonl"
    good = variant.read_bytes()
    variant.write_bytes(b"\xef\xbb\xbf" + good + b'{"uuid": "bad", "evidence": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        build(_knows(tok), tok, d, tmp_path / "out", progress=False, meta_source="invariant_schematic")
    assert f"{variant}:4: the line is not UTF-8 text" in str(e.value) and "--skip-bad-rows" in str(e.value)
    summary = build(_knows(tok), tok, d, tmp_path / "out", progress=False, meta_source="invariant_schematic",
                    skip_bad_rows=True)
    assert summary["loaded"]["variant"] == "variant: 4 rows, 1 skipped"
    assert _read(tmp_path / "out", "to_learn.jsonl") == ["u1", "u2"]  # u0's row (behind the BOM) was read: known


def test_build_calls_a_directory_in_place_of_a_file_a_directory(tmp_path):
    tok = toy_tokenizer()
    d = _data_dir(tmp_path)
    (d / "invariant_schematic.jsonl").unlink()
    (d / "invariant_schematic.jsonl").mkdir()
    with pytest.raises(DataError) as e:
        build(_knows(tok), tok, d, tmp_path / "out", progress=False)
    assert "invariant_schematic.jsonl: a directory where the LAMA-CKL jsonl file of that name is expected" \
        in str(e.value)
    assert "missing" not in str(e.value)
