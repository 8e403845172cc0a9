"""Fixtures of the 2-rank tests: toy data shared by a module."""

import pytest

from taalm_dist.data import toy_rows, write_pairs


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    write_pairs(toy_rows(24, seed=0, filler_words=12), d / "train.jsonl")
    write_pairs(toy_rows(4, seed=1, filler_words=12, entity_offset=100), d / "val.jsonl")
    return d
