"""The finiteness policy and the integrity records (taalm_dist/integrity.py), against hand-made cases."""

import json

import pytest
import torch

from taalm_dist import integrity
from taalm_dist.errors import ModelError


def test_nonfinite_names_each_bad_tensor_and_what_it_holds():
    t = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan"), float("inf")]), "c": torch.tensor([float("-inf")]),
         "ids": torch.tensor([1, 2]), "half": torch.tensor([float("nan")], dtype=torch.bfloat16)}
    assert integrity.nonfinite(t) == ["b (inf/nan in 2 of 3 values)", "c (inf in 1 of 1 values)",
                                      "half (nan in 1 of 1 values)"]
    assert integrity.nonfinite({"a": torch.ones(2, 2, dtype=torch.float64)}) == []


def test_require_finite_raises_the_given_error_with_the_fix():
    integrity.require_finite({"w": torch.ones(2)}, "phi.safetensors", "re-export", ModelError)
    with pytest.raises(ModelError, match=r"phi.safetensors: non-finite values in head.bias \(inf in 1 of 1 values\); "
                                         r"re-export"):
        integrity.require_finite({"head.bias": torch.tensor([float("inf")])}, "phi.safetensors", "re-export",
                                 ModelError)


def test_record_finds_missing_truncated_and_altered_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "sub" / "b.json").write_text('{"x": 1}')
    integrity.write_record(tmp_path)
    assert integrity.verify_record(tmp_path) == []
    assert set(json.loads((tmp_path / integrity.RECORD).read_text())["files"]) == {"a.bin", "sub/b.json"}
    data = bytearray((tmp_path / "a.bin").read_bytes())
    data[50] ^= 0x01  # one bit flipped, same size
    (tmp_path / "a.bin").write_bytes(bytes(data))
    assert integrity.verify_record(tmp_path) == ["a.bin differs from what was written (SHA-256 mismatch)"]
    (tmp_path / "a.bin").write_bytes(b"")
    assert integrity.verify_record(tmp_path) == ["a.bin has 0 bytes, 100 were written"]
    (tmp_path / "sub" / "b.json").unlink()
    assert "sub/b.json is missing" in integrity.verify_record(tmp_path)
    (tmp_path / integrity.RECORD).write_text('{"files": ')
    assert integrity.verify_record(tmp_path)[0].startswith("integrity.json is unreadable")


def test_a_directory_without_a_record_reads_as_intact(tmp_path):
    (tmp_path / "a").write_text("x")
    assert integrity.verify_record(tmp_path) == []


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    integrity.write_atomic(target, "old\n")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("interrupted")))
    with pytest.raises(OSError, match="interrupted"):
        integrity.write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
