"""`ckl build` selection logic with a model whose knowledge is known exactly."""

import json

import pytest
import torch

from taalm_dist.ckl.build import build
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


def test_build_selects_unknown_variant_known_invariant_and_disjoint_meta_pairs(tmp_path):
    tok = toy_tokenizer()
    summary = build(_knows(tok), tok, _data_dir(tmp_path), tmp_path / "out", progress=False)
    read = lambda name: [json.loads(x)["uuid"] for x in (tmp_path / "out" / name).read_text().splitlines()]
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
