"""`taalm bench familiarity` on a tiny φ: every measure scored against every other set, the rule's shares per set."""

import pytest
import torch

from taalm_dist.bench.familiarity import auroc, bench_familiarity
from taalm_dist.config import ModelSourceConfig, PhiConfig, TinyModelConfig
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.models import build_phi, save_phi


def test_auroc_counts_pairs_and_ties():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.25)


def test_every_measure_is_scored_on_every_set(tmp_path):
    cfg = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)))
    save_phi(build_phi(cfg), cfg, tmp_path / "phi")
    write_pairs(toy_rows(30, seed=0), tmp_path / "train.jsonl")
    write_pairs(toy_rows(8, seed=1, entity_offset=100), tmp_path / "heldout.jsonl")
    res = bench_familiarity(str(tmp_path / "phi"), str(tmp_path / "train.jsonl"), str(tmp_path / "heldout.jsonl"),
                            {"unlike": "docs:examples/unlike_docs"})
    assert res["sizes"] == {"train": 30, "heldout": 8, "unlike": 5, "heldout shuffled": 8}
    assert "features: shrunk Mahalanobis (shipped)" in res["auroc"] and "weights: top-3 share" in res["auroc"]
    for scores in res["auroc"].values():
        assert set(scores) == {"unlike", "heldout shuffled"} and all(0 <= a <= 1 for a in scores.values())
    assert res["rule"]["known"] < res["rule"]["unknown"]
    assert set(res["rule"]["sets"]) == {"heldout", "unlike", "heldout shuffled"}
    assert res["rule"]["sets"]["unlike"]["n"] == 5
